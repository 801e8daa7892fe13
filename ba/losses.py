"""Robust losses applied by residual reweighting (Ceres convention).

The cost of a residual block r is 0.5 * rho(s) with s = ||r||^2. Huber: rho(s) = s for s <= d^2,
else 2 d sqrt(s) - d^2. Cauchy: rho(s) = d^2 log(1 + s / d^2). The solver scales each residual
and its Jacobian by sqrt(rho'(s)) (iteratively reweighted least squares, no second-order term).
"""

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from dv4d.ba.errors import BundleAdjustmentError

LossKind = Literal["trivial", "huber", "cauchy"]


@dataclass(frozen=True)
class RobustLoss:
    """A robust loss rho(s) of the squared residual norm s."""

    kind: LossKind = "trivial"
    """"trivial" (plain least squares), "huber" or "cauchy"."""
    scale: float = 1.0
    """Scale d in residual units: Huber's quadratic-to-linear threshold, Cauchy's width."""

    def __post_init__(self) -> None:
        if self.kind not in ("trivial", "huber", "cauchy"):
            raise BundleAdjustmentError(f"unknown robust loss {self.kind!r}; use trivial, huber or cauchy")
        if not self.scale > 0:
            raise BundleAdjustmentError(f"robust loss scale must be positive, got {self.scale}")

    def rho(self, s: Tensor) -> Tensor:
        """rho(s) for squared norms s (any shape), same shape."""
        d2 = self.scale * self.scale
        if self.kind == "huber":
            return torch.where(s <= d2, s, 2 * self.scale * s.clamp_min(d2).sqrt() - d2)
        if self.kind == "cauchy":
            return d2 * torch.log1p(s / d2)
        return s

    def weight(self, s: Tensor) -> Tensor:
        """rho'(s): the weight multiplying the squared residual, same shape as s."""
        d2 = self.scale * self.scale
        if self.kind == "huber":
            return torch.where(s <= d2, torch.ones_like(s), self.scale / s.clamp_min(d2).sqrt())
        if self.kind == "cauchy":
            return 1 / (1 + s / d2)
        return torch.ones_like(s)
