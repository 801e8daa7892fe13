"""Reader for Bundle Adjustment in the Large (BAL) problems: ``problem-*.txt`` and ``.txt.bz2``.

Format: a header "num_cameras num_points num_observations", then one line per observation
"camera_index point_index x y", then 9 numbers per camera (angle-axis, translation, f, k1, k2),
then 3 numbers per point. Cost convention (Ceres): 0.5 * sum of squared residual norms.
"""

import bz2
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from dv4d.ba.cameras import bal_project
from dv4d.ba.errors import BalFormatError


@dataclass(frozen=True)
class BalData:
    """A BAL problem as read from disk (float64 tensors on CPU)."""

    name: str
    """Problem name: the file name without .txt / .bz2."""
    cameras: Tensor
    """(C, 9) float64: angle-axis (3), translation (3), f, k1, k2."""
    points: Tensor
    """(P, 3) float64 world points."""
    camera_index: Tensor
    """(N,) int64 camera of each observation."""
    point_index: Tensor
    """(N,) int64 point of each observation."""
    observations: Tensor
    """(N, 2) float64 observed image coordinates (BAL units)."""

    @property
    def num_cameras(self) -> int:
        """Number of cameras C."""
        return int(self.cameras.shape[0])

    @property
    def num_points(self) -> int:
        """Number of points P."""
        return int(self.points.shape[0])

    @property
    def num_observations(self) -> int:
        """Number of observations N."""
        return int(self.observations.shape[0])

    def to(self, device: str | torch.device, dtype: torch.dtype) -> "BalData":
        """The same problem with float tensors cast to dtype and everything moved to device."""
        return BalData(
            self.name,
            self.cameras.to(device=device, dtype=dtype),
            self.points.to(device=device, dtype=dtype),
            self.camera_index.to(device),
            self.point_index.to(device),
            self.observations.to(device=device, dtype=dtype),
        )


def bal_residuals(data: BalData, cameras: Tensor, points: Tensor) -> Tensor:
    """Reprojection residuals (N, 2) = predicted - observed for given camera/point parameters."""
    return bal_project(cameras[data.camera_index], points[data.point_index]) - data.observations


def bal_cost(data: BalData, cameras: Tensor | None = None, points: Tensor | None = None) -> float:
    """Ceres cost 0.5 * sum ||r||^2 at the given parameters (default: the file's)."""
    cams = data.cameras if cameras is None else cameras
    pts = data.points if points is None else points
    r = bal_residuals(data, cams, pts)
    return 0.5 * float((r * r).sum())


def _read_text(path: Path) -> str:
    if not path.is_file():
        raise BalFormatError(f"BAL file not found: {path}")
    try:
        if path.suffix == ".bz2":
            with bz2.open(path, "rt") as fh:
                return fh.read()
        return path.read_text()
    except (OSError, UnicodeDecodeError, EOFError) as exc:
        raise BalFormatError(f"cannot read BAL file {path}: {exc}") from exc


def read_bal(path: Path) -> BalData:
    """Read a BAL problem; raises BalFormatError with the reason when the file is not valid BAL."""
    text = _read_text(path)
    try:
        values = np.array(text.split(), dtype=np.float64)
    except ValueError as exc:
        raise BalFormatError(f"{path} is not a BAL file: non-numeric token ({exc})") from exc
    if values.size < 3:
        raise BalFormatError(f"{path} is not a BAL file: missing header")
    header = values[:3]
    if np.any(header != np.round(header)) or np.any(header < 1):
        raise BalFormatError(f"{path} is not a BAL file: bad header {header.tolist()}")
    num_cameras, num_points, num_obs = (int(v) for v in header)
    expected = 3 + 4 * num_obs + 9 * num_cameras + 3 * num_points
    if values.size != expected:
        raise BalFormatError(
            f"{path}: expected {expected} numbers for {num_cameras} cameras, {num_points} points and "
            f"{num_obs} observations, found {values.size} (truncated or not BAL)"
        )
    obs = values[3 : 3 + 4 * num_obs].reshape(num_obs, 4)
    cam_idx = obs[:, 0].astype(np.int64)
    pt_idx = obs[:, 1].astype(np.int64)
    if cam_idx.min() < 0 or cam_idx.max() >= num_cameras or pt_idx.min() < 0 or pt_idx.max() >= num_points:
        raise BalFormatError(f"{path}: observation indices out of range")
    start = 3 + 4 * num_obs
    cameras = values[start : start + 9 * num_cameras].reshape(num_cameras, 9)
    points = values[start + 9 * num_cameras :].reshape(num_points, 3)
    name = path.name.removesuffix(".bz2").removesuffix(".txt")
    return BalData(
        name,
        torch.from_numpy(cameras.copy()),
        torch.from_numpy(points.copy()),
        torch.from_numpy(cam_idx),
        torch.from_numpy(pt_idx),
        torch.from_numpy(obs[:, 2:].copy()),
    )
