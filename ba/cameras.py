"""Camera models with analytic Jacobians: pinhole (OpenCV) and the BAL camera.

Pinhole: a point P = (X, Y, Z) in camera coordinates (x right, y down, z forward) projects to
(f X / Z + cx, f Y / Z + cy), one focal f (square pixels). Whether f is shared by all frames or
per-frame is decided by the caller through ``PinholeCameras.focal_index``.

BAL (Snavely's Bundler convention, as in Ceres' bundle_adjuster): camera parameters
(angle-axis w (3), translation t (3), f, k1, k2); P = R(w) X + t; p = -P[:2] / P[2];
predicted = f (1 + k1 |p|^2 + k2 |p|^4) p.
"""

from dataclasses import dataclass

import torch
from torch import Tensor

from dv4d.ba.errors import BundleAdjustmentError
from dv4d.ba.lie import so3_exp, so3_exp_and_left_jacobian
from dv4d.ba.tensor_ops import small_matmul, small_matvec


@dataclass(frozen=True)
class PinholeProjection:
    """Projected pixels and their Jacobians for N points."""

    uv: Tensor
    """(N, 2) pixel coordinates."""
    d_point: Tensor
    """(N, 2, 3) derivative of uv with respect to the camera-frame point."""
    d_focal: Tensor
    """(N, 2) derivative of uv with respect to the focal length f."""
    d_principal: Tensor
    """(N, 2, 2) derivative of uv with respect to (cx, cy) (the identity)."""


def pinhole_project(points: Tensor, focal: Tensor, principal: Tensor) -> PinholeProjection:
    """Project camera-frame points (N, 3) with focal (N,) and principal points (N, 2)."""
    x, y, z = points.unbind(-1)
    inv_z = 1 / z
    xn, yn = x * inv_z, y * inv_z
    uv = torch.stack((focal * xn + principal[:, 0], focal * yn + principal[:, 1]), dim=-1)
    fz = focal * inv_z
    zero = torch.zeros_like(x)
    d_point = torch.stack((fz, zero, -fz * xn, zero, fz, -fz * yn), dim=-1).reshape(-1, 2, 3)
    d_principal = torch.eye(2, dtype=points.dtype, device=points.device).expand(points.shape[0], 2, 2)
    return PinholeProjection(uv, d_point, torch.stack((xn, yn), dim=-1), d_principal)


@dataclass(frozen=True)
class PinholeCameras:
    """Pinhole intrinsics for F frames: focal shared by all frames or one per frame."""

    focal: Tensor
    """(1,) when shared, (F,) when per-frame; pixels."""
    principal: Tensor
    """(F, 2) principal points (cx, cy) in pixels."""

    def __post_init__(self) -> None:
        frames = self.principal.shape[0]
        if self.principal.ndim != 2 or self.principal.shape[1] != 2:
            raise BundleAdjustmentError(f"principal points must be (F, 2), got {tuple(self.principal.shape)}")
        if self.focal.ndim != 1 or self.focal.shape[0] not in (1, frames):
            raise BundleAdjustmentError(f"focal must be (1,) or ({frames},), got {tuple(self.focal.shape)}")

    @property
    def shared_focal(self) -> bool:
        """True when every frame uses the same focal length."""
        return self.focal.shape[0] == 1

    def focal_index(self, frames: Tensor) -> Tensor:
        """Index into ``focal`` for each frame index in ``frames`` (any shape, int64)."""
        return torch.zeros_like(frames) if self.shared_focal else frames

    def project(self, points: Tensor, frames: Tensor) -> PinholeProjection:
        """Project camera-frame points (N, 3) seen in frames (N,) int64."""
        return pinhole_project(points, self.focal[self.focal_index(frames)], self.principal[frames])


@dataclass(frozen=True)
class BalProjection:
    """Predicted BAL image points and Jacobians for N observations."""

    predicted: Tensor
    """(N, 2) predicted image coordinates (BAL units, centred pixels)."""
    d_camera: Tensor
    """(N, 2, 9) derivative with respect to (w, t, f, k1, k2); w additively (as Ceres does)."""
    d_point: Tensor
    """(N, 2, 3) derivative with respect to the world point."""


def _bal_rotations(cameras: Tensor, camera_index: Tensor | None) -> tuple[Tensor, Tensor]:
    """Rotation matrices (N, 3, 3) of each observation and its camera rows (N, 9).

    With ``camera_index`` the rotations are computed once per camera (C, not N, Rodrigues formulas)
    and gathered.
    """
    rot = so3_exp(cameras[:, :3])
    if camera_index is None:
        return rot, cameras
    return rot[camera_index], cameras[camera_index]


def bal_project(cameras: Tensor, points: Tensor, camera_index: Tensor | None = None) -> Tensor:
    """Predicted BAL image points (N, 2) for points (N, 3).

    ``cameras`` holds one row per observation (N, 9), or one per camera (C, 9) with ``camera_index``
    (N,) int64 naming each observation's camera.
    """
    rot, cams = _bal_rotations(cameras, camera_index)
    p_cam = small_matvec(rot, points) + cams[:, 3:6]
    p = -p_cam[:, :2] / p_cam[:, 2:3]
    r2 = p[:, :1] * p[:, :1] + p[:, 1:] * p[:, 1:]
    distortion = 1 + r2 * (cams[:, 7:8] + cams[:, 8:9] * r2)
    return cams[:, 6:7] * distortion * p


def bal_project_with_jacobians(
    cameras: Tensor, points: Tensor, camera_index: Tensor | None = None
) -> BalProjection:
    """``bal_project`` with analytic Jacobians (angle-axis through the SO(3) left Jacobian)."""
    rot, left = so3_exp_and_left_jacobian(cameras[:, :3])
    cams = cameras
    if camera_index is not None:
        rot, left, cams = rot[camera_index], left[camera_index], cameras[camera_index]
    rx = small_matvec(rot, points)
    p_cam = rx + cams[:, 3:6]
    inv_z = 1 / p_cam[:, 2]
    px, py = -p_cam[:, 0] * inv_z, -p_cam[:, 1] * inv_z
    f, k1, k2 = cams[:, 6], cams[:, 7], cams[:, 8]
    r2 = px * px + py * py
    distortion = 1 + r2 * (k1 + k2 * r2)
    fd = f * distortion
    predicted = torch.stack((fd * px, fd * py), dim=-1)
    # d predicted / d P_cam = -(f / z) [distortion I + c p p^T | (distortion + c r2) p], c = 2 (k1 + 2 k2 r2)
    scale = -f * inv_z
    sc = scale * 2 * (k1 + 2 * k2 * r2)
    sd = scale * distortion
    s_xy = sc * px * py
    s_z = sd + sc * r2
    d_proj = torch.stack((sd + sc * px * px, s_xy, s_z * px, s_xy, sd + sc * py * py, s_z * py), -1).reshape(
        -1, 2, 3
    )
    # row_i(d_proj) [-rx]x = rx x row_i(d_proj)
    d_rot = small_matmul(torch.linalg.cross(rx[:, None, :].expand(-1, 2, -1), d_proj, dim=-1), left)
    fr2 = f * r2
    d_intr = torch.stack(
        (distortion * px, fr2 * px, fr2 * r2 * px, distortion * py, fr2 * py, fr2 * r2 * py), -1
    )
    d_camera = torch.cat((d_rot, d_proj, d_intr.reshape(-1, 2, 3)), dim=-1)
    return BalProjection(predicted, d_camera, small_matmul(d_proj, rot))
