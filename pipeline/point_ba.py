"""Sparse point bundle adjustment of a video's tracks through the project's solver (`dv4d.ba`).

Cameras are world-to-camera (R, t) with one shared pinhole focal (fx = fy) and a fixed principal
point; unknowns are the poses of the free cameras, the free 3D points and optionally the focal.
Everything else is held fixed, which gives the window API the reconstruction needs: a sliding
window of keyframes against fixed older ones, a global adjustment over every keyframe, and
motion-only refinement (free cameras, fixed points). Points are eliminated by the Schur complement
of `dv4d.ba.lm.solve_lm` (Levenberg-Marquardt, Huber loss on pixel residuals). Observations in
fixed cameras (with the focal fixed) form a term without camera columns, so the Schur complement
gets no rows, nor row pairs, for them: a window costs what its own frames see.

Pose steps are left perturbations: R <- exp(w) R, t <- exp(w) t + d, step = (w, d).
"""

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from dv4d.ba.cameras import PinholeProjection, pinhole_project
from dv4d.ba.lie import skew, so3_exp
from dv4d.ba.lm import LMConfig, solve_lm
from dv4d.ba.losses import RobustLoss
from dv4d.ba.problem import ResidualTerm
from dv4d.ba.tensor_ops import cpu_threads, small_matmul, small_matvec

POSE_DIM = 6


@dataclass(frozen=True)
class PointState:
    """Parameters of the point problem (C cameras, P points), float64 tensors."""

    R: Tensor
    """(C, 3, 3) world-to-camera rotations."""
    t: Tensor
    """(C, 3) world-to-camera translations."""
    points: Tensor
    """(P, 3) world points."""
    focal: Tensor
    """(1,) shared focal length, pixels."""


@dataclass(frozen=True)
class Observations:
    """M observations of points in cameras."""

    cam: np.ndarray
    """(M,) int64 camera of each observation."""
    pt: np.ndarray
    """(M,) int64 point of each observation."""
    xy: np.ndarray
    """(M, 2) float64 observed pixel positions."""


@dataclass(frozen=True)
class _TermRows:
    """The observations of one residual term of `PointProblem` (n of the M observations)."""

    rows: Tensor | None
    """(n,) int64 indices of the observations; None: all of them, in order."""
    columns: Tensor | None
    """(n, K) int64 camera columns (-1 fixed); None: the term has no camera parameter."""
    point_index: Tensor
    """(n,) int64 free point of each observation (-1 fixed)."""
    cam: Tensor
    """(n,) int64 camera of each observation."""


def _pick(values: Tensor, rows: Tensor | None) -> Tensor:
    """values[rows], or values itself when rows is None."""
    return values if rows is None else values[rows]


class PointProblem:
    """Reprojection residuals (pixels) with free / fixed cameras and points and an optional focal."""

    def __init__(self, obs: Observations, principal: np.ndarray, free_cams: np.ndarray,
                 free_points: np.ndarray, refine_focal: bool, huber_px: float) -> None:  # fmt: skip
        self.refine_focal = refine_focal
        self.loss = RobustLoss("huber", huber_px)
        self._cam = torch.from_numpy(obs.cam)
        self._pt = torch.from_numpy(obs.pt)
        self._xy = torch.from_numpy(obs.xy)
        self._principal = torch.as_tensor(principal, dtype=torch.float64).expand(len(obs.cam), 2)
        cam_rank = np.full(len(free_cams), -1, np.int64)
        self.free_cams = np.flatnonzero(free_cams)
        cam_rank[self.free_cams] = np.arange(len(self.free_cams))
        pt_rank = np.full(len(free_points), -1, np.int64)
        self.free_points = np.flatnonzero(free_points)
        pt_rank[self.free_points] = np.arange(len(self.free_points))
        rank = cam_rank[obs.cam]
        pose_cols = np.where(rank[:, None] >= 0, rank[:, None] * POSE_DIM + np.arange(POSE_DIM), -1)
        if refine_focal:
            focal_col = np.full((len(rank), 1), len(self.free_cams) * POSE_DIM)
            pose_cols = np.hstack([pose_cols, focal_col])
        point_index = pt_rank[obs.pt]
        # Observations in fixed cameras (with the focal fixed) only constrain their points: they go
        # into a term without camera columns, which gives the Schur complement no rows for them.
        with_camera = rank >= 0 if not refine_focal else np.ones(len(rank), bool)
        parts = [np.flatnonzero(with_camera), np.flatnonzero(~with_camera)]
        if not (len(parts[0]) and len(parts[1])):
            self._terms = [
                _TermRows(None, torch.from_numpy(pose_cols), torch.from_numpy(point_index), self._cam)
            ]
        else:
            self._terms = [
                _TermRows(
                    torch.from_numpy(rows),
                    torch.from_numpy(pose_cols[rows]) if camera else None,
                    torch.from_numpy(point_index[rows]),
                    torch.from_numpy(obs.cam[rows]),
                )
                for camera, rows in zip((True, False), parts, strict=True)
            ]
        self._free_cams_t = torch.from_numpy(self.free_cams)
        self._free_points_t = torch.from_numpy(self.free_points)

    @property
    def num_camera_parameters(self) -> int:
        """6 per free camera, plus 1 for the focal when refined."""
        return len(self.free_cams) * POSE_DIM + int(self.refine_focal)

    @property
    def num_points(self) -> int:
        """Free points."""
        return len(self.free_points)

    @property
    def point_dim(self) -> int:
        """3D points."""
        return 3

    @property
    def camera_block_size(self) -> int:
        """Pose blocks (single columns when the focal is refined too)."""
        return 1 if self.refine_focal else POSE_DIM

    def project(self, state: PointState) -> tuple[Tensor, PinholeProjection]:
        """(camera-frame points (M, 3), projection of each observation) at state."""
        xc = small_matvec(state.R[self._cam], state.points[self._pt]) + state.t[self._cam]
        return xc, pinhole_project(xc, state.focal.expand(xc.shape[0]), self._principal)

    def evaluate(self, state: PointState, jacobians: bool) -> list[ResidualTerm]:
        """(M, 2) residuals predicted - observed, as one term (or two: with and without camera columns)."""
        xc, proj = self.project(state)
        res = proj.uv - self._xy
        terms = []
        for part in self._terms:
            residuals = _pick(res, part.rows)
            if not jacobians:
                terms.append(ResidualTerm(residuals, self.loss, part.columns, None, part.point_index, None))
                continue
            d_point = _pick(proj.d_point, part.rows)
            pt_jac = small_matmul(d_point, state.R[part.cam])
            cam_jac = None
            if part.columns is not None:
                blocks = [small_matmul(d_point, -skew(_pick(xc, part.rows))), d_point]
                if self.refine_focal:
                    blocks.append(_pick(proj.d_focal, part.rows)[:, :, None])
                cam_jac = torch.cat(blocks, dim=-1)
            terms.append(ResidualTerm(residuals, self.loss, part.columns, cam_jac, part.point_index, pt_jac))
        return terms

    def retract(self, state: PointState, camera_step: Tensor, point_step: Tensor) -> PointState:
        """Left-perturbed free poses, additive free points and focal."""
        n = len(self.free_cams)
        step = camera_step[: n * POSE_DIM].reshape(n, POSE_DIM)
        d_rot = so3_exp(step[:, :3])
        R, t = state.R.clone(), state.t.clone()
        R[self._free_cams_t] = small_matmul(d_rot, state.R[self._free_cams_t])
        t[self._free_cams_t] = small_matvec(d_rot, state.t[self._free_cams_t]) + step[:, 3:]
        points = state.points.clone()
        points[self._free_points_t] = state.points[self._free_points_t] + point_step
        focal = state.focal + camera_step[n * POSE_DIM :] if self.refine_focal else state.focal
        return PointState(R, t, points, focal)

    def parameter_norm(self, state: PointState) -> Tensor:
        """0-d norm of the free translations, free points and focal."""
        t = state.t[self._free_cams_t]
        p = state.points[self._free_points_t]
        return torch.sqrt((t * t).sum() + (p * p).sum() + (state.focal * state.focal).sum())


@dataclass(frozen=True)
class PointSolution:
    """Refined parameters (numpy, float64) and the residuals of every observation."""

    R: np.ndarray
    """(C, 3, 3) world-to-camera rotations."""
    t: np.ndarray
    """(C, 3) world-to-camera translations."""
    points: np.ndarray
    """(P, 3) world points."""
    focal: float
    """Shared focal, pixels."""
    residuals: np.ndarray
    """(M, 2) reprojection residuals predicted - observed, pixels."""
    depth: np.ndarray
    """(M,) camera-frame z of each observation."""


def bundle_adjust(
    R: np.ndarray,
    t: np.ndarray,
    points: np.ndarray,
    focal: float,
    principal: np.ndarray,
    obs: Observations,
    free_cams: np.ndarray,
    free_points: np.ndarray,
    refine_focal: bool,
    iterations: int,
    huber_px: float,
) -> PointSolution:
    """Minimise the Huber reprojection cost over the free cameras / points (and focal); all numpy in and out.

    `free_cams` (C,) and `free_points` (P,) are bool masks; the rest stays fixed. With nothing free
    (or no observation) the input is returned with its residuals.
    """
    state = PointState(
        torch.as_tensor(R, dtype=torch.float64),
        torch.as_tensor(t, dtype=torch.float64),
        torch.as_tensor(points, dtype=torch.float64),
        torch.tensor([focal], dtype=torch.float64),
    )
    problem = PointProblem(obs, principal, free_cams, free_points, refine_focal, huber_px)
    if len(obs.cam) and (problem.num_camera_parameters or problem.num_points) and iterations > 0:
        with cpu_threads(
            1
        ):  # tiny per-solve work: threads only add synchronisation (and spin on a busy machine)
            state = solve_lm(
                problem, state, LMConfig(max_iterations=iterations, function_tolerance=1e-7)
            ).state
    xc, proj = problem.project(state)
    return PointSolution(
        state.R.numpy(),
        state.t.numpy(),
        state.points.numpy(),
        float(state.focal[0]),
        (proj.uv - torch.from_numpy(obs.xy)).numpy(),
        xc[:, 2].numpy(),
    )
