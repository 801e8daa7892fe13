"""Motion segmentation against an analytic scene: a tilted textured plane seen by a moving pinhole camera
and a square patch of the plane that moves on its own; true flow and true dynamic mask by projection."""

from dataclasses import replace

import cv2
import numpy as np
import pytest

from dv4d.pipeline.motion import (
    MotionConfig,
    View,
    _apply,
    _clean,
    _partners,
    _PoseFit,
    _refine,
    ego_flow,
    motion_mask,
    motion_mask_views,
    motion_score,
    partner_gap,
    segment_motion,
)
from dv4d.pipeline.synthetic import SceneConfig, SyntheticScene, render_scene

H, W = 120, 160
K = np.array([[150.0, 0.0, (W - 1) / 2], [0.0, 150.0, (H - 1) / 2], [0.0, 0.0, 1.0]])
NORMAL = np.array([0.0, -0.3, -1.0]) / np.linalg.norm([0.0, -0.3, -1.0])
OFFSET = 4.0
"""World plane ``NORMAL . X + OFFSET = 0`` (about 4 m in front of the first camera, tilted)."""
PATCH = (slice(40, 80), slice(50, 100))
"""Pixels of frame i whose 3D points belong to the independently moving patch."""


def rotation(axis: list[float], degrees: float) -> np.ndarray:
    vec = np.asarray(axis, dtype=np.float64)
    vec = vec / np.linalg.norm(vec) * np.radians(degrees)
    rot, _ = cv2.Rodrigues(vec)
    return np.asarray(rot)


def pose(rot: np.ndarray, centre: list[float]) -> np.ndarray:
    c2w = np.eye(4)
    c2w[:3, :3] = rot
    c2w[:3, 3] = centre
    return c2w


def plane_points(c2w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """World points (H,W,3) where each pixel's ray meets the plane, and their z-depth (H,W) in camera."""
    ys, xs = np.mgrid[0:H, 0:W].astype(np.float64)
    rays_cam = np.stack([(xs - K[0, 2]) / K[0, 0], (ys - K[1, 2]) / K[1, 1], np.ones_like(xs)], axis=-1)
    rays = rays_cam @ c2w[:3, :3].T
    origin = c2w[:3, 3]
    s = -(NORMAL @ origin + OFFSET) / (rays @ NORMAL)
    return origin + rays * s[..., None], s


def project(points: np.ndarray, c2w: np.ndarray) -> np.ndarray:
    """OpenCV's own projection (independent of the code under test)."""
    w2c = np.linalg.inv(c2w)
    rvec, _ = cv2.Rodrigues(w2c[:3, :3])
    uv, _ = cv2.projectPoints(points.reshape(-1, 1, 3), rvec, w2c[:3, 3], K, None)
    return uv.reshape(*points.shape[:-1], 2)


def scene(c2w_i: np.ndarray, c2w_j: np.ndarray, patch_motion: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """True flow i -> j (H,W,2) and depth of frame i, with the patch's points displaced by
    ``patch_motion`` (world, metres) between the frames."""
    points, depth = plane_points(c2w_i)
    moved = points.copy()
    moved[PATCH] += patch_motion
    ys, xs = np.mgrid[0:H, 0:W].astype(np.float64)
    flow = project(moved, c2w_j) - np.stack([xs, ys], axis=-1)
    return flow.astype(np.float32), depth.astype(np.float32)


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max((a | b).sum(), 1))


C2W_I = pose(np.eye(3), [0.0, 0.0, 0.0])
C2W_J = pose(rotation([0.2, 1.0, 0.1], 3.0), [0.25, -0.05, 0.1])
TRUTH = np.zeros((H, W), dtype=bool)
TRUTH[PATCH] = True


def test_ego_flow_matches_explicit_projection() -> None:
    points, depth = plane_points(C2W_I)
    expected = project(points, C2W_J) - np.stack(np.meshgrid(np.arange(W), np.arange(H)), axis=-1)
    flow = ego_flow(depth, K, C2W_I, C2W_J)
    assert flow.shape == (H, W, 2) and flow.dtype == np.float32
    np.testing.assert_allclose(flow, expected, atol=1e-3)
    assert np.abs(flow).max() > 5  # the motion is not trivially small


def test_ego_flow_nan_where_depth_invalid_and_zero_for_identity() -> None:
    _, depth = plane_points(C2W_I)
    depth[10:20, 10:20] = 0.0
    flow = ego_flow(depth, K, C2W_I, C2W_J)
    assert np.isnan(flow[10:20, 10:20]).all()
    assert np.isfinite(flow[30:, 30:]).all()
    np.testing.assert_allclose(ego_flow(depth, K, C2W_J, C2W_J)[30:], 0.0, atol=1e-4)


@pytest.mark.parametrize("with_depth", [True, False])
def test_moving_patch_is_found(with_depth: bool) -> None:
    # Moving up and towards the camera: off the epipolar lines, so both residuals see it.
    flow, depth = scene(C2W_I, C2W_J, np.array([0.0, -0.15, -0.3]))
    mask = motion_mask(flow, K, C2W_I, C2W_J, depth if with_depth else None, MotionConfig())
    assert mask.shape == (H, W) and mask.dtype == bool
    assert iou(mask, TRUTH) >= 0.8


def test_static_scene_with_pose_noise_has_almost_no_dynamic_pixels() -> None:
    flow, depth = scene(C2W_I, C2W_J, np.zeros(3))
    rng = np.random.default_rng(0)
    flow += rng.normal(scale=0.3, size=flow.shape).astype(np.float32)  # flow noise (pixels)
    # About 6 px of pose-induced error at the worst pixel.
    noisy_j = C2W_J @ pose(rotation(rng.normal(size=3).tolist(), 2.0), (0.05 * rng.normal(size=3)).tolist())
    for d in (depth, None):
        assert motion_mask(flow, K, C2W_I, noisy_j, d, MotionConfig()).mean() < 0.005
    # The test can fail: without the pose re-fit the same noise floods the frame.
    assert motion_mask(flow, K, C2W_I, noisy_j, depth, MotionConfig(refine_pose=False)).mean() > 0.3


def test_moving_patch_found_despite_pose_noise() -> None:
    flow, depth = scene(C2W_I, C2W_J, np.array([0.0, -0.15, -0.3]))
    noisy_j = C2W_J @ pose(rotation([1.0, -0.5, 0.3], 0.3), [0.01, -0.01, 0.005])
    assert iou(motion_mask(flow, K, C2W_I, noisy_j, depth, MotionConfig()), TRUTH) >= 0.8


def test_pure_rotation_without_depth_uses_homography() -> None:
    c2w_j = pose(rotation([0.0, 1.0, 0.0], 4.0), [0.0, 0.0, 0.0])
    flow, _ = scene(C2W_I, c2w_j, np.array([0.1, 0.0, 0.0]))
    assert iou(motion_mask(flow, K, C2W_I, c2w_j, None, MotionConfig()), TRUTH) >= 0.8


def test_min_area_and_invalid_flow() -> None:
    flow, depth = scene(C2W_I, C2W_J, np.zeros(3))
    flow[5:10, 5:10] += 20.0  # a 25-pixel blob moving: below min_area
    flow[100:, :] = np.nan  # unknown flow is never dynamic
    mask = motion_mask(flow, K, C2W_I, C2W_J, depth, MotionConfig(min_area=64))
    assert not mask.any()
    mask = motion_mask(flow, K, C2W_I, C2W_J, depth, MotionConfig(min_area=10, open_radius=0))
    assert mask[5:10, 5:10].all() and mask.sum() == 25


def test_bad_inputs() -> None:
    flow, depth = scene(C2W_I, C2W_J, np.zeros(3))
    with pytest.raises(ValueError, match="flow_ij"):
        motion_mask(flow[..., 0], K, C2W_I, C2W_J, depth, MotionConfig())
    with pytest.raises(ValueError, match="depth_i"):
        motion_mask(flow, K, C2W_I, C2W_J, depth[:-1], MotionConfig())
    with pytest.raises(ValueError, match="c2w_j"):
        motion_mask(flow, K, C2W_I, C2W_J[:3], depth, MotionConfig())
    with pytest.raises(ValueError, match="K"):
        ego_flow(depth, np.zeros((3, 3)), C2W_I, C2W_J)
    with pytest.raises(ValueError, match="threshold_px"):
        MotionConfig(threshold_px=0.0)


def render(c2w: np.ndarray, box_offset: tuple[float, float]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Ray-cast a textured tilted wall (z = 5 + 0.3 y) and a textured 0.8 m square at z = 3 shifted by
    ``box_offset`` (x, y metres): gray image (H,W) uint8, z-depth (H,W), square pixels (H,W) bool."""
    texture = cv2.GaussianBlur(
        np.random.default_rng(1).uniform(0, 255, (512, 512)).astype(np.float32), (0, 0), 1.5
    )
    texture = cv2.normalize(texture, None, 0, 255, cv2.NORM_MINMAX)

    def sample(u: np.ndarray, v: np.ndarray) -> np.ndarray:
        maps = [(c * 60 % 512).astype(np.float32) for c in (u, v)]
        return np.asarray(cv2.remap(texture, maps[0], maps[1], cv2.INTER_LINEAR, borderMode=cv2.BORDER_WRAP))

    ys, xs = np.mgrid[0:H, 0:W].astype(np.float64)
    rays = (
        np.stack([(xs - K[0, 2]) / K[0, 0], (ys - K[1, 2]) / K[1, 1], np.ones_like(xs)], -1) @ c2w[:3, :3].T
    )
    origin = c2w[:3, 3]
    normal = np.array([0.0, -0.3, 1.0])
    s_wall = (5.0 - normal @ origin) / (rays @ normal)
    wall = origin + rays * s_wall[..., None]
    s_box = (3.0 - origin[2]) / rays[..., 2]
    box = origin + rays * s_box[..., None] - np.array([*box_offset, 0.0])
    inside = (np.abs(box[..., 0]) < 0.4) & (np.abs(box[..., 1]) < 0.4) & (s_box > 0) & (s_box < s_wall)
    image = np.where(
        inside, 0.8 * sample(box[..., 0] + 1.7, box[..., 1] + 1.1) + 30, sample(wall[..., 0], wall[..., 2])
    )
    depth = np.where(inside, s_box, s_wall)  # camera rays have z = 1: the ray parameter is the z-depth
    return image.clip(0, 255).astype(np.uint8), depth, inside


def test_rendered_video_with_dis_flow() -> None:
    """End to end on real optical flow (OpenCV DIS) of rendered images, not analytic flow."""
    c2w_j = pose(rotation([0.1, 1.0, 0.0], 1.5), [0.08, -0.02, 0.03])
    image_i, depth_i, truth = render(C2W_I, (0.0, 0.0))
    image_j, _, _ = render(c2w_j, (0.02, -0.08))
    flow = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM).calc(image_i, image_j, None)
    for depth in (depth_i, None):
        mask = motion_mask(flow, K, C2W_I, c2w_j, depth, MotionConfig())
        assert iou(mask, truth) >= 0.7
        assert (mask & ~truth).mean() < 0.02  # DIS smears the square's motion a few pixels past its edge


def test_motion_along_epipolar_lines_needs_two_views() -> None:
    """The patch moves parallel to both baselines (camera 0.4 m along +x to j, 0.2 m along -x to k, the
    patch 0.2 m along x each way): each view alone is consistent with a static point (at twice its depth
    in j, at infinity in k), but no single depth explains both."""
    c2w_j = pose(np.eye(3), [0.4, 0.0, 0.0])
    c2w_k = pose(np.eye(3), [-0.2, 0.0, 0.0])
    flow_j, _ = scene(C2W_I, c2w_j, np.array([0.2, 0.0, 0.0]))
    flow_k, _ = scene(C2W_I, c2w_k, np.array([-0.2, 0.0, 0.0]))
    cfg = MotionConfig()
    for c2w, flow in ((c2w_j, flow_j), (c2w_k, flow_k)):
        assert iou(motion_mask(flow, K, C2W_I, c2w, None, cfg), TRUTH) < 0.2
    both = motion_mask_views([View(c2w_j, flow_j), View(c2w_k, flow_k)], K, C2W_I, None, cfg)
    assert iou(both, TRUTH) >= 0.8
    # Pixels a view does not trust are judged by the other views only; trusted by none: static.
    distrust = np.zeros((H, W), bool)
    distrust[:, :80] = True
    half = motion_mask_views(
        [View(c2w_j, flow_j, ~distrust), View(c2w_k, flow_k, ~distrust)], K, C2W_I, None, cfg
    )
    assert not half[:, :80].any() and iou(half[:, 80:], TRUTH[:, 80:]) >= 0.8
    with pytest.raises(ValueError, match="at least one view"):
        motion_mask_views([], K, C2W_I, None, cfg)
    with pytest.raises(ValueError, match="valid"):
        motion_mask_views([View(c2w_j, flow_j, distrust[:-1])], K, C2W_I, None, cfg)


def test_fill_holes_and_partners() -> None:
    ring = np.zeros((40, 40), bool)
    ring[10:30, 10:30] = True
    ring[15:25, 15:25] = False  # a hole
    ring[0:12, 0:3] = True  # touches the border: no hole to fill there
    cfg = MotionConfig(open_radius=0, close_radius=0, min_area=0)
    assert _clean(ring, cfg)[10:30, 10:30].all() and _clean(ring, cfg).sum() == 400 + 36
    assert (
        _clean(ring, MotionConfig(open_radius=0, close_radius=0, min_area=0, fill_holes=False)).sum() == 336
    )
    assert _partners(5, 3, 20) == [2, 8]
    assert _partners(1, 3, 20) == [0, 4] and _partners(18, 3, 20) == [15, 19]
    assert _partners(0, 3, 20) == [3, 6] and _partners(19, 3, 20) == [16, 13]
    assert _partners(0, 3, 5) == [3] and _partners(0, 1, 1) == []


def test_partner_gap_reaches_the_target_flow() -> None:
    """Camera sliding sideways 0.02 m per frame in front of a wall 2 m away: 1.5 px of flow per frame."""
    num, depth_m = 30, 2.0
    c2w = np.stack([pose(np.eye(3), [0.02 * f, 0.0, 0.0]) for f in range(num)])
    depth = np.full((num, H, W), depth_m, np.float32)
    per_frame = K[0, 0] * 0.02 / depth_m
    cfg = MotionConfig(target_flow_fraction=0.06, max_gap=20)  # 9.6 px
    assert partner_gap(depth, K, c2w, cfg) == int(np.ceil(0.06 * W / per_frame))
    assert partner_gap(depth, K, c2w, MotionConfig(target_flow_fraction=0.06, max_gap=4)) == 4
    static = np.repeat(np.eye(4)[None], num, axis=0)
    assert partner_gap(np.zeros_like(depth), K, static, cfg) == 20
    assert partner_gap(depth[:3], K, c2w[:3], cfg) == 2


@pytest.fixture(scope="module")
def video() -> SyntheticScene:
    return render_scene(SceneConfig(width=128, height=96, num_frames=24, seed=3))


@pytest.mark.parametrize("object_depth", [False, True])
def test_segment_motion_on_rendered_video(video: SyntheticScene, object_depth: bool) -> None:
    """DIS flow on a rendered video (textured room, orbiting camera, moving box) with the true poses;
    depth as the classical depth stage gives it (none on the moving box) or as a depth model does."""
    truth = video
    depth = np.where(truth.dynamic & ~object_depth, 0.0, truth.depth).astype(np.float32)
    found = list(segment_motion(truth.frames, depth, truth.K, truth.c2w, MotionConfig()))
    assert len(found) == 24
    masks = np.stack([f.mask for f in found])
    assert masks.dtype == bool and masks.shape == truth.dynamic.shape
    assert iou(masks, truth.dynamic) >= (0.8 if object_depth else 0.65)
    assert all(f.step_flow is not None and f.step_flow.shape == (96, 128, 2) for f in found)
    with pytest.raises(ValueError, match="must agree"):
        next(segment_motion(truth.frames, depth[:-1], truth.K, truth.c2w, MotionConfig()))


def test_untextured_pixels_are_not_judged() -> None:
    """A blank wall seen by a sliding camera: DIS finds no flow where the static scene predicts some."""
    num = 6
    frames = np.full((num, H, W, 3), 128, np.uint8)
    depth = np.full((num, H, W), 2.0, np.float32)
    c2w = np.stack([pose(np.eye(3), [0.05 * f, 0.0, 0.0]) for f in range(num)])
    fixed = MotionConfig(refine_pose=False)  # a re-fit would explain the missing flow by a still camera
    blank = [f.mask for f in segment_motion(frames, depth, K, c2w, fixed)]
    assert not np.any(blank)
    judged = [f.mask for f in segment_motion(frames, depth, K, c2w, replace(fixed, min_texture=0.0))]
    assert np.mean(judged) > 0.5
    with pytest.raises(ValueError, match="min_texture"):
        MotionConfig(min_texture=-1.0)


def pose_fit(rotation_only: bool, seed: int = 0, num: int = 60) -> tuple[_PoseFit, np.ndarray, np.ndarray]:
    """Correspondences of a known relative pose (K with skew): ``num`` pixels with depth, ``num`` without,
    the observed pixels exact but for a quarter of outliers; returns the fit and the true ``(R, t)``."""
    rng = np.random.default_rng(seed)
    K_skew = np.array([[300.0, 0.8, 160.0], [0.0, 290.0, 120.0], [0.0, 0.0, 1.0]])
    K_inv = np.linalg.inv(K_skew)
    R, t = rotation([0.3, 1.0, -0.2], 4.0), np.array([0.3, -0.1, 0.15])
    if rotation_only:
        t = np.zeros(3)
    pix = rng.uniform([0, 0], [320, 240], (num, 2)).T
    rays = K_inv[:, :2] @ pix + K_inv[:, 2:]
    points = rays * rng.uniform(2.0, 6.0, num)
    seen = K_skew @ (R @ points + t[:, None])
    observed = seen[:2] / seen[2]
    along = K_skew @ (R @ (rays * rng.uniform(2.0, 6.0, num)) + t[:, None])  # static points without depth
    targets = along[:2] / along[2]
    for obs in (observed, targets):
        obs[:, : num // 4] += rng.uniform(-15, 15, (2, num // 4))
    fit = _PoseFit(
        K_skew, points, observed, rays, targets, K_inv[:, :2] @ targets + K_inv[:, 2:], rotation_only
    )
    return fit, R, t


@pytest.mark.parametrize("rotation_only", [False, True])
def test_pose_fit_jacobian_matches_finite_differences(rotation_only: bool) -> None:
    fit, R, t = pose_fit(rotation_only)
    R_off, t_off = _apply(np.array([0.02, -0.01, 0.03, 0.05, 0.02, -0.04]), R, t)
    res, jac = fit.residuals(R_off, t_off)
    assert res.shape == (fit.size,) and jac.shape == (6, fit.size)
    numeric = np.empty_like(jac)
    for k in range(6):
        step = np.zeros(6)
        step[k] = 1e-6
        numeric[k] = (
            fit.residuals(*_apply(step, R_off, t_off))[0] - fit.residuals(*_apply(-step, R_off, t_off))[0]
        ) / 2e-6
    np.testing.assert_allclose(jac, numeric, atol=1e-5 * np.abs(jac).max())
    assert np.abs(jac).max() > 10  # not trivially zero
    # A point behind camera j: the invalid residual and no gradient.
    behind = _PoseFit(fit.K, -fit.points[:, :1], fit.observed[:, :1], fit.rays[:, :0], fit.targets[:, :0],
                      fit.target_rays[:, :0], False)  # fmt: skip
    res, jac = behind.residuals(R, t)
    assert (res == 1e3).all() and not jac.any()


@pytest.mark.parametrize("rotation_only", [False, True])
def test_refine_recovers_the_pose_despite_outliers(rotation_only: bool) -> None:
    fit, R, t = pose_fit(rotation_only, seed=1)
    start = _apply(np.array([0.03, 0.02, -0.02, 0.04, -0.03, 0.02]), R, t)
    for tolerance in (0.0, 1e-4):
        R_fit, t_fit = _refine(fit, *start, iterations=15, tolerance=tolerance)
        angle = np.degrees(np.arccos(np.clip((np.trace(R_fit.T @ R) - 1) / 2, -1, 1)))
        assert angle < 0.01
        if not rotation_only:
            assert np.linalg.norm(t_fit - t) < 1e-3
    # The test can fail: without iterations the pose stays off.
    R_fit, _ = _refine(fit, *start, iterations=0, tolerance=0.0)
    assert np.degrees(np.arccos(np.clip((np.trace(R_fit.T @ R) - 1) / 2, -1, 1))) > 1.0
    with pytest.raises(ValueError, match="refine_tolerance"):
        MotionConfig(refine_tolerance=-1.0)


def test_motion_score_dtype_and_untrusted_pixels() -> None:
    flow, depth = scene(C2W_I, C2W_J, np.array([0.0, -0.15, -0.3]))
    flow[:10] = np.nan
    valid = np.ones((H, W), bool)
    valid[:, :5] = False
    score = motion_score([View(C2W_J, flow, valid)], K, C2W_I, depth, MotionConfig())
    assert score.shape == (H, W) and score.dtype == np.float64
    assert np.isnan(score[:10]).all() and np.isnan(score[:, :5]).all()
    assert np.isfinite(score[10:, 5:]).all() and (score[PATCH] > 1).mean() > 0.9
    assert (score[10:, 5:][~TRUTH[10:, 5:]] < 1).mean() > 0.99


def test_segment_motion_stops_early(video: SyntheticScene) -> None:
    """A consumer that stops after the first frame leaves no flow computation behind."""
    depth = video.depth.astype(np.float32)
    frames = segment_motion(video.frames, depth, video.K, video.c2w, MotionConfig())
    first = next(frames)
    frames.close()
    assert first.mask.shape == (96, 128)
