"""DIS flow against exact synthetic flow, and the forward-backward consistency check."""

import numpy as np
import pytest

from dv4d.pipeline.flow import dis_flow, dis_flows, forward_backward_mask, sample_flow
from dv4d.pipeline.synthetic import SceneConfig, SyntheticScene, render_scene


@pytest.fixture(scope="module")
def scene() -> SyntheticScene:
    return render_scene(SceneConfig(num_frames=20, seed=2))


def true_flow(scene: SyntheticScene, i: int, j: int) -> np.ndarray:
    """(H, W, 2) exact flow of the static scene from frame i to frame j (from depth and poses)."""
    h, w = scene.depth.shape[1:]
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float64)
    cam = np.stack([xs, ys, np.ones_like(xs)], -1) @ np.linalg.inv(scene.K).T * scene.depth[i][..., None]
    rel = np.linalg.inv(scene.c2w[j]) @ scene.c2w[i]
    proj = (cam @ rel[:3, :3].T + rel[:3, 3]) @ scene.K.T
    return proj[..., :2] / proj[..., 2:] - np.stack([xs, ys], -1)


def test_dis_flow_matches_true_flow(scene: SyntheticScene) -> None:
    flow = dis_flow(scene.frames[5], scene.frames[8])
    assert flow.shape == (120, 160, 2) and flow.dtype == np.float32
    truth = true_flow(scene, 5, 8)
    static = ~scene.dynamic[5]
    error = np.linalg.norm(flow - truth, axis=-1)[static]
    assert np.median(np.linalg.norm(truth, axis=-1)[static]) > 2.0, "the test needs real motion"
    assert np.median(error) < 0.3
    assert np.percentile(error, 80) < 0.8


@pytest.mark.parametrize("preset", ["fine", "dense"])
def test_concurrent_flows_equal_one_by_one_and_both_presets_are_accurate(
    scene: SyntheticScene, preset: str
) -> None:
    pairs = [(scene.frames[i], scene.frames[i + 3]) for i in range(0, 15, 3)]
    flows = dis_flows(pairs, preset)
    assert len(flows) == len(pairs)
    for (a, b), flow in zip(pairs, flows, strict=True):
        np.testing.assert_array_equal(flow, dis_flow(a, b, preset))
    static = ~scene.dynamic[0]
    error = np.linalg.norm(flows[0] - true_flow(scene, 0, 3), axis=-1)[static]
    assert np.median(error) < 0.3
    assert dis_flows([], preset) == []


def test_forward_backward_mask_on_real_flow(scene: SyntheticScene) -> None:
    fwd = dis_flow(scene.frames[6], scene.frames[7])
    bwd = dis_flow(scene.frames[7], scene.frames[6])
    mask = forward_backward_mask(fwd, bwd, 1.0)
    assert mask.dtype == bool and mask.shape == (120, 160)
    assert mask.mean() > 0.8
    error = np.linalg.norm(fwd - true_flow(scene, 6, 7), axis=-1)
    assert np.median(error[mask & ~scene.dynamic[6]]) < 0.2


def test_forward_backward_mask_logic() -> None:
    fwd = np.zeros((10, 12, 2), np.float32)
    fwd[..., 0] = 2.0
    consistent = forward_backward_mask(fwd, -fwd)
    # Pixels pushed out of the image (last two columns) are never consistent.
    assert consistent[:, :10].all() and not consistent[:, 10:].any()
    assert not forward_backward_mask(fwd, fwd).any()
    assert forward_backward_mask(fwd, -fwd + 0.5, max_error_px=1.0)[:, :10].all()
    assert not forward_backward_mask(fwd, -fwd + 0.5, max_error_px=0.4).any()


def test_sample_flow_is_bilinear() -> None:
    flow = np.zeros((4, 5, 2), np.float32)
    flow[..., 0] = np.arange(5)[None, :]
    flow[..., 1] = np.arange(4)[:, None] * 10
    out = sample_flow(flow, np.array([0.5, 3.25]), np.array([1.5, 2.0]))
    np.testing.assert_allclose(out, [[0.5, 15.0], [3.25, 20.0]], atol=1e-3)


def test_bad_inputs() -> None:
    img = np.zeros((8, 8, 3), np.uint8)
    with pytest.raises(ValueError, match="size"):
        dis_flow(img, np.zeros((8, 9, 3), np.uint8))
    with pytest.raises(ValueError, match="uint8"):
        dis_flow(img.astype(np.float32), img)
    with pytest.raises(ValueError, match="preset"):
        dis_flow(img, img, preset="slow")
    with pytest.raises(ValueError, match="flows"):
        forward_backward_mask(np.zeros((4, 4, 2)), np.zeros((4, 5, 2)))
