"""Classical dense depth: two-view triangulation of DIS flow against neighbouring frames with known poses."""

from dataclasses import dataclass

import numpy as np

from dv4d.pipeline.flow import dis_flows, forward_backward_mask, to_gray
from dv4d.pipeline.geometry import GeometryResult


@dataclass(frozen=True)
class DepthConfig:
    """How neighbours are chosen and which triangulated pixels are trusted."""

    max_offset: int = 8
    """Neighbours are searched at most this many frames before and after."""
    target_baseline: float = 0.06
    """Preferred baseline as a fraction of the median scene depth (the nearest frame reaching it is used)."""
    min_angle_deg: float = 0.5
    """Pixels whose two rays meet at a smaller angle are left invalid."""
    fb_max_error_px: float = 1.0
    """Forward-backward flow consistency threshold."""
    max_epipolar_px: float = 0.75
    """Pixels whose flow leaves the epipolar line by more than this (moving objects) are invalid."""
    max_disagreement: float = 0.05
    """With two neighbours, a pixel needs a depth from both, agreeing within this relative difference
    (moving objects that slip through the epipolar check fail here)."""
    keep_single: bool = False
    """Also keep pixels that only one of two neighbours triangulates: about 1.7x the coverage, but
    moving objects that slip through the epipolar check then get (wrong) depth."""


def _scene_depth(geometry: GeometryResult, index: int) -> float:
    """Median z of the static points in front of camera `index` (1.0 when there are none)."""
    w2c = np.linalg.inv(geometry.c2w[index])
    z = geometry.points @ w2c[2, :3] + w2c[2, 3]
    z = z[z > 0]
    return float(np.median(z)) if len(z) else 1.0


def _neighbours(geometry: GeometryResult, index: int, cfg: DepthConfig) -> list[int]:
    """Up to one frame on each side: the nearest reaching the target baseline, else the farthest in range."""
    num = len(geometry.c2w)
    want = cfg.target_baseline * _scene_depth(geometry, index)
    centre = geometry.c2w[index, :3, 3]
    chosen = []
    for step in (-1, 1):
        best = None
        for offset in range(1, cfg.max_offset + 1):
            j = index + step * offset
            if not 0 <= j < num:
                break
            best = j
            if np.linalg.norm(geometry.c2w[j, :3, 3] - centre) >= want:
                break
        if best is not None and np.linalg.norm(geometry.c2w[best, :3, 3] - centre) > 1e-9:
            chosen.append(best)
    return chosen


def _triangulate_flow(
    fwd: np.ndarray, bwd: np.ndarray, geometry: GeometryResult, i: int, j: int, cfg: DepthConfig
) -> tuple[np.ndarray, np.ndarray]:
    """(z-depth (H, W) of frame i, triangulation angle (H, W) in degrees; both 0 where invalid) from the
    flows frame i -> j (`fwd`) and j -> i (`bwd`)."""
    h, w = fwd.shape[:2]
    ok = forward_backward_mask(fwd, bwd, cfg.fb_max_error_px)
    K = geometry.K
    fx, fy, cx, cy = K[0, 0], K[1, 1], K[0, 2], K[1, 2]
    rel = np.linalg.inv(geometry.c2w[j]) @ geometry.c2w[i]
    R, t = rel[:3, :3], rel[:3, 3]
    # Component-wise in float32 (no (H, W, 3) temporaries): rays r of frame i, rotated rr = R r.
    rx = ((np.arange(w, dtype=np.float32) - cx) / fx)[None, :]
    ry = ((np.arange(h, dtype=np.float32) - cy) / fy)[:, None]
    rr0, rr1, rr2 = (
        np.float32(R[k, 0]) * rx + np.float32(R[k, 1]) * ry + np.float32(R[k, 2]) for k in range(3)
    )
    xn = rx + fwd[..., 0] / np.float32(fx)
    yn = ry + fwd[..., 1] / np.float32(fy)
    # X_j = rr * d + t must project to (xn, yn): linear least squares in the depth d.
    a0, a1 = rr0 - xn * rr2, rr1 - yn * rr2
    b0, b1 = xn * np.float32(t[2]) - np.float32(t[0]), yn * np.float32(t[2]) - np.float32(t[1])
    with np.errstate(divide="ignore", invalid="ignore"):
        depth = (a0 * b0 + a1 * b1) / (a0 * a0 + a1 * a1)
        z = rr2 * depth + np.float32(t[2])
        # Reprojection error in frame j (pixels) of the least-squares point: off the epipolar line.
        du = ((rr0 * depth + np.float32(t[0])) / z - xn) * np.float32(fx)
        dv = ((rr1 * depth + np.float32(t[1])) / z - yn) * np.float32(fy)
        # Angle between the two viewing rays at the point P = r d (camera i): P and P - c_j.
        c = (-R.T @ t).astype(np.float32)
        px, py = rx * depth, ry * depth
        qx, qy, qz = px - c[0], py - c[1], depth - c[2]
        cos = (px * qx + py * qy + depth * qz) / np.sqrt(
            (px * px + py * py + depth * depth) * (qx * qx + qy * qy + qz * qz)
        )
    angle = np.degrees(np.arccos(np.clip(np.nan_to_num(cos, nan=1.0), -1.0, 1.0)))
    valid = (
        ok
        & np.isfinite(depth)
        & (depth > 0)
        & (z > 0)
        & (np.hypot(du, dv) <= cfg.max_epipolar_px)
        & (angle >= cfg.min_angle_deg)
    )
    return np.where(valid, depth, 0.0), np.where(valid, angle, 0.0)


def densify_depth(
    frames: np.ndarray, geometry: GeometryResult, index: int, cfg: DepthConfig | None = None
) -> np.ndarray:
    """(H, W) float32 z-depth of frame `index` in the geometry's units, 0 = invalid.

    Triangulates the DIS flow towards up to two neighbouring frames (one before, one after) with the
    geometry's poses; pixels failing forward-backward consistency, the epipolar check (moving
    objects) or the parallax threshold stay 0; with two neighbours both estimates must exist and
    agree, and are averaged weighted by their triangulation angle. Static cameras and pure rotations
    give an all-zero map.
    """
    cfg = cfg or DepthConfig()
    if not 0 <= index < len(frames):
        raise IndexError(f"frame index {index} out of range for {len(frames)} frames")
    gray = to_gray(np.asarray(frames[index]))
    partners = _neighbours(geometry, index, cfg)
    grays = [to_gray(np.asarray(frames[j])) for j in partners]
    flows = dis_flows([p for g in grays for p in ((gray, g), (g, gray))])
    estimates = [
        _triangulate_flow(flows[2 * k], flows[2 * k + 1], geometry, index, j, cfg)
        for k, j in enumerate(partners)
    ]
    if not estimates:
        return np.zeros(gray.shape, np.float32)
    if len(estimates) == 1:
        return estimates[0][0].astype(np.float32)
    (d0, a0), (d1, a1) = estimates
    both = (d0 > 0) & (d1 > 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        fused = (d0 * a0 + d1 * a1) / (a0 + a1)
        agree = np.abs(d0 - d1) <= cfg.max_disagreement * np.minimum(d0, d1)
    keep = both & agree
    if cfg.keep_single:
        keep |= ~both
        fused = np.where(both, fused, d0 + d1)
    return np.where(keep, fused, 0.0).astype(np.float32)
