"""Camera recovery against synthetic ground truth, degenerate inputs and the metrics."""

import cv2
import numpy as np
import pytest

from dv4d.pipeline.errors import GeometryError
from dv4d.pipeline.geometry import GeometryConfig, GeometryResult, _rotation_parallax, estimate_geometry
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


def _project(K: np.ndarray, R: np.ndarray, t: np.ndarray, X: np.ndarray) -> np.ndarray:
    xc = X @ R.T + t
    return xc[:, :2] / xc[:, 2:] * K[0, 0] + K[:2, 2]


def test_parallax_check_separates_dolly_towards_a_wall_from_rotation() -> None:
    """A dolly towards a plane fits a homography exactly but no rotation; a rotation seen at a wrong
    focal is still a rotation (the check picks its own focal)."""
    cfg = GeometryConfig()
    rng = np.random.default_rng(3)
    K = np.array([[144.0, 0.0, 79.5], [0.0, 144.0, 59.5], [0.0, 0.0, 1.0]])
    wall = np.column_stack([rng.uniform(-1.5, 1.5, 300), rng.uniform(-1.1, 1.1, 300), np.full(300, 3.0)])
    x0 = _project(K, np.eye(3), np.zeros(3), wall) + rng.normal(0, 0.1, (300, 2))
    x1 = _project(K, np.eye(3), np.array([0.0, 0.0, -0.3]), wall) + rng.normal(0, 0.1, (300, 2))
    H, _ = cv2.findHomography(x0, x1, cv2.RANSAC, cfg.ransac_px)
    to_h = cv2.perspectiveTransform(x0.reshape(-1, 1, 2), H).reshape(-1, 2)
    assert np.percentile(np.linalg.norm(to_h - x1, axis=1), 80) < cfg.min_parallax_px
    E, _ = cv2.findEssentialMat(x0, x1, K, cv2.RANSAC, 0.999, cfg.ransac_px)
    assert _rotation_parallax(x0, x1, E[:3], K, cfg) > 5 * cfg.min_parallax_px

    yaw = np.radians(6.0)
    R = np.array([[np.cos(yaw), 0.0, np.sin(yaw)], [0.0, 1.0, 0.0], [-np.sin(yaw), 0.0, np.cos(yaw)]])
    room = wall * rng.uniform(0.5, 2.0, (300, 1))
    x0 = _project(K, np.eye(3), np.zeros(3), room) + rng.normal(0, 0.1, (300, 2))
    x1 = _project(K, R, np.zeros(3), room) + rng.normal(0, 0.1, (300, 2))
    wrong = K * np.array([[1.3], [1.3], [1.0]])
    wrong[:2, 2] = K[:2, 2]
    E, _ = cv2.findEssentialMat(x0, x1, wrong, cv2.RANSAC, 0.999, cfg.ransac_px)
    assert _rotation_parallax(x0, x1, E[:3], wrong, cfg) < cfg.min_parallax_px


def test_forward_dolly_recovers_translation_and_focal_without_prior() -> None:
    """Forward motion: little parallax near the focus of expansion, and many tracks left untriangulated
    there, which must not bias the focal search (this seed gave a focal 7.5 % short, ATE 3.2 %)."""
    scene = render_scene(SceneConfig(num_frames=24, seed=2, camera_motion="forward", motion_scale=0.4))
    keys = select_keyframes(scene.frames, KeyframeConfig())
    result = estimate_geometry(scene.frames, keys, None, GeometryConfig())
    check_valid(result, 24)
    assert "pure_rotation" not in result.flags and "focal_unobserved" not in result.flags
    truth = relative_to_first(scene.c2w)
    # The camera moves along its own +z: the recovered path points the same way.
    direction = result.c2w[-1, :3, 3] / np.linalg.norm(result.c2w[-1, :3, 3])
    assert direction @ truth[-1, :3, 3] / np.linalg.norm(truth[-1, :3, 3]) > 0.99
    assert ate_rmse(result.c2w, truth) / trajectory_length(truth) < 0.012
    assert abs(result.K[0, 0] / scene.K[0, 0] - 1) < 0.025
    assert len(result.points) > 200
