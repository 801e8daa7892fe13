"""Dense flow-depth bundle adjustment over keyframes, with a window API.

Unknowns: per keyframe a camera-to-world pose ``c2w`` (4x4, OpenCV axes) and a low-resolution
inverse-depth map (h, w) in 1/metres; one focal length shared by all keyframes (square pixels,
principal point fixed). Low-resolution depth pixel (row y, col x) sits at working-resolution
pixel ((x + 0.5) * W / w - 0.5, (y + 0.5) * H / h - 0.5).

Residuals:
- flow: a depth pixel of keyframe i back-projected with its inverse depth, moved by the poses into
  keyframe j and projected, minus the flow target there (pixels), times sqrt(weight);
- depth prior: sqrt(prior_weight) * (rho / rho_prior - 1) for pixels with a prior (rho_prior > 0).

``solve_window`` optimises the poses and depth maps of a chosen subset of keyframes (and the focal
when asked) with everything else held fixed, by the Levenberg-Marquardt + Schur solver (1x1 depth
blocks eliminated). Pose steps are right perturbations c2w <- c2w exp(xi), xi = (translation,
rotation) in the camera frame.
"""

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from dv4d.ba.cameras import PinholeProjection, pinhole_project
from dv4d.ba.errors import BundleAdjustmentError
from dv4d.ba.lie import se3_exp, skew
from dv4d.ba.lm import LMConfig, LMResult, solve_lm
from dv4d.ba.losses import RobustLoss
from dv4d.ba.problem import ResidualTerm
from dv4d.ba.tensor_ops import small_matmul, small_matvec

POSE_DIM = 6
"""Tangent size of one pose."""


@dataclass(frozen=True)
class FlowCorrespondences:
    """M correspondences from low-resolution depth pixels of a source keyframe to a target keyframe."""

    source_frame: Tensor
    """(M,) int64 keyframe i that owns the depth pixel."""
    source_pixel: Tensor
    """(M,) int64 flat index y * w + x into keyframe i's low-resolution depth map."""
    target_frame: Tensor
    """(M,) int64 keyframe j != i."""
    target_uv: Tensor
    """(M, 2) float pixel (u, v) in keyframe j at working resolution (flow end point)."""
    weight: Tensor
    """(M,) float confidence >= 0 multiplying the squared residual."""


@dataclass(frozen=True)
class DenseState:
    """Parameters of the dense problem."""

    c2w: Tensor
    """(F, 4, 4) camera-to-world poses."""
    inv_depth: Tensor
    """(F, h, w) inverse z-depth, 1/metres."""
    focal: Tensor
    """(1,) shared focal length, working-resolution pixels."""


@dataclass(frozen=True)
class DenseConfig:
    """Options of the dense window problem."""

    flow_loss: RobustLoss = field(default_factory=lambda: RobustLoss("huber", 1.0))
    """Robust loss on flow residuals (pixels)."""
    prior_weight: float = 100.0
    """Weight of the depth-prior residual (rho / rho_prior - 1); 100 makes 10% depth error cost 1 px^2."""
    prior_loss: RobustLoss = field(default_factory=lambda: RobustLoss("huber", 1.0))
    """Robust loss on the weighted depth-prior residual."""
    optimize_focal: bool = True
    """Refine the shared focal length (else it is held fixed)."""
    min_inv_depth: float = 1e-4
    """Inverse depths are clamped to at least this after each step (1/metres)."""
    lm: LMConfig = field(default_factory=LMConfig)
    """Solver options."""


def grid_pixels(
    height: int, width: int, grid_h: int, grid_w: int, device: str | torch.device = "cpu"
) -> Tensor:
    """(grid_h * grid_w, 2) float64 working-resolution (u, v) of each low-resolution depth pixel."""
    ys = (torch.arange(grid_h, dtype=torch.float64, device=device) + 0.5) * (height / grid_h) - 0.5
    xs = (torch.arange(grid_w, dtype=torch.float64, device=device) + 0.5) * (width / grid_w) - 0.5
    v, u = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack((u.reshape(-1), v.reshape(-1)), dim=-1)


@dataclass(frozen=True)
class _Projected:
    rho: Tensor
    focal: Tensor
    x_ci: Tensor
    x_cj: Tensor
    r_ji: Tensor
    proj: PinholeProjection


class DenseDepthProblem:
    """Flow + depth-prior residuals over keyframes, some frames free and the rest fixed."""

    def __init__(
        self,
        image_size: tuple[int, int],
        principal: Tensor,
        correspondences: FlowCorrespondences,
        prior_inv_depth: Tensor,
        free_frames: Tensor,
        config: DenseConfig,
    ) -> None:
        num_frames, grid_h, grid_w = prior_inv_depth.shape
        self.config = config
        self.num_frames = num_frames
        self.grid_shape = (grid_h, grid_w)
        device = prior_inv_depth.device
        dtype = prior_inv_depth.dtype
        self.principal = principal.to(device=device, dtype=dtype)
        self.grid_uv = grid_pixels(image_size[0], image_size[1], grid_h, grid_w, device).to(dtype)
        pixels = grid_h * grid_w
        free_ids = torch.nonzero(free_frames).squeeze(1)
        self.free_frames = free_ids
        rank = torch.full((num_frames,), -1, dtype=torch.int64, device=device)
        rank[free_ids] = torch.arange(free_ids.shape[0], device=device)
        num_free = int(free_ids.shape[0])
        self._num_free = num_free
        corr = correspondences
        involved = (rank[corr.source_frame] >= 0) | (rank[corr.target_frame] >= 0)
        if not bool(involved.any()):
            raise BundleAdjustmentError(
                "no flow correspondence touches the free frames: their poses are unconstrained"
            )
        self._src = corr.source_frame[involved]
        self._pix = corr.source_pixel[involved]
        self._dst = corr.target_frame[involved]
        self._target = corr.target_uv[involved].to(dtype)
        self._sqrt_w = corr.weight[involved].to(dtype).clamp_min(0).sqrt()
        src_rank, dst_rank = rank[self._src], rank[self._dst]
        offsets = torch.arange(POSE_DIM, device=device)
        pose_i = torch.where(src_rank[:, None] >= 0, src_rank[:, None] * POSE_DIM + offsets, -1)
        pose_j = torch.where(dst_rank[:, None] >= 0, dst_rank[:, None] * POSE_DIM + offsets, -1)
        focal_col = torch.full_like(pose_i[:, :1], num_free * POSE_DIM if config.optimize_focal else -1)
        self._flow_columns = torch.cat((pose_i, pose_j, focal_col), dim=1)
        self._flow_points = torch.where(src_rank >= 0, src_rank * pixels + self._pix, -1)
        prior = prior_inv_depth.reshape(num_frames, pixels)[free_ids].reshape(-1)
        valid = prior > 0
        self._prior_points = torch.nonzero(valid).squeeze(1)
        self._prior = prior[valid]

    @property
    def num_camera_parameters(self) -> int:
        """6 per free keyframe, plus 1 for the focal when refined."""
        return self._num_free * POSE_DIM + int(self.config.optimize_focal)

    @property
    def num_points(self) -> int:
        """One inverse depth per low-resolution pixel of each free keyframe."""
        return self._num_free * self.grid_shape[0] * self.grid_shape[1]

    @property
    def point_dim(self) -> int:
        """1x1 inverse-depth blocks."""
        return 1

    @property
    def camera_block_size(self) -> int:
        """Pose blocks (single columns when the focal is refined too)."""
        return 1 if self.config.optimize_focal else POSE_DIM

    def _project(self, state: DenseState) -> _Projected:
        pixels = self.grid_shape[0] * self.grid_shape[1]
        rho = state.inv_depth.reshape(self.num_frames, pixels)[self._src, self._pix]
        focal = state.focal.expand(rho.shape[0])
        uv = self.grid_uv[self._pix]
        x_ci = (
            torch.cat(((uv - self.principal) / focal[:, None], torch.ones_like(rho)[:, None]), dim=1)
            / rho[:, None]
        )
        r_i, t_i = state.c2w[self._src, :3, :3], state.c2w[self._src, :3, 3]
        r_j, t_j = state.c2w[self._dst, :3, :3], state.c2w[self._dst, :3, 3]
        r_ji = small_matmul(r_j.transpose(1, 2), r_i)
        x_cj = small_matvec(r_ji, x_ci) + small_matvec(r_j.transpose(1, 2), t_i - t_j)
        proj = pinhole_project(x_cj, focal, self.principal.expand(rho.shape[0], 2))
        return _Projected(rho, focal, x_ci, x_cj, r_ji, proj)

    def flow_rmse(self, state: DenseState) -> float:
        """RMS of the unweighted flow errors (pixels) over correspondences with positive weight."""
        errors = self._project(state).proj.uv - self._target
        used = self._sqrt_w > 0
        return float(errors[used].pow(2).mean().sqrt()) if bool(used.any()) else 0.0

    def evaluate(self, state: DenseState, jacobians: bool) -> list[ResidualTerm]:
        """Flow term (N, 2) and depth-prior term (N', 1)."""
        pixels = self.grid_shape[0] * self.grid_shape[1]
        geo = self._project(state)
        rho, focal, x_ci, x_cj, proj = geo.rho, geo.focal, geo.x_ci, geo.x_cj, geo.proj
        sw = self._sqrt_w[:, None]
        flow_r = sw * (proj.uv - self._target)
        free_rho = state.inv_depth.reshape(-1, pixels)[self.free_frames].reshape(-1)
        prior_r = (self.config.prior_weight**0.5) * (free_rho[self._prior_points] / self._prior - 1)[:, None]
        if not jacobians:
            return [
                ResidualTerm(
                    flow_r, self.config.flow_loss, self._flow_columns, None, self._flow_points, None
                ),
                ResidualTerm(prior_r, self.config.prior_loss, None, None, self._prior_points, None),
            ]
        d_xcj = sw[:, :, None] * proj.d_point  # (N, 2, 3)
        d_pose_j = torch.cat((-d_xcj, small_matmul(d_xcj, skew(x_cj))), dim=-1)
        d_xci = small_matmul(d_xcj, geo.r_ji)
        d_pose_i = torch.cat((d_xci, -small_matmul(d_xci, skew(x_ci))), dim=-1)
        d_rho = small_matvec(d_xci, -x_ci / rho[:, None])[:, :, None]
        dxci_df = torch.cat((-x_ci[:, :2] / focal[:, None], torch.zeros_like(rho)[:, None]), dim=1)
        d_focal = small_matvec(d_xci, dxci_df) + sw * proj.d_focal
        flow_jac = torch.cat((d_pose_i, d_pose_j, d_focal[:, :, None]), dim=-1)
        prior_jac = ((self.config.prior_weight**0.5) / self._prior)[:, None, None]
        return [
            ResidualTerm(
                flow_r, self.config.flow_loss, self._flow_columns, flow_jac, self._flow_points, d_rho
            ),
            ResidualTerm(prior_r, self.config.prior_loss, None, None, self._prior_points, prior_jac),
        ]

    def retract(self, state: DenseState, camera_step: Tensor, point_step: Tensor) -> DenseState:
        """c2w <- c2w exp(xi) for free frames, additive inverse depth (clamped) and focal."""
        num_free = self._num_free
        c2w = state.c2w.clone()
        poses = camera_step[: num_free * POSE_DIM].reshape(num_free, POSE_DIM)
        c2w[self.free_frames] = state.c2w[self.free_frames] @ se3_exp(poses)
        inv_depth = state.inv_depth.clone()
        pixels = self.grid_shape[0] * self.grid_shape[1]
        flat = inv_depth.reshape(self.num_frames, pixels)
        flat[self.free_frames] = (flat[self.free_frames] + point_step.reshape(num_free, pixels)).clamp_min(
            self.config.min_inv_depth
        )
        focal = (
            state.focal + camera_step[num_free * POSE_DIM :] if self.config.optimize_focal else state.focal
        )
        return DenseState(c2w, inv_depth, focal)

    def parameter_norm(self, state: DenseState) -> float:
        """Norm of translations, inverse depths and focal of the free frames."""
        t = state.c2w[self.free_frames, :3, 3]
        rho = state.inv_depth[self.free_frames]
        return float(torch.sqrt((t * t).sum() + (rho * rho).sum() + (state.focal * state.focal).sum()))


@dataclass(frozen=True)
class DenseWindowResult:
    """Refined state (all frames; fixed ones unchanged) and the solver record."""

    state: DenseState
    """Poses, inverse depths and focal after the solve."""
    solve: LMResult[DenseState]
    """Costs, termination and per-iteration log."""
    reprojection_rmse_px: float
    """RMS of the unweighted flow residuals over the window's correspondences, pixels."""


def _validate(state: DenseState, correspondences: FlowCorrespondences, prior_inv_depth: Tensor) -> None:
    num_frames = state.c2w.shape[0]
    if state.c2w.shape != (num_frames, 4, 4):
        raise BundleAdjustmentError(f"c2w must be (F, 4, 4), got {tuple(state.c2w.shape)}")
    if state.inv_depth.ndim != 3 or state.inv_depth.shape[0] != num_frames:
        raise BundleAdjustmentError(f"inv_depth must be (F, h, w) with F={num_frames}")
    if prior_inv_depth.shape != state.inv_depth.shape:
        raise BundleAdjustmentError("prior_inv_depth must have the shape of inv_depth")
    if state.focal.shape != (1,) or not float(state.focal) > 0:
        raise BundleAdjustmentError("focal must be a positive (1,) tensor")
    c = correspondences
    m = c.source_frame.shape[0]
    if any(x.shape[0] != m for x in (c.source_pixel, c.target_frame, c.target_uv, c.weight)):
        raise BundleAdjustmentError("correspondence tensors must all have M rows")
    if m and (
        int(c.source_frame.min()) < 0 or int(max(c.source_frame.max(), c.target_frame.max())) >= num_frames
    ):
        raise BundleAdjustmentError("correspondence frame index out of range")
    if m and bool((c.source_frame == c.target_frame).any()):
        raise BundleAdjustmentError("a correspondence must join two different keyframes")
    pixels = state.inv_depth.shape[1] * state.inv_depth.shape[2]
    if m and (int(c.source_pixel.min()) < 0 or int(c.source_pixel.max()) >= pixels):
        raise BundleAdjustmentError("correspondence source pixel out of range")
    if bool((state.inv_depth <= 0).any()):
        raise BundleAdjustmentError("inverse depths must be positive")


def solve_window(
    state: DenseState,
    correspondences: FlowCorrespondences,
    prior_inv_depth: Tensor,
    free_frames: Sequence[int] | Tensor,
    image_size: tuple[int, int],
    principal: Tensor,
    config: DenseConfig | None = None,
) -> DenseWindowResult:
    """Refine poses and depth of ``free_frames`` (and the focal) with all other keyframes fixed.

    ``prior_inv_depth`` (F, h, w) holds the prior inverse depth (0 = no prior); ``image_size`` is the
    working resolution (H, W); ``principal`` (2,) the fixed principal point. Correspondences between
    two fixed frames are ignored. Returns the full state (fixed frames unchanged).
    """
    cfg = config or DenseConfig()
    _validate(state, correspondences, prior_inv_depth)
    num_frames = state.c2w.shape[0]
    free = torch.zeros(num_frames, dtype=torch.bool, device=state.c2w.device)
    index = torch.as_tensor(free_frames, dtype=torch.int64, device=state.c2w.device)
    if index.numel() == 0:
        raise BundleAdjustmentError("solve_window needs at least one free frame")
    if int(index.min()) < 0 or int(index.max()) >= num_frames:
        raise BundleAdjustmentError(f"free frame index out of range 0..{num_frames - 1}")
    free[index] = True
    problem = DenseDepthProblem(image_size, principal, correspondences, prior_inv_depth, free, cfg)
    result = solve_lm(problem, state, cfg.lm)
    return DenseWindowResult(result.state, result, problem.flow_rmse(result.state))
