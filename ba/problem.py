"""The interface between least-squares problems and the solver.

Parameters split into a small *camera side* (a flat vector of ``num_camera_parameters`` values:
poses, intrinsics) and a large *point side* (``num_points`` blocks of ``point_dim`` values: 3D
points, or 1 inverse depth per pixel). Every residual touches at most one point block, so the
point side is eliminated by the Schur complement. A problem returns its residuals as a list of
``ResidualTerm`` (one per kind of residual), each with per-residual Jacobian blocks and the
column / point indices they belong to. The index tensors must be the same on every evaluation
(the solver caches the sparsity structure built from the first one).

The state (``StateT``) must be a dataclass whose fields are tensors: the solver copies it once and
then selects between the current and the candidate state field by field, on the device. For CUDA
graphs (``LMConfig.cuda_graphs``), ``evaluate`` and ``retract`` must not read values back to the
host (``float(t)``, ``.item()``, boolean-mask indexing) and must give tensors of the same sizes on
every call.
"""

from dataclasses import dataclass
from typing import Protocol, TypeVar

from torch import Tensor

from dv4d.ba.losses import RobustLoss

StateT = TypeVar("StateT")


@dataclass(frozen=True)
class ResidualTerm:
    """N residual blocks of dimension m with their Jacobian blocks."""

    residuals: Tensor
    """(N, m) residuals."""
    loss: RobustLoss
    """Robust loss applied to each block's squared norm."""
    camera_columns: Tensor | None
    """(N, K) int64 camera-side columns each block depends on; -1 marks a fixed parameter. None: no camera
    parameters."""
    camera_jacobian: Tensor | None
    """(N, m, K) d residual / d camera columns; None when Jacobians were not requested or K = 0."""
    point_index: Tensor | None
    """(N,) int64 point block of each residual; -1 marks a fixed point. None: no point parameters."""
    point_jacobian: Tensor | None
    """(N, m, point_dim) d residual / d point block; None when not requested or no point."""


class LeastSquaresProblem(Protocol[StateT]):
    """A problem the Levenberg-Marquardt solver can minimise; StateT is its parameter container."""

    @property
    def num_camera_parameters(self) -> int:
        """Length of the camera-side step vector."""
        ...

    @property
    def num_points(self) -> int:
        """Number of point blocks (eliminated by the Schur complement)."""
        ...

    @property
    def point_dim(self) -> int:
        """Size of one point block (3 for 3D points, 1 for inverse depth)."""
        ...

    @property
    def camera_block_size(self) -> int:
        """Size of the camera-side blocks used by the block-Jacobi preconditioner (divides the length)."""
        ...

    def evaluate(self, state: StateT, jacobians: bool) -> list[ResidualTerm]:
        """Residual terms at state, with Jacobian blocks when ``jacobians`` is true."""
        ...

    def retract(self, state: StateT, camera_step: Tensor, point_step: Tensor) -> StateT:
        """State moved by a step: camera_step (num_camera_parameters,), point_step (num_points, point_dim)."""
        ...

    def parameter_norm(self, state: StateT) -> Tensor | float:
        """Norm of the parameters, for the relative parameter tolerance (a 0-d tensor avoids a host sync)."""
        ...
