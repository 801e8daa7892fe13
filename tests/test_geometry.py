"""Camera recovery against synthetic ground truth, degenerate inputs and the metrics."""

import numpy as np
import pytest

from dv4d.pipeline.errors import GeometryError
from dv4d.pipeline.geometry import GeometryConfig, GeometryResult, estimate_geometry
from dv4d.pipeline.keyframes import KeyframeConfig, select_keyframes
from dv4d.pipeline.metrics import ate_rmse, mask_iou, rotation_angle_deg, rpe, trajectory_length, umeyama
from dv4d.pipeline.synthetic import SceneConfig, SyntheticScene, render_scene


def relative_to_first(c2w: np.ndarray) -> np.ndarray:
    return np.linalg.inv(c2w[0]) @ c2w


def check_valid(result: GeometryResult, num: int) -> None:
    assert result.c2w.shape == (num, 4, 4) and result.c2w.dtype == np.float64
    assert np.isfinite(result.c2w).all() and np.isfinite(result.K).all()
    np.testing.assert_allclose(result.c2w[0], np.eye(4), atol=1e-9)
    rot = result.c2w[:, :3, :3]
    np.testing.assert_allclose(
        rot @ rot.transpose(0, 2, 1), np.broadcast_to(np.eye(3), (num, 3, 3)), atol=1e-6
    )
    assert result.is_keyframe.shape == (num,) and result.is_keyframe[0]
    assert result.points.shape[1] == 3 and result.colors.shape == result.points.shape
    assert result.colors.dtype == np.uint8 and np.isfinite(result.points).all()


@pytest.fixture(scope="module")
def orbit() -> SyntheticScene:
    return render_scene(SceneConfig(num_frames=20, seed=1))


def test_poses_with_known_intrinsics(orbit: SyntheticScene) -> None:
    keys = select_keyframes(orbit.frames, KeyframeConfig())
    calls: list[tuple[int, int]] = []
    result = estimate_geometry(
        orbit.frames, keys, orbit.K, GeometryConfig(), lambda d, t: calls.append((d, t))
    )
    check_valid(result, 20)
    assert result.flags == []
    np.testing.assert_allclose(result.K, orbit.K)
    truth = relative_to_first(orbit.c2w)
    assert ate_rmse(result.c2w, truth) / trajectory_length(truth) < 0.005
    rot_rpe, _ = rpe(result.c2w, truth)
    assert rot_rpe < 0.1
    # Rotations in the first camera's frame need no alignment at all.
    assert rotation_angle_deg(result.c2w[:, :3, :3].transpose(0, 2, 1) @ truth[:, :3, :3]).max() < 0.75
    assert result.reproj_rmse_px < 0.5
    assert 0.7 < result.static_fraction <= 1.0
    assert len(result.points) > 500
    # Unit: median depth of the points in front of the first camera is 1.
    assert 0.5 < np.median(result.points[:, 2]) < 2.0
    assert calls and calls[-1][0] == calls[-1][1]


def test_focal_without_prior(orbit: SyntheticScene) -> None:
    keys = select_keyframes(orbit.frames, KeyframeConfig())
    result = estimate_geometry(orbit.frames, keys, None, GeometryConfig())
    check_valid(result, 20)
    assert abs(result.K[0, 0] / orbit.K[0, 0] - 1) < 0.02
    np.testing.assert_allclose(result.K[:2, 2], [79.5, 59.5])
    truth = relative_to_first(orbit.c2w)
    assert ate_rmse(result.c2w, truth) / trajectory_length(truth) < 0.005


def test_static_camera_is_flagged() -> None:
    scene = render_scene(SceneConfig(num_frames=8, camera_motion="static", moving_object=False))
    result = estimate_geometry(scene.frames, np.ones(8, bool), None, GeometryConfig())
    check_valid(result, 8)
    assert "static_camera" in result.flags and "focal_unobserved" in result.flags
    np.testing.assert_allclose(result.c2w, np.broadcast_to(np.eye(4), (8, 4, 4)))


def test_pure_rotation_is_flagged_with_rotations() -> None:
    scene = render_scene(SceneConfig(num_frames=12, camera_motion="rotation"))
    keys = select_keyframes(scene.frames, KeyframeConfig())
    result = estimate_geometry(scene.frames, keys, scene.K, GeometryConfig())
    check_valid(result, 12)
    assert "pure_rotation" in result.flags
    truth = relative_to_first(scene.c2w)
    assert rotation_angle_deg(truth[-1, :3, :3]) > 10
    assert rotation_angle_deg(result.c2w[:, :3, :3].transpose(0, 2, 1) @ truth[:, :3, :3]).max() < 1.0
    np.testing.assert_allclose(result.c2w[:, :3, 3], 0.0)


def test_few_frames_and_bad_input(orbit: SyntheticScene) -> None:
    one = estimate_geometry(orbit.frames[:1], np.ones(1, bool), None, GeometryConfig())
    check_valid(one, 1)
    assert "few_frames" in one.flags and "focal_unobserved" in one.flags
    three = estimate_geometry(orbit.frames[:3], np.ones(3, bool), orbit.K, GeometryConfig())
    check_valid(three, 3)
    assert "few_frames" in three.flags
    blank = np.zeros((4, 24, 32, 3), np.uint8)
    flat = estimate_geometry(blank, np.ones(4, bool), None, GeometryConfig())
    check_valid(flat, 4)
    assert "textureless" in flat.flags
    with pytest.raises(GeometryError, match="no frames"):
        estimate_geometry(orbit.frames[:0], np.ones(0, bool), None, GeometryConfig())
    with pytest.raises(GeometryError, match="is_keyframe"):
        estimate_geometry(orbit.frames[:3], np.ones(2, bool), None, GeometryConfig())


def test_umeyama_recovers_similarity() -> None:
    rng = np.random.default_rng(1)
    src = rng.normal(size=(50, 3))
    angle = 0.7
    R = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    dst = 2.5 * src @ R.T + [1.0, -2.0, 0.5]
    sim = umeyama(src, dst)
    assert abs(sim.scale - 2.5) < 1e-9
    np.testing.assert_allclose(sim.R, R, atol=1e-9)
    np.testing.assert_allclose(sim.apply(src), dst, atol=1e-9)
    with pytest.raises(ValueError):
        umeyama(src, dst[:10])


def test_mask_iou() -> None:
    a = np.zeros((2, 4, 4), bool)
    b = np.zeros((2, 4, 4), bool)
    assert mask_iou(a, b) == 1.0
    a[0, :2] = True
    b[0, :1] = True
    assert mask_iou(a, b) == 0.5
    with pytest.raises(ValueError):
        mask_iou(a, b[0])


def test_rotation_angle_small_and_large() -> None:
    for angle in (1e-6, 0.01, 30.0, 179.0):
        c, s = np.cos(np.radians(angle)), np.sin(np.radians(angle))
        R = np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])
        assert rotation_angle_deg(R) == pytest.approx(angle, rel=1e-9)
