"""Geometric motion segmentation: which pixels move on their own, not because the camera moved.

No learned model. The observed optical flow from frame ``i`` to one or more other frames ("views") is
compared with the flow a static scene would produce under the camera motion (``motion_score``):

- where the z-depth of frame ``i`` is known: the reprojection residual (pixels) between the observed
  flow target and the projection of the back-projected pixel into each view;
- where it is not: one inverse depth per pixel is fitted to all views at once and the residual is the
  worst reprojection error with it. With one view this is the distance to the epipolar line (motion
  along the epipolar line is invisible); with two views on either side, a point moving along its
  epipolar lines no longer meets in one 3D point. Pure rotations reduce to the rotation homography.

Small pose errors would otherwise flag whole frames, so each relative pose is first re-fitted to the
observed flow by a robust (Cauchy-weighted) Levenberg-Marquardt on a pixel grid; moving objects, being a
minority of pixels, are down-weighted by the robust weights. The thresholded residual is cleaned by a
morphological opening and closing, by removing connected components below a minimum area and by
filling enclosed holes.

``segment_motion`` streams a whole video: each frame against partner frames far enough away for a
target parallax (``partner_gap``), with forward-backward checked DIS flow on textured pixels.
"""

import functools
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import cv2
import numpy as np

from dv4d.pipeline.flow import DIS_PRESETS, dis_flows, forward_backward_mask, to_gray


@dataclass(frozen=True)
class MotionConfig:
    """Thresholds and clean-up of ``motion_mask``."""

    threshold_px: float = 1.0
    """Residual in pixels above which a pixel is dynamic (before the relative term below is added)."""
    relative_threshold: float = 0.1
    """Added to ``threshold_px``: this fraction of the static (ego-motion) flow magnitude at the pixel, so
    depth errors, which grow with parallax, are not taken for motion. Unused where depth is unknown."""
    triangulation_relative_threshold: float = 0.03
    """The same for pixels without depth, whose depth is fitted to the flows: only flow errors remain,
    which grow little with the flow."""
    refine_pose: bool = True
    """Re-fit the relative pose to the observed flow before testing (absorbs small pose noise)."""
    refine_iterations: int = 8
    """Most Levenberg-Marquardt iterations of the pose re-fit."""
    refine_tolerance: float = 1e-4
    """The re-fit stops once an iteration lowers its robust cost by less than this fraction."""
    sample_stride: int = 8
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
    fill_holes: bool = True
    """Fill the holes enclosed by a dynamic region (untextured parts of a moving object, whose flow fails
    the forward-backward check, are not judged and would otherwise stay static)."""

    target_flow_fraction: float = 0.03
    """Partner frames are this many frames away from each frame: the smallest gap whose median static
    flow reaches this fraction of the image's long side (more parallax separates motion better)."""
    max_gap: int = 12
    """Largest gap in frames between a frame and its partners (flow degrades as views drift apart)."""
    fb_max_error_px: float = 1.0
    """Pixels whose flow to a partner fails the forward-backward check by more than this are not judged
    in that partner (occlusions at object borders would look like motion)."""
    min_texture: float = 1.0
    """Pixels whose image structure is weaker than this are not judged: the smaller eigenvalue of the
    gradient structure tensor (``cv2.cornerMinEigenVal`` over 7x7 blocks of the 0-255 gray image). Flow
    in untextured regions is interpolated from their surroundings and would drag static walls or tables
    along with a moving neighbour (0 = judge every pixel)."""
    flow_preset: str = "dense"
    """DIS preset of the flows to the partners (see ``dv4d.pipeline.flow.DIS_PRESETS``)."""

    def __post_init__(self) -> None:
        if not self.threshold_px > 0:
            raise ValueError(f"threshold_px must be positive, got {self.threshold_px}")
        if self.relative_threshold < 0 or self.triangulation_relative_threshold < 0:
            raise ValueError("relative_threshold and triangulation_relative_threshold must be >= 0")
        if not self.target_flow_fraction > 0 or self.max_gap < 1 or not self.fb_max_error_px > 0:
            raise ValueError("target_flow_fraction and fb_max_error_px must be positive, max_gap >= 1")
        if self.min_texture < 0:
            raise ValueError(f"min_texture must be >= 0, got {self.min_texture}")
        if self.flow_preset not in DIS_PRESETS:
            raise ValueError(f"flow_preset must be one of {sorted(DIS_PRESETS)}, got {self.flow_preset!r}")
        if self.sample_stride < 1 or self.refine_iterations < 0 or self.refine_tolerance < 0:
            raise ValueError("sample_stride must be >= 1, refine_iterations and refine_tolerance >= 0")
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


@functools.lru_cache(maxsize=4)
def _pixels(height: int, width: int) -> np.ndarray:
    """(H,W,2) float64 pixel coordinates (x, y), pixel centres at integers; cached, read-only."""
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float64)
    grid = np.stack([xs, ys], axis=-1)
    grid.flags.writeable = False
    return grid


def _rows(M: np.ndarray, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``M @ [x, y, 1]`` for arrays of coordinates, element-wise (much faster than stacking + matmul)."""
    return (
        M[0, 0] * x + M[0, 1] * y + M[0, 2],
        M[1, 0] * x + M[1, 1] * y + M[1, 2],
        M[2, 0] * x + M[2, 1] * y + M[2, 2],
    )


def _length(dx: np.ndarray, dy: np.ndarray) -> np.ndarray:
    """``hypot(dx, dy)`` without its overflow guard (several times faster)."""
    return np.sqrt(dx * dx + dy * dy)


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


def _skew(v: np.ndarray) -> np.ndarray:
    return np.array([[0.0, -v[2], v[1]], [v[2], 0.0, -v[0]], [-v[1], v[0], 0.0]])


_SKEW_BASIS = np.stack([_skew(e) for e in np.eye(3)])
"""(3,3,3) ``[e_k]x`` for the unit vectors ``e_k``."""

_INVALID_RESIDUAL = 1e3
"""Residual (pixels) of a correspondence whose prediction is undefined (behind the camera, degenerate)."""


@dataclass(frozen=True)
class _PoseFit:
    """Sampled correspondences of the pose re-fit, with their residuals (pixels) and analytic Jacobian for
    a relative pose ``(R, t)`` (camera i -> camera j) under the left perturbation of ``_apply``."""

    K: np.ndarray
    """(3,3) intrinsics."""
    points: np.ndarray
    """(3,N) camera-i points of the samples with depth (back-projected pixels)."""
    observed: np.ndarray
    """(2,N) their observed pixels in camera j."""
    rays: np.ndarray
    """(3,M) normalised rays ``K^-1 (x, y, 1)`` of the samples without depth."""
    targets: np.ndarray
    """(2,M) their observed pixels in camera j."""
    target_rays: np.ndarray
    """(3,M) the normalised rays of ``targets``."""
    rotation_only: bool
    """Samples without depth use the rotation homography (reprojection of the ray) instead of the
    Sampson distance."""

    @property
    def size(self) -> int:
        """Number of residuals."""
        return 2 * self.points.shape[1] + (2 if self.rotation_only else 1) * self.rays.shape[1]

    def _reprojection(
        self, Y: np.ndarray, observed: np.ndarray, in_front: bool, translation: bool
    ) -> tuple[np.ndarray, np.ndarray]:
        """Residuals (2N,) ``K Y / z - observed`` of camera-j points ``Y`` (3,N) and their transposed
        Jacobian (6,2N); with ``in_front`` points not in front of camera j get ``_INVALID_RESIDUAL`` and no
        gradient; without ``translation`` the translation does not move ``Y``."""
        K = self.K
        with np.errstate(divide="ignore", invalid="ignore"):
            inv_z = 1.0 / Y[2]
            x, y = Y[0] * inv_z, Y[1] * inv_z
            res = np.empty((2, Y.shape[1]))
            jac = np.zeros((6, 2, Y.shape[1]))
            for c in range(2):
                res[c] = K[c, 0] * x + K[c, 1] * y + K[c, 2] - observed[c]
                # d proj_c / dY = (K_c0, K_c1, -(K_c0 x + K_c1 y)) / z; dY / d omega = -[Y]x, dY / d t = I.
                grad = (K[c, 0] * inv_z, K[c, 1] * inv_z, -(K[c, 0] * x + K[c, 1] * y) * inv_z)
                for k in range(3):
                    k1, k2 = (k + 1) % 3, (k + 2) % 3
                    jac[k, c] = Y[k1] * grad[k2] - Y[k2] * grad[k1]
                    if translation:
                        jac[3 + k, c] = grad[k]
        bad = ~np.isfinite(res).all(axis=0)
        if in_front:
            bad |= ~(Y[2] > 0)
        res[:, bad] = _INVALID_RESIDUAL
        jac[:, :, bad] = 0.0
        return res.ravel(), jac.reshape(6, -1)

    def _sampson(self, R: np.ndarray, t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Signed square roots (M,) of the Sampson distances (pixels) of the samples without depth to the
        epipolar geometry ``E = [t]x R`` (invariant to the scale of ``E``) and their transposed Jacobian
        (6,M)."""
        E = _skew(t) @ R
        # First-order change of E under _apply: dE = [omega]x E + [dt]x R.
        gens = np.concatenate([_SKEW_BASIS @ E, _SKEW_BASIS @ R])  # (6,3,3)
        A = np.linalg.inv(self.K)[:2, :2].T  # pixel-space epipolar line (first two terms) = A @ normalised
        p, q = self.rays, self.target_rays
        ep, etq = E @ p, E.T @ q
        lines, co_lines = A @ ep[:2], A @ etq[:2]
        gp = (gens.reshape(18, 3) @ p).reshape(6, 3, -1)  # G_k p
        gtq = (gens.transpose(0, 2, 1).reshape(18, 3) @ q).reshape(6, 3, -1)  # G_k^T q
        with np.errstate(divide="ignore", invalid="ignore"):
            den = np.sqrt(np.sum(lines * lines, axis=0) + np.sum(co_lines * co_lines, axis=0))
            res = np.sum(q * ep, axis=0) / den
            d_num = np.sum(gp * q, axis=1)
            d_den = (
                np.sum(lines * (A @ gp[:, :2]), axis=1) + np.sum(co_lines * (A @ gtq[:, :2]), axis=1)
            ) / den
            jac = (d_num - res * d_den) / den
        jac[:, ~np.isfinite(res) | ~np.isfinite(jac).all(axis=0)] = 0.0
        return np.nan_to_num(res, nan=_INVALID_RESIDUAL), jac

    def residuals(self, R: np.ndarray, t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Residuals (``size``,) in pixels and their transposed Jacobian (6, ``size``) with respect to
        ``_apply``'s ``delta = (omega, dt)`` at zero."""
        parts = [
            self._reprojection(R @ self.points + t[:, None], self.observed, in_front=True, translation=True)
        ]
        if self.rotation_only:
            parts.append(self._reprojection(R @ self.rays, self.targets, in_front=False, translation=False))
        else:
            parts.append(self._sampson(R, t))
        return np.concatenate([r for r, _ in parts]), np.concatenate([j for _, j in parts], axis=1)


def _refine(
    fit: _PoseFit, R: np.ndarray, t: np.ndarray, iterations: int, tolerance: float
) -> tuple[np.ndarray, np.ndarray]:
    """Robust Levenberg-Marquardt on the 6-DoF relative pose with Cauchy weights whose scale is the median
    absolute residual (moving pixels, a minority, end up with small weights). Analytic Jacobian; stops
    after ``iterations`` or once an iteration lowers the cost by less than ``tolerance`` of it."""

    def cost(r: np.ndarray, scale: float) -> float:
        return float(np.sum(np.log1p((r / scale) ** 2)))

    if fit.size < 12:
        return R, t
    r, Jt = fit.residuals(R, t)
    lam = 1e-3
    for _ in range(iterations):
        scale = max(1.4826 * float(np.median(np.abs(r))), 0.05)
        JtW = Jt * (1.0 / (1.0 + (r / scale) ** 2))
        H = JtW @ Jt.T
        g = JtW @ r
        current = cost(r, scale)
        for _attempt in range(6):
            update = -np.linalg.solve(H + lam * (np.diag(np.diag(H)) + 1e-9 * np.eye(6)), g)
            R_new, t_new = _apply(update, R, t)
            r_new, Jt_new = fit.residuals(R_new, t_new)
            new = cost(r_new, scale) if np.all(np.isfinite(r_new)) else np.inf
            if new < current:
                R, t, r, Jt = R_new, t_new, r_new, Jt_new
                lam = max(lam / 10, 1e-9)
                break
            lam *= 10
        else:
            break
        if current - new < tolerance * current:
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
        out = keep[labels].astype(np.uint8)
    if cfg.fill_holes:
        # Background components (4-connected) that do not touch the image border are holes.
        count, labels = cv2.connectedComponents(1 - out, connectivity=4)
        border = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
        hole = np.ones(count, dtype=bool)
        hole[border] = False
        out[hole[labels] & (out == 0)] = 1
    return out.astype(bool)


@dataclass(frozen=True)
class View:
    """Another frame j seen from frame i through the observed flow."""

    c2w: np.ndarray
    """(4,4) camera-to-world pose of frame j."""
    flow: np.ndarray
    """(H,W,2) observed flow from frame i to frame j, pixels (NaN = unknown)."""
    valid: np.ndarray | None = None
    """(H,W) bool pixels whose flow is trusted (e.g. forward-backward consistent); None = every pixel
    with a finite flow."""


def _check_view(view: View, shape: tuple[int, int]) -> None:
    _check_pose("c2w_j", view.c2w)
    if view.flow.ndim != 3 or view.flow.shape[2] != 2 or view.flow.shape[:2] != shape:
        raise ValueError(f"flow_ij must be (H,W,2) with one (H,W) for every view, got {view.flow.shape}")
    if view.valid is not None and view.valid.shape != view.flow.shape[:2]:
        raise ValueError(f"valid must be (H,W) = {view.flow.shape[:2]}, got {view.valid.shape}")


def _refined_pose(
    view: View, pix: np.ndarray, depth: np.ndarray, K: np.ndarray, c2w_i: np.ndarray, cfg: MotionConfig
) -> tuple[np.ndarray, np.ndarray, bool]:
    """Relative pose ``(R, t)`` of the view after the robust re-fit, and whether it is a pure rotation.
    Without depth the re-fit may correct the direction of the translation but not its length or sign
    (the epipolar residuals see neither; the length fixes the scale shared by the views); a pure rotation
    keeps ``t = 0``."""
    R, t0 = relative_pose(c2w_i, view.c2w)
    length = float(np.linalg.norm(t0))
    rotation_only = length < cfg.pure_rotation_baseline
    if not cfg.refine_pose:
        return R, t0, rotation_only
    s = cfg.sample_stride
    p = pix[::s, ::s].reshape(-1, 2)
    q = p + view.flow[::s, ::s].reshape(-1, 2)
    d = depth[::s, ::s].ravel()
    ok = np.isfinite(q).all(axis=-1)
    if view.valid is not None:
        ok &= view.valid[::s, ::s].ravel()
    with_depth, without = ok & (d > 0), ok & ~(d > 0)
    K_inv = np.linalg.inv(K)
    rays = K_inv[:, :2] @ p.T + K_inv[:, 2:]
    free = q[without].T
    fit = _PoseFit(
        K,
        points=rays[:, with_depth] * d[with_depth],
        observed=q[with_depth].T,
        rays=rays[:, without],
        targets=free,
        target_rays=K_inv[:, :2] @ free + K_inv[:, 2:],
        rotation_only=rotation_only,
    )
    R, t = _refine(fit, R, t0, cfg.refine_iterations, cfg.refine_tolerance)
    if rotation_only:
        return R, np.zeros(3), True
    if not with_depth.any():  # the epipolar residuals see neither the length nor the sign of t
        t = t * (length / max(float(np.linalg.norm(t)), 1e-300)) * (1.0 if t @ t0 >= 0 else -1.0)
    return R, t, False


def motion_score(
    views: list[View], K: np.ndarray, c2w_i: np.ndarray, depth_i: np.ndarray | None, cfg: MotionConfig
) -> np.ndarray:
    """(H,W) float64 residual of each pixel of frame i over its threshold (> 1 = moving), the worst over
    the views that trust the pixel; NaN where no view does.

    Where ``depth_i`` (H,W, the poses' unit, 0 = invalid) is known, the residual is the reprojection
    error of the back-projected pixel in each view (threshold ``threshold_px`` plus
    ``relative_threshold`` of the static flow). Elsewhere one inverse depth per pixel is fitted to all
    its trusted views at once (linear least squares on the normalised image coordinates, kept >= 0)
    and the residual is the worst reprojection error with that depth (threshold ``threshold_px`` plus
    ``triangulation_relative_threshold`` of the static flow): with one view this is the distance to the
    epipolar line; with two or more, a point moving along its epipolar lines, which no single view can
    tell from a static one, fails to meet in one 3D point. Pure rotations give every pixel the rotation
    homography."""
    _check_K(K)
    _check_pose("c2w_i", c2w_i)
    if not views:
        raise ValueError("motion_score needs at least one view")
    shape = views[0].flow.shape[:2]
    for view in views:
        _check_view(view, shape)
    if depth_i is not None and depth_i.shape != shape:
        raise ValueError(f"depth_i must be (H,W) = {shape} like the flow, got {depth_i.shape}")
    pix = _pixels(*shape)
    depth = np.zeros(shape) if depth_i is None else np.nan_to_num(depth_i.astype(np.float64), nan=0.0)
    poses = [_refined_pose(view, pix, depth, K, c2w_i, cfg)[:2] for view in views]
    trusted = []
    for view in views:
        ok = np.isfinite(view.flow[..., 0]) & np.isfinite(view.flow[..., 1])
        trusted.append(ok if view.valid is None else ok & view.valid)
    # Only pixels that some view trusts are judged: work on their flat indices.
    judged = np.flatnonzero(np.logical_or.reduce(trusted))
    score = np.full(shape, np.nan)
    if judged.size == 0:
        return score
    # float32 from here: residuals in pixels, far above its resolution (1e-4 px at 1000 px).
    f32 = np.float32
    x, y = pix[..., 0].ravel()[judged].astype(f32), pix[..., 1].ravel()[judged].astype(f32)
    d = depth.ravel()[judged]
    has_depth = d > 0
    K_inv = np.linalg.inv(K).astype(f32)
    ray_x, ray_y, _ = _rows(K_inv, x, y)  # the ray's z is 1

    fitted = []
    normal = np.zeros(judged.size, f32)
    rhs = np.zeros(judged.size, f32)
    for view, (R, t), ok in zip(views, poses, trusted, strict=True):
        ok = ok.ravel()[judged]
        t = t.astype(f32)
        flow_x, flow_y = np.take(view.flow.reshape(-1, 2), judged, axis=0).T.astype(f32)
        target_x = np.where(ok, x + flow_x, f32(0.0))
        target_y = np.where(ok, y + flow_y, f32(0.0))
        xn, yn, _ = _rows(K_inv, target_x, target_y)
        rotated = _rows(R.astype(f32), ray_x, ray_y)
        # Camera-j point (per unit depth of frame i) = rotated + t * rho must project to (xn, yn).
        for coord, c in ((xn, 0), (yn, 1)):
            a = (coord * t[2] - t[c]) * ok
            normal += a * a
            rhs += a * (rotated[c] - coord * rotated[2])
        fitted.append((t, target_x, target_y, ok, rotated))
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        rho = np.clip(np.nan_to_num(rhs / normal, nan=0.0, posinf=0.0, neginf=0.0), 0.0, None)
        rho[has_depth] = 1.0 / d[has_depth]
    relative = np.where(has_depth, f32(cfg.relative_threshold), f32(cfg.triangulation_relative_threshold))
    fx, fy, cx, cy = (f32(v) for v in (K[0, 0], K[1, 1], K[0, 2], K[1, 2]))

    worst = np.full(judged.size, np.nan, f32)
    for t, target_x, target_y, ok, rotated in fitted:
        z = rotated[2] + t[2] * rho
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            proj_x = (rotated[0] + t[0] * rho) / z * fx + cx
            proj_y = (rotated[1] + t[1] * rho) / z * fy + cy
            residual = _length(target_x - proj_x, target_y - proj_y)
            threshold = cfg.threshold_px + relative * _length(proj_x - x, proj_y - y)
            ratio = np.where(z > 0, residual / threshold, f32(np.inf))
        worst = np.where(ok, np.fmax(worst, ratio), worst)
    score.ravel()[judged] = worst
    return score


def motion_mask_views(
    views: list[View], K: np.ndarray, c2w_i: np.ndarray, depth_i: np.ndarray | None, cfg: MotionConfig
) -> np.ndarray:
    """Dynamic pixels (H,W) bool of frame i from its flows to one or more other frames (see
    ``motion_score``), cleaned by opening, closing and the minimum area; untrusted pixels are static."""
    with np.errstate(invalid="ignore"):
        return _clean(motion_score(views, K, c2w_i, depth_i, cfg) > 1.0, cfg)


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
    the z-depth of frame i (H,W, same unit as the pose translations, 0 = invalid): the one-view case of
    ``motion_mask_views``. Pixels with non-finite flow are never dynamic."""
    _check_pose("c2w_j", c2w_j)
    if flow_ij.ndim != 3 or flow_ij.shape[2] != 2:
        raise ValueError(f"flow_ij must be (H,W,2), got shape {flow_ij.shape}")
    return motion_mask_views([View(c2w_j, flow_ij)], K, c2w_i, depth_i, cfg)


def _median_static_flow(depth: np.ndarray, K: np.ndarray, c2w_i: np.ndarray, c2w_j: np.ndarray) -> float:
    """Median magnitude (pixels) of the static flow i -> j over a sparse grid of frame i (pixels without
    depth are taken at infinity, where only the rotation moves them); NaN when nothing projects."""
    step = max(1, min(depth.shape) // 32)
    d = np.nan_to_num(np.asarray(depth[::step, ::step], np.float64), nan=0.0)
    pix = _pixels(*depth.shape)[::step, ::step]
    R, t = relative_pose(c2w_i, c2w_j)
    target = np.where(
        (d > 0)[..., None],
        _project_static(pix, np.where(d > 0, d, 1.0), K, R, t),
        _project_rotation(pix, K, R),
    )
    flow = np.linalg.norm(target - pix, axis=-1)
    flow = flow[np.isfinite(flow)]
    return float(np.median(flow)) if flow.size else float("nan")


def partner_gap(depth: np.ndarray, K: np.ndarray, c2w: np.ndarray, cfg: MotionConfig) -> int:
    """Frames between each frame and its motion partners: the smallest gap (1..``max_gap``, at most F-1)
    whose median static flow over up to 8 evenly spread frames reaches ``target_flow_fraction`` of the
    long side; the largest allowed gap when none does (slow or static cameras). ``depth`` (F,H,W) may be
    memory-mapped; ``c2w`` is (F,4,4)."""
    num = len(c2w)
    longest = min(cfg.max_gap, max(num - 1, 1))
    want = cfg.target_flow_fraction * max(depth.shape[1:])
    for gap in range(1, longest + 1):
        starts = np.unique(np.linspace(0, num - 1 - gap, min(8, num - gap)).round().astype(int))
        flows = np.array([_median_static_flow(np.asarray(depth[i]), K, c2w[i], c2w[i + gap]) for i in starts])
        if np.isfinite(flows).any() and np.nanmedian(flows) >= want:
            return gap
    return longest


@dataclass(frozen=True)
class MotionFrame:
    """The motion segmentation of one frame."""

    mask: np.ndarray
    """(H,W) bool dynamic pixels."""
    step_flow: np.ndarray | None
    """(H,W,2) float32 estimate of the flow to the next frame, pixels (the flow to a partner divided by the
    frame gap); None for a single-frame video."""


_FLOW_LOOKAHEAD = 2
"""``segment_motion`` computes the flows of up to this many frames ahead in the background while it judges
a frame: on many cores the flow pool stays full (two pairs both ways) and the judging costs no time."""


def _partners(i: int, gap: int, num: int) -> list[int]:
    """One partner each side, ``gap`` frames away or the clip's first/last frame when nearer; the first
    and last frames take a second partner twice as far on their only side."""
    if num < 2:
        return []
    if i == 0:
        return [min(gap, num - 1)] + ([2 * gap] if 2 * gap < num else [])
    if i == num - 1:
        return [max(i - gap, 0)] + ([i - 2 * gap] if i - 2 * gap >= 0 else [])
    return [max(i - gap, 0), min(i + gap, num - 1)]


def segment_motion(
    frames: np.ndarray, depth: np.ndarray, K: np.ndarray, c2w: np.ndarray, cfg: MotionConfig
) -> Iterator[MotionFrame]:
    """Dynamic masks of every frame, in order: each frame against its partners ``partner_gap`` frames
    before and after (``motion_mask_views``), judging the textured pixels (``min_texture``) whose DIS
    flow passes the forward-backward check.

    ``frames`` (F,H,W,3) uint8 and ``depth`` (F,H,W) (0 = invalid) may be memory-mapped: the flows of a
    frame pair are computed once, both ways, in the background up to ``_FLOW_LOOKAHEAD`` frames ahead,
    and held only until both frames are done (about two per gap frame in memory)."""
    num = len(frames)
    if depth.shape != frames.shape[:3] or c2w.shape != (num, 4, 4):
        raise ValueError(
            f"frames (F,H,W,3), depth (F,H,W) and c2w (F,4,4) must agree, got {frames.shape}, "
            f"{depth.shape}, {c2w.shape}"
        )
    gap = partner_gap(depth, K, c2w, cfg) if num > 1 else 1
    pairs: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]] = {}
    scheduled: set[tuple[int, int]] = set()
    pending: dict[int, Future[list[tuple[tuple[int, int], np.ndarray, np.ndarray]]]] = {}

    def flows_of(i: int, new: list[int]) -> list[tuple[tuple[int, int], np.ndarray, np.ndarray]]:
        """Flows between frame i and each of ``new``, both ways, with their forward-backward masks."""
        image = np.asarray(frames[i])
        others = [np.asarray(frames[j]) for j in new]
        flows = dis_flows([p for other in others for p in ((image, other), (other, image))], cfg.flow_preset)
        found = []
        for k, j in enumerate(new):
            fwd, bwd = flows[2 * k], flows[2 * k + 1]
            found.append(((i, j), fwd, forward_backward_mask(fwd, bwd, cfg.fb_max_error_px)))
            found.append(((j, i), bwd, forward_backward_mask(bwd, fwd, cfg.fb_max_error_px)))
        return found

    with ThreadPoolExecutor(max_workers=_FLOW_LOOKAHEAD, thread_name_prefix="dv4d-motion") as executor:
        requested = 0  # frames are requested in order: each pair of frame i by frame i at the latest
        for i in range(num):
            while requested < min(i + _FLOW_LOOKAHEAD + 1, num):
                new = [j for j in _partners(requested, gap, num) if (requested, j) not in scheduled]
                scheduled.update(pair for j in new for pair in ((requested, j), (j, requested)))
                pending[requested] = executor.submit(flows_of, requested, new)
                requested += 1
            for key, flow, fb_ok in pending.pop(i).result():
                pairs[key] = flow, fb_ok
            for key in [k for k in pairs if max(k) < i]:
                del pairs[key]
            partners = _partners(i, gap, num)
            if not partners:
                yield MotionFrame(np.zeros(frames.shape[1:3], dtype=bool), None)
                continue
            gray = to_gray(np.asarray(frames[i])).astype(np.float32)
            textured = cv2.cornerMinEigenVal(gray, 7, 3) >= cfg.min_texture
            views = [View(c2w[j], pairs[(i, j)][0], pairs[(i, j)][1] & textured) for j in partners]
            mask = motion_mask_views(views, K, c2w[i], np.asarray(depth[i], dtype=np.float32), cfg)
            nearest = min(range(len(partners)), key=lambda k: (partners[k] < i, abs(partners[k] - i)))
            step = (views[nearest].flow / (partners[nearest] - i)).astype(np.float32)
            yield MotionFrame(mask, step)
