"""Flow tracks against the exact positions of synthetic static points."""

import numpy as np
import pytest

from dv4d.pipeline.keyframes import KeyframeConfig, select_keyframes
from dv4d.pipeline.synthetic import SceneConfig, SyntheticScene, render_scene
from dv4d.pipeline.tracks import TrackConfig, Tracks, track_frames


@pytest.fixture(scope="module")
def scene() -> SyntheticScene:
    return render_scene(SceneConfig(num_frames=12, seed=2))


def track_errors(scene: SyntheticScene, tracks: Tracks) -> np.ndarray:
    """Pixel error of every observation of a static track outside its seeding frame."""
    first = np.full(len(tracks.colors), -1)
    for i in range(len(scene.frames) - 1, -1, -1):
        ids, _ = tracks.in_frame(i)
        first[ids] = i
    errors = []
    for i in range(len(scene.frames)):
        ids, xy = tracks.in_frame(i)
        for f in np.unique(first[ids]):
            if f == i:
                continue
            sel = first[ids] == f
            seed_ids, seed_xy = tracks.in_frame(int(f))
            start = seed_xy[np.searchsorted(seed_ids, ids[sel])]
            col, row = np.round(start).astype(int).T
            static = ~scene.dynamic[f, row, col]
            depth = scene.depth[f, row, col]
            rays = np.hstack([start, np.ones((len(start), 1))]) @ np.linalg.inv(scene.K).T
            world = (rays * depth[:, None]) @ scene.c2w[f, :3, :3].T + scene.c2w[f, :3, 3]
            w2c = np.linalg.inv(scene.c2w[i])
            cam = world @ w2c[:3, :3].T + w2c[:3, 3]
            uv = cam[:, :2] / cam[:, 2:] * scene.K[0, 0] + scene.K[:2, 2]
            errors.append(np.linalg.norm(uv - xy[sel], axis=1)[static])
    return np.concatenate(errors)


def test_tracks_follow_static_points(scene: SyntheticScene) -> None:
    keys = select_keyframes(scene.frames, KeyframeConfig(max_gap=4))
    ticks: list[int] = []
    one_way = track_frames(scene.frames, keys, TrackConfig(both_ways=False), lambda d, t: ticks.append(d))
    both = track_frames(scene.frames, keys, TrackConfig())
    assert ticks == list(range(1, 13))
    for tracks in (one_way, both):
        assert tracks.starts[-1] == len(tracks.track) == len(tracks.frame) == len(tracks.xy)
        assert np.all(np.diff(tracks.frame) >= 0)
        for i in range(12):
            ids, _ = tracks.in_frame(i)
            assert np.all(np.diff(ids) > 0)
    err_one, err_both = track_errors(scene, one_way), track_errors(scene, both)
    assert np.median(err_one) < 0.2 and np.median(err_both) < 0.2
    # Averaging the positions reached from both keyframes makes the tracks more accurate.
    assert np.mean(err_both) < np.mean(err_one)
