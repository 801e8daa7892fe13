"""Accuracy metrics against ground truth: Sim(3)/SE(3) alignment, ATE, RPE, focal and depth errors."""

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Similarity:
    """x -> scale * R @ x + t."""

    scale: float
    R: np.ndarray
    """(3, 3) float64 rotation."""
    t: np.ndarray
    """(3,) float64 translation."""

    def apply(self, points: np.ndarray) -> np.ndarray:
        """Transform (..., 3) points."""
        return self.scale * points @ self.R.T + self.t


def umeyama(src: np.ndarray, dst: np.ndarray, with_scale: bool = True) -> Similarity:
    """Least-squares similarity (or rigid motion) mapping (N, 3) `src` onto (N, 3) `dst` (Umeyama 1991)."""
    src, dst = np.asarray(src, np.float64), np.asarray(dst, np.float64)
    if src.shape != dst.shape or src.ndim != 2 or src.shape[1] != 3 or len(src) < 2:
        raise ValueError(f"need two (N, 3) arrays with N >= 2, got {src.shape} and {dst.shape}")
    mu_s, mu_d = src.mean(axis=0), dst.mean(axis=0)
    xs, xd = src - mu_s, dst - mu_d
    cov = xd.T @ xs / len(src)
    u, d, vt = np.linalg.svd(cov)
    sign = np.eye(3)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        sign[2, 2] = -1.0
    R = u @ sign @ vt
    var_s = float(np.mean(np.sum(xs**2, axis=1)))
    scale = float(np.trace(np.diag(d) @ sign) / var_s) if with_scale and var_s > 0 else 1.0
    return Similarity(scale, R, mu_d - scale * R @ mu_s)


def align_poses(c2w_est: np.ndarray, c2w_gt: np.ndarray, with_scale: bool = True) -> np.ndarray:
    """(F, 4, 4) estimated poses mapped into the ground-truth frame by the camera-centre alignment."""
    sim = umeyama(c2w_est[:, :3, 3], c2w_gt[:, :3, 3], with_scale)
    out = c2w_est.copy()
    out[:, :3, :3] = sim.R @ c2w_est[:, :3, :3]
    out[:, :3, 3] = sim.apply(c2w_est[:, :3, 3])
    return out


def ate_rmse(c2w_est: np.ndarray, c2w_gt: np.ndarray, with_scale: bool = True) -> float:
    """RMS camera-centre error after Sim(3) (or SE(3)) alignment, in the ground truth's units."""
    aligned = align_poses(c2w_est, c2w_gt, with_scale)
    return float(np.sqrt(np.mean(np.sum((aligned[:, :3, 3] - c2w_gt[:, :3, 3]) ** 2, axis=1))))


def trajectory_length(c2w: np.ndarray) -> float:
    """Summed distance between consecutive camera centres."""
    return float(np.sum(np.linalg.norm(np.diff(c2w[:, :3, 3], axis=0), axis=1)))


def rotation_angle_deg(R: np.ndarray) -> np.ndarray:
    """Rotation angle (degrees) of (..., 3, 3) rotation matrices."""
    cos = (np.trace(R, axis1=-2, axis2=-1) - 1.0) / 2.0
    skew = np.stack(
        [R[..., 2, 1] - R[..., 1, 2], R[..., 0, 2] - R[..., 2, 0], R[..., 1, 0] - R[..., 0, 1]], -1
    )
    sin = np.linalg.norm(skew, axis=-1) / 2.0  # atan2 keeps precision at small angles, where arccos loses it
    return np.degrees(np.arctan2(sin, cos))


def rpe(c2w_est: np.ndarray, c2w_gt: np.ndarray) -> tuple[float, float]:
    """Frame-to-frame relative pose error: (RMS rotation error in degrees, RMS translation error).

    Translation is in the ground truth's units after the Sim(3) scale of `align_poses`.
    """
    est = align_poses(c2w_est, c2w_gt)
    rel_est = np.linalg.inv(est[:-1]) @ est[1:]
    rel_gt = np.linalg.inv(c2w_gt[:-1]) @ c2w_gt[1:]
    delta = np.linalg.inv(rel_gt) @ rel_est
    rot = rotation_angle_deg(delta[:, :3, :3])
    trans = np.linalg.norm(delta[:, :3, 3], axis=1)
    return float(np.sqrt(np.mean(rot**2))), float(np.sqrt(np.mean(trans**2)))


def depth_errors(pred: np.ndarray, gt: np.ndarray, median_scale: bool = True) -> tuple[float, float, float]:
    """(AbsRel, delta < 1.25 ratio, fraction of GT pixels with a prediction) over pixels valid in both.

    With `median_scale` the prediction is first multiplied by median(gt) / median(pred).
    """
    valid = (pred > 0) & (gt > 0) & np.isfinite(pred) & np.isfinite(gt)
    if not valid.any():
        return float("nan"), 0.0, 0.0
    p, g = pred[valid].astype(np.float64), gt[valid].astype(np.float64)
    if median_scale:
        p = p * np.median(g) / np.median(p)
    ratio = np.maximum(p / g, g / p)
    return (
        float(np.mean(np.abs(p - g) / g)),
        float(np.mean(ratio < 1.25)),
        float(valid.sum() / (gt > 0).sum()),
    )


def mask_iou(pred: np.ndarray, gt: np.ndarray) -> float:
    """IoU of two boolean masks of one shape (any number of frames); 1.0 when both are empty."""
    if pred.shape != gt.shape:
        raise ValueError(f"mask shapes differ: {pred.shape} vs {gt.shape}")
    p, g = pred.astype(bool), gt.astype(bool)
    union = int(np.count_nonzero(p | g))
    return 1.0 if union == 0 else int(np.count_nonzero(p & g)) / union
