"""Geometric motion segmentation: which pixels move on their own, not because the camera moved.

No learned model. The observed optical flow from frame ``i`` to frame ``j`` is compared with the flow a
static scene would produce under the camera motion between the two frames:

- where the z-depth of frame ``i`` is known: the full reprojection residual (pixels) between the observed
  flow target and the projection of the back-projected pixel into frame ``j``;
- where it is not: the (signed square root of the) Sampson distance of the correspondence to the epipolar
  geometry of the relative pose, in pixels; for a relative pose without translation (pure rotation, where
  the static flow does not depend on depth) the residual against the rotation homography.

Small pose errors would otherwise flag whole frames, so the relative pose is first re-fitted to the
observed flow by a robust (Cauchy-weighted) Levenberg-Marquardt on a pixel grid; moving objects, being a
minority of pixels, are down-weighted by the robust weights. The thresholded residual is cleaned by a
morphological opening and closing and by removing connected components below a minimum area.
"""

from collections.abc import Callable
from dataclasses import dataclass

import cv2
import numpy as np

Residuals = Callable[[np.ndarray, np.ndarray], np.ndarray]
"""Residual vector of the sampled correspondences for a relative pose ``(R, t)`` (camera i -> camera j)."""


@dataclass(frozen=True)
class MotionConfig:
    """Thresholds and clean-up of ``motion_mask``."""

    threshold_px: float = 1.0
    """Residual in pixels above which a pixel is dynamic (before the relative term below is added)."""
    relative_threshold: float = 0.1
    """Added to ``threshold_px``: this fraction of the static (ego-motion) flow magnitude at the pixel, so
    depth errors, which grow with parallax, are not taken for motion. Unused where depth is unknown."""
    refine_pose: bool = True
    """Re-fit the relative pose to the observed flow before testing (absorbs small pose noise)."""
    refine_iterations: int = 8
    """Levenberg-Marquardt iterations of the pose re-fit."""
    sample_stride: int = 4
    """Pixel stride of the grid of correspondences used by the pose re-fit."""
    pure_rotation_baseline: float = 1e-9
    """Relative translation norm (scene units) below which the pose counts as a pure rotation when depth is
    unknown (the homography residual is used instead of the undefined epipolar distance)."""
    open_radius: int = 1
    """Radius in pixels of the morphological opening that removes speckles (0 = none)."""
    close_radius: int = 2
    """Radius in pixels of the morphological closing that fills pinholes (0 = none)."""
    min_area: int = 64
    """Connected components (8-connected) of fewer pixels are dropped."""

    def __post_init__(self) -> None:
        if not self.threshold_px > 0:
            raise ValueError(f"threshold_px must be positive, got {self.threshold_px}")
        if self.relative_threshold < 0:
            raise ValueError(f"relative_threshold must be >= 0, got {self.relative_threshold}")
        if self.sample_stride < 1 or self.refine_iterations < 0:
            raise ValueError("sample_stride must be >= 1 and refine_iterations >= 0")
        if self.open_radius < 0 or self.close_radius < 0 or self.min_area < 0:
            raise ValueError("open_radius, close_radius and min_area must be >= 0")


def _check_pose(name: str, c2w: np.ndarray) -> None:
    if c2w.shape != (4, 4) or not np.isfinite(c2w).all():
        raise ValueError(f"{name} must be a finite 4x4 camera-to-world matrix, got shape {c2w.shape}")


def _check_K(K: np.ndarray) -> None:
    if (
        K.shape != (3, 3)
        or not np.isfinite(K).all()
        or not (K[0, 0] > 0 and K[1, 1] > 0)
        or not np.array_equal(K[2], [0.0, 0.0, 1.0])
    ):
        raise ValueError(
            f"K must be a finite 3x3 intrinsics matrix (positive focal, last row 0 0 1), got {K!r}"
        )


def relative_pose(c2w_i: np.ndarray, c2w_j: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(R, t)`` mapping camera-i coordinates to camera-j coordinates: ``X_j = R @ X_i + t``."""
    T = np.linalg.inv(c2w_j.astype(np.float64)) @ c2w_i.astype(np.float64)
    return T[:3, :3], T[:3, 3]


def _pixels(height: int, width: int) -> np.ndarray:
    """(H,W,2) float64 pixel coordinates (x, y), pixel centres at integers."""
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float64)
    return np.stack([xs, ys], axis=-1)


def _rows(M: np.ndarray, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``M @ [x, y, 1]`` for arrays of coordinates, element-wise (much faster than stacking + matmul)."""
    return (
        M[0, 0] * x + M[0, 1] * y + M[0, 2],
        M[1, 0] * x + M[1, 1] * y + M[1, 2],
        M[2, 0] * x + M[2, 1] * y + M[2, 2],
    )


def _project_static(
    pix: np.ndarray, depth: np.ndarray, K: np.ndarray, R: np.ndarray, t: np.ndarray
) -> np.ndarray:
    """Where pixels ``pix`` (...,2) with z-depth ``depth`` (...) of camera i land in camera j; NaN where the
    depth is not positive and finite or the point falls behind camera j."""
    a, b, c = _rows(K @ R @ np.linalg.inv(K), pix[..., 0], pix[..., 1])
    kt = K @ t
    z = depth * c + kt[2]  # camera-j z-depth, since K's last row is (0, 0, 1)
    good = np.isfinite(depth) & (depth > 0) & (z > 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        proj = np.stack([(depth * a + kt[0]) / z, (depth * b + kt[1]) / z], axis=-1)
    proj[~good] = np.nan
    return proj


def _project_rotation(pix: np.ndarray, K: np.ndarray, R: np.ndarray) -> np.ndarray:
    """Where pixels land under the pure rotation ``R`` (the depth-independent homography K R K^-1)."""
    a, b, c = _rows(K @ R @ np.linalg.inv(K), pix[..., 0], pix[..., 1])
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.stack([a / c, b / c], axis=-1)


def _sampson(pix_i: np.ndarray, pix_j: np.ndarray, K: np.ndarray, R: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Signed square root of the Sampson distance (pixels) of correspondences to the epipolar geometry."""
    K_inv = np.linalg.inv(K)
    tx = np.array([[0.0, -t[2], t[1]], [t[2], 0.0, -t[0]], [-t[1], t[0], 0.0]])
    F = K_inv.T @ tx @ R @ K_inv
    F = F / max(float(np.linalg.norm(F)), 1e-300)
    xj, yj = pix_j[..., 0], pix_j[..., 1]
    l0, l1, l2 = _rows(F, pix_i[..., 0], pix_i[..., 1])
    m0, m1, _ = _rows(F.T, xj, yj)
    with np.errstate(divide="ignore", invalid="ignore"):
        return (xj * l0 + yj * l1 + l2) / np.sqrt(l0**2 + l1**2 + m0**2 + m1**2)


def ego_flow(depth: np.ndarray, K: np.ndarray, c2w_i: np.ndarray, c2w_j: np.ndarray) -> np.ndarray:
    """The flow (H,W,2) float32, pixels, (dx, dy) that a static scene with z-depth ``depth`` (H,W, metres or
    scene units, 0 = invalid) in frame i produces from frame i to frame j under the camera motion from
    ``c2w_i`` to ``c2w_j`` (4x4 camera-to-world). NaN where the depth is invalid or the point falls behind
    camera j."""
    _check_K(K)
    _check_pose("c2w_i", c2w_i)
    _check_pose("c2w_j", c2w_j)
    if depth.ndim != 2:
        raise ValueError(f"depth must be (H,W), got shape {depth.shape}")
    R, t = relative_pose(c2w_i, c2w_j)
    pix = _pixels(*depth.shape)
    return (_project_static(pix, depth.astype(np.float64), K, R, t) - pix).astype(np.float32)


def _rodrigues(omega: np.ndarray) -> np.ndarray:
    rot, _ = cv2.Rodrigues(omega.reshape(3, 1))
    return np.asarray(rot, dtype=np.float64)


def _apply(delta: np.ndarray, R: np.ndarray, t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Left-perturb the relative pose in camera-j coordinates by ``delta = (omega, dt)``."""
    dR = _rodrigues(delta[:3])
    return dR @ R, dR @ t + delta[3:]


def _refine(
    residuals: Residuals, R: np.ndarray, t: np.ndarray, iterations: int
) -> tuple[np.ndarray, np.ndarray]:
    """Robust Levenberg-Marquardt on the 6-DoF relative pose with Cauchy weights whose scale is the median
    absolute residual (moving pixels, a minority, end up with small weights). Numeric Jacobian."""

    def cost(r: np.ndarray, scale: float) -> float:
        return float(np.sum(np.log1p((r / scale) ** 2)))

    r = residuals(R, t)
    if r.size < 12:
        return R, t
    lam = 1e-3
    for _ in range(iterations):
        scale = max(1.4826 * float(np.median(np.abs(r))), 0.05)
        weights = 1.0 / (1.0 + (r / scale) ** 2)
        step = 1e-6 * max(1.0, float(np.linalg.norm(t)))
        J = np.empty((r.size, 6))
        for k in range(6):
            J[:, k] = (residuals(*_apply(step * np.eye(6)[k], R, t)) - r) / step
        JtW = J.T * weights
        H = JtW @ J
        g = JtW @ r
        current = cost(r, scale)
        for _attempt in range(6):
            update = -np.linalg.solve(H + lam * (np.diag(np.diag(H)) + 1e-9 * np.eye(6)), g)
            R_new, t_new = _apply(update, R, t)
            r_new = residuals(R_new, t_new)
            if np.all(np.isfinite(r_new)) and cost(r_new, scale) < current:
                R, t, r = R_new, t_new, r_new
                lam = max(lam / 10, 1e-9)
                break
            lam *= 10
        else:
            break
    return R, t


def _clean(mask: np.ndarray, cfg: MotionConfig) -> np.ndarray:
    out = mask.astype(np.uint8)
    for radius, op in ((cfg.open_radius, cv2.MORPH_OPEN), (cfg.close_radius, cv2.MORPH_CLOSE)):
        if radius > 0:
            kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))
            out = cv2.morphologyEx(out, op, kernel)
    if cfg.min_area > 0:
        count, labels, stats, _ = cv2.connectedComponentsWithStats(out, connectivity=8)
        keep = np.zeros(count, dtype=bool)
        keep[1:] = stats[1:, cv2.CC_STAT_AREA] >= cfg.min_area
        return keep[labels]
    return out.astype(bool)


def motion_mask(
    flow_ij: np.ndarray,
    K: np.ndarray,
    c2w_i: np.ndarray,
    c2w_j: np.ndarray,
    depth_i: np.ndarray | None,
    cfg: MotionConfig,
) -> np.ndarray:
    """Dynamic pixels (H,W) bool of frame i from the observed flow ``flow_ij`` (H,W,2, pixels, frame i to
    frame j; NaN = unknown), intrinsics ``K`` (3x3), camera-to-world poses of both frames, and optionally
    the z-depth of frame i (H,W, same unit as the pose translations, 0 = invalid). See the module docstring
    for the residuals; pixels with non-finite flow are never dynamic."""
    _check_K(K)
    _check_pose("c2w_i", c2w_i)
    _check_pose("c2w_j", c2w_j)
    if flow_ij.ndim != 3 or flow_ij.shape[2] != 2:
        raise ValueError(f"flow_ij must be (H,W,2), got shape {flow_ij.shape}")
    height, width = flow_ij.shape[:2]
    if depth_i is not None and depth_i.shape != (height, width):
        raise ValueError(f"depth_i must be (H,W) = {(height, width)} like the flow, got {depth_i.shape}")

    pix = _pixels(height, width)
    flow = flow_ij.astype(np.float64)
    target = pix + flow
    depth = (
        np.zeros((height, width)) if depth_i is None else np.nan_to_num(depth_i.astype(np.float64), nan=0.0)
    )
    has_depth = depth > 0
    R, t = relative_pose(c2w_i, c2w_j)
    rotation_only = float(np.linalg.norm(t)) < cfg.pure_rotation_baseline

    def sampled_residuals(R_: np.ndarray, t_: np.ndarray) -> np.ndarray:
        s = cfg.sample_stride
        p, q, d = pix[::s, ::s], target[::s, ::s], depth[::s, ::s]
        ok = np.isfinite(q).all(axis=-1)
        with_depth = ok & (d > 0)
        parts = [(_project_static(p[with_depth], d[with_depth], K, R_, t_) - q[with_depth]).ravel()]
        without = ok & ~(d > 0)
        if rotation_only:
            parts.append((_project_rotation(p[without], K, R_) - q[without]).ravel())
        else:
            parts.append(_sampson(p[without], q[without], K, R_, t_))
        return np.nan_to_num(np.concatenate(parts), nan=1e3)

    if cfg.refine_pose:
        R, t = _refine(sampled_residuals, R, t, cfg.refine_iterations)

    static_target = np.full_like(pix, np.nan)
    static_target[has_depth] = _project_static(pix[has_depth], depth[has_depth], K, R, t)
    if rotation_only:
        static_target[~has_depth] = _project_rotation(pix[~has_depth], K, R)
    residual = np.linalg.norm(target - static_target, axis=-1)
    threshold = cfg.threshold_px + cfg.relative_threshold * np.linalg.norm(static_target - pix, axis=-1)
    if not rotation_only:
        epipolar = ~has_depth
        residual[epipolar] = np.abs(_sampson(pix[epipolar], target[epipolar], K, R, t))
        threshold[epipolar] = cfg.threshold_px
    with np.errstate(invalid="ignore"):
        raw = residual > threshold
    return _clean(raw & np.isfinite(residual), cfg)
