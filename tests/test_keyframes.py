"""Keyframe selection: coverage guarantees, gaps, and more keyframes for faster motion."""

import numpy as np
import pytest

from dv4d.pipeline.keyframes import KeyframeConfig, select_keyframes
from dv4d.pipeline.synthetic import SceneConfig, render_scene


def gaps(keep: np.ndarray) -> np.ndarray:
    return np.diff(np.nonzero(keep)[0])


def test_first_last_and_max_gap() -> None:
    frames = render_scene(SceneConfig(num_frames=20, seed=1, moving_object=False)).frames
    keep = select_keyframes(frames, KeyframeConfig(max_gap=5))
    assert keep.shape == (20,) and keep.dtype == bool
    assert keep[0] and keep[-1]
    assert gaps(keep).max() <= 5
    assert 3 <= keep.sum() <= 15


def test_faster_motion_gives_more_keyframes() -> None:
    slow = render_scene(SceneConfig(num_frames=20, seed=1, motion_scale=0.5, moving_object=False)).frames
    fast = render_scene(SceneConfig(num_frames=20, seed=1, motion_scale=2.0, moving_object=False)).frames
    cfg = KeyframeConfig(max_gap=20)
    assert select_keyframes(fast, cfg).sum() > select_keyframes(slow, cfg).sum() + 2


def test_static_video_only_forced_keyframes() -> None:
    frames = np.repeat(render_scene(SceneConfig(num_frames=1, seed=1)).frames, 12, axis=0)
    keep = select_keyframes(frames, KeyframeConfig(max_gap=4))
    np.testing.assert_array_equal(np.nonzero(keep)[0], [0, 4, 8, 11])


def test_min_gap_and_tiny_inputs() -> None:
    frames = render_scene(SceneConfig(num_frames=12, seed=1, motion_scale=4.0)).frames
    keep = select_keyframes(frames, KeyframeConfig(min_gap=3, max_gap=6))
    assert gaps(keep)[:-1].min() >= 3
    assert select_keyframes(frames[:1], KeyframeConfig()).tolist() == [True]
    assert select_keyframes(frames[:2], KeyframeConfig()).tolist() == [True, True]
    with pytest.raises(ValueError, match="no frames"):
        select_keyframes(frames[:0], KeyframeConfig())
    with pytest.raises(ValueError, match="min_gap"):
        KeyframeConfig(min_gap=5, max_gap=2)
