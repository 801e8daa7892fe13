"""Synthetic problems with known truth: BAL (tests, scaling benchmark) and dense flow-depth scenes.

BAL: cameras sit on a ring of radius 6 around the origin (heights varying) looking at it; points fill
the cube [-1, 1]^3; each point is seen by ``observations_per_point`` distinct cameras spread
around the ring. Observations are exact projections of the truth plus Gaussian pixel noise; the
returned start is the truth with perturbed cameras and points.

Dense: keyframes translating sideways and forward with small random rotations over a smooth
depth surface about 4 m away; exact flow correspondences between every ordered pair of keyframes
for every low-resolution depth pixel that lands inside the other image.
"""

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from dv4d.ba.bal import BalData
from dv4d.ba.cameras import bal_project
from dv4d.ba.dense import DenseState, FlowCorrespondences, grid_pixels
from dv4d.ba.errors import BundleAdjustmentError
from dv4d.ba.lie import se3_exp, se3_inverse, se3_transform, so3_log


@dataclass(frozen=True)
class SyntheticBal:
    """A synthetic problem: ``start`` holds perturbed parameters, ``truth`` the true ones."""

    start: BalData
    """Problem to solve: noisy observations, perturbed cameras and points."""
    truth: BalData
    """Same observations with the true cameras and points."""
    noise_px: float
    """Standard deviation of the observation noise (BAL units)."""


def make_synthetic_bal(
    num_cameras: int,
    num_points: int,
    observations_per_point: int,
    noise_px: float = 0.5,
    camera_perturbation: float = 0.01,
    point_perturbation: float = 0.05,
    seed: int = 0,
) -> SyntheticBal:
    """Build a synthetic BAL problem; perturbations are standard deviations (radians / scene units)."""
    if not 2 <= observations_per_point <= num_cameras:
        raise BundleAdjustmentError("observations_per_point must be between 2 and num_cameras")
    gen = torch.Generator().manual_seed(seed)
    dt = torch.float64
    angle = 2 * math.pi * torch.arange(num_cameras, dtype=dt) / num_cameras
    height = 1.5 * torch.sin(3 * angle)
    centres = torch.stack((6 * torch.cos(angle), height, 6 * torch.sin(angle)), dim=-1)
    forward = -centres / centres.norm(dim=-1, keepdim=True)
    up = torch.tensor([0.0, 1.0, 0.0], dtype=dt).expand_as(forward)
    right = torch.linalg.cross(up, forward, dim=-1)
    right = right / right.norm(dim=-1, keepdim=True)
    down = torch.linalg.cross(forward, right, dim=-1)
    # BAL looks down -z: camera axes (right, -down, -forward) as rows of world-to-camera R.
    rot = torch.stack((right, -down, -forward), dim=-2)
    trans = -(rot @ centres[:, :, None])[:, :, 0]
    cameras = torch.zeros(num_cameras, 9, dtype=dt)
    cameras[:, :3] = so3_log(rot)
    cameras[:, 3:6] = trans
    cameras[:, 6] = 500.0
    cameras[:, 7] = -0.05
    cameras[:, 8] = 0.01
    points = 2 * torch.rand(num_points, 3, generator=gen, dtype=dt) - 1
    first = torch.randint(0, num_cameras, (num_points,), generator=gen)
    stride = max(1, num_cameras // observations_per_point)
    offsets = torch.arange(observations_per_point) * stride
    cam_idx = ((first[:, None] + offsets[None, :]) % num_cameras).reshape(-1)
    pt_idx = torch.arange(num_points).repeat_interleave(observations_per_point)
    clean = bal_project(cameras[cam_idx], points[pt_idx])
    obs = clean + noise_px * torch.randn(clean.shape, generator=gen, dtype=dt)
    cam_noise = torch.zeros_like(cameras)
    cam_noise[:, :3] = camera_perturbation * torch.randn(num_cameras, 3, generator=gen, dtype=dt)
    cam_noise[:, 3:6] = 5 * camera_perturbation * torch.randn(num_cameras, 3, generator=gen, dtype=dt)
    start_points = points + point_perturbation * torch.randn(points.shape, generator=gen, dtype=dt)
    name = f"synthetic-{num_cameras}-{num_points}"
    truth = BalData(name, cameras, points, cam_idx, pt_idx, obs)
    start = BalData(name, cameras + cam_noise, start_points, cam_idx, pt_idx, obs)
    return SyntheticBal(start, truth, noise_px)


@dataclass(frozen=True)
class SyntheticDenseScene:
    """A dense flow-depth scene with exact correspondences."""

    truth: DenseState
    """True poses (c2w), inverse depths and focal."""
    correspondences: FlowCorrespondences
    """Exact flow end points between every ordered keyframe pair (unit weights)."""
    image_size: tuple[int, int]
    """Working resolution (H, W)."""
    principal: Tensor
    """(2,) principal point ((W - 1) / 2, (H - 1) / 2)."""


def make_synthetic_dense_scene(
    num_frames: int = 4,
    image_size: tuple[int, int] = (48, 64),
    grid_size: tuple[int, int] = (12, 16),
    focal: float = 60.0,
    seed: int = 0,
) -> SyntheticDenseScene:
    """Build a dense scene (float64, CPU)."""
    dt = torch.float64
    gen = torch.Generator().manual_seed(seed)
    height, width = image_size
    grid_h, grid_w = grid_size
    principal = torch.tensor([(width - 1) / 2, (height - 1) / 2], dtype=dt)
    xi = torch.zeros(num_frames, 6, dtype=dt)
    xi[:, 0] = 0.15 * torch.arange(num_frames, dtype=dt)
    xi[:, 2] = 0.05 * torch.arange(num_frames, dtype=dt)
    xi[1:, 3:] = 0.03 * torch.randn(num_frames - 1, 3, generator=gen, dtype=dt)
    c2w = se3_exp(xi)
    ys, xs = torch.linspace(-1, 1, grid_h, dtype=dt), torch.linspace(-1, 1, grid_w, dtype=dt)
    yy, xx = torch.meshgrid(ys, xs, indexing="ij")
    depth = 4.0 + 0.8 * torch.sin(2 * xx) * torch.cos(1.5 * yy) + 0.5 * yy
    inv_depth = (1 / depth).expand(num_frames, grid_h, grid_w).clone()
    inv_depth = inv_depth * (1 + 0.05 * torch.randn(num_frames, grid_h, grid_w, generator=gen, dtype=dt))
    uv = grid_pixels(height, width, grid_h, grid_w)
    src, pix, dst, target = [], [], [], []
    for i in range(num_frames):
        rho = inv_depth[i].reshape(-1)
        x_c = (
            torch.cat(((uv - principal) / focal, torch.ones(uv.shape[0], 1, dtype=dt)), dim=1) / rho[:, None]
        )
        x_w = se3_transform(c2w[i], x_c)
        for j in range(num_frames):
            if i == j:
                continue
            x_j = se3_transform(se3_inverse(c2w[j]), x_w)
            proj = focal * x_j[:, :2] / x_j[:, 2:] + principal
            inside = (x_j[:, 2] > 0) & (proj[:, 0] > 0) & (proj[:, 0] < width - 1)
            inside &= (proj[:, 1] > 0) & (proj[:, 1] < height - 1)
            k = torch.nonzero(inside).squeeze(1)
            src.append(torch.full_like(k, i))
            pix.append(k)
            dst.append(torch.full_like(k, j))
            target.append(proj[k])
    weights = torch.ones(sum(x.shape[0] for x in src), dtype=dt)
    corr = FlowCorrespondences(torch.cat(src), torch.cat(pix), torch.cat(dst), torch.cat(target), weights)
    truth = DenseState(c2w, inv_depth, torch.tensor([focal], dtype=dt))
    return SyntheticDenseScene(truth, corr, image_size, principal)


def perturb_dense_state(
    truth: DenseState, frames: list[int], focal_factor: float = 1.05, seed: int = 1
) -> DenseState:
    """Truth with the given frames' poses (5 cm, ~1 degree) and inverse depths (10%) perturbed."""
    dt = truth.c2w.dtype
    gen = torch.Generator().manual_seed(seed)
    c2w = truth.c2w.clone()
    noise = torch.zeros(len(frames), 6, dtype=dt)
    noise[:, :3] = 0.05 * torch.randn(len(frames), 3, generator=gen, dtype=dt)
    noise[:, 3:] = 0.02 * torch.randn(len(frames), 3, generator=gen, dtype=dt)
    c2w[frames] = c2w[frames] @ se3_exp(noise)
    inv_depth = truth.inv_depth.clone()
    shape = (len(frames), *truth.inv_depth.shape[1:])
    inv_depth[frames] *= 1 + 0.1 * torch.randn(shape, generator=gen, dtype=dt)
    return DenseState(c2w, inv_depth, truth.focal * focal_factor)
