"""BAL reprojection problem for the Levenberg-Marquardt solver (cameras additive in R^9, as Ceres)."""

from dataclasses import dataclass

import torch
from torch import Tensor

from dv4d.ba.bal import BalData
from dv4d.ba.cameras import bal_project, bal_project_with_jacobians
from dv4d.ba.losses import RobustLoss
from dv4d.ba.problem import ResidualTerm

BAL_CAMERA_DIM = 9
"""Parameters per BAL camera: angle-axis (3), translation (3), f, k1, k2."""


@dataclass(frozen=True)
class BalState:
    """BAL parameters being optimised."""

    cameras: Tensor
    """(C, 9) camera parameters."""
    points: Tensor
    """(P, 3) world points."""


class BalProblem:
    """Reprojection residuals predicted - observed of every BAL observation."""

    def __init__(self, data: BalData, loss: RobustLoss | None = None) -> None:
        self.data = data
        self.loss = loss or RobustLoss()
        offsets = torch.arange(BAL_CAMERA_DIM, device=data.camera_index.device)
        self._columns = data.camera_index[:, None] * BAL_CAMERA_DIM + offsets

    @property
    def num_camera_parameters(self) -> int:
        """9 per camera."""
        return self.data.num_cameras * BAL_CAMERA_DIM

    @property
    def num_points(self) -> int:
        """Number of 3D points."""
        return self.data.num_points

    @property
    def point_dim(self) -> int:
        """3D points."""
        return 3

    @property
    def camera_block_size(self) -> int:
        """One block per camera."""
        return BAL_CAMERA_DIM

    def initial_state(self) -> BalState:
        """The parameters stored in the BAL file."""
        return BalState(self.data.cameras.clone(), self.data.points.clone())

    def evaluate(self, state: BalState, jacobians: bool) -> list[ResidualTerm]:
        """One term: (N, 2) residuals with (N, 2, 9) camera and (N, 2, 3) point Jacobians."""
        cam_idx = self.data.camera_index
        pts = state.points[self.data.point_index]
        if not jacobians:
            r = bal_project(state.cameras, pts, cam_idx) - self.data.observations
            return [ResidualTerm(r, self.loss, self._columns, None, self.data.point_index, None)]
        proj = bal_project_with_jacobians(state.cameras, pts, cam_idx)
        r = proj.predicted - self.data.observations
        return [ResidualTerm(r, self.loss, self._columns, proj.d_camera, self.data.point_index, proj.d_point)]

    def retract(self, state: BalState, camera_step: Tensor, point_step: Tensor) -> BalState:
        """Additive update of cameras and points."""
        return BalState(state.cameras + camera_step.reshape(-1, BAL_CAMERA_DIM), state.points + point_step)

    def parameter_norm(self, state: BalState) -> Tensor:
        """0-d Euclidean norm of all parameters."""
        return torch.sqrt((state.cameras * state.cameras).sum() + (state.points * state.points).sum())
