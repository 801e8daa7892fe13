"""Dense flow-depth window problem: Jacobians by finite differences through retract, truth recovery."""

import math

import pytest
import torch

from dv4d.ba.dense import DenseConfig, DenseDepthProblem, DenseState, FlowCorrespondences, solve_window
from dv4d.ba.errors import BundleAdjustmentError
from dv4d.ba.synthetic import make_synthetic_dense_scene, perturb_dense_state

DT = torch.float64
H, W = 48, 64
FOCAL = 60.0
PRINCIPAL = torch.tensor([(W - 1) / 2, (H - 1) / 2], dtype=DT)


def _scene(num_frames: int = 4, seed: int = 0) -> tuple[DenseState, FlowCorrespondences, torch.Tensor]:
    """True state, exact correspondences and the true inverse depth (used as the prior)."""
    scene = make_synthetic_dense_scene(num_frames, (H, W), (12, 16), FOCAL, seed)
    return scene.truth, scene.correspondences, scene.truth.inv_depth.clone()


def _rotation_error_deg(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    rel = a[:, :3, :3].transpose(1, 2) @ b[:, :3, :3]
    cos = ((rel.diagonal(dim1=1, dim2=2).sum(-1) - 1) / 2).clamp(-1, 1)
    return torch.rad2deg(torch.arccos(cos))


def test_jacobians_match_finite_differences() -> None:
    truth, corr, prior = _scene(3)
    state = perturb_dense_state(truth, [1, 2])
    problem = DenseDepthProblem(
        (H, W), PRINCIPAL, corr, prior, torch.tensor([False, True, True]), DenseConfig()
    )
    terms = problem.evaluate(state, jacobians=True)
    flow, depth_prior = terms
    assert (
        flow.camera_jacobian is not None
        and flow.camera_columns is not None
        and flow.point_jacobian is not None
    )
    assert (
        flow.point_index is not None
        and depth_prior.point_jacobian is not None
        and depth_prior.point_index is not None
    )
    eps = 1e-6
    n_c, n_p = problem.num_camera_parameters, problem.num_points
    base = [t.residuals for t in terms]
    for col in [0, 3, 5, 6, 10, n_c - 1]:
        step = torch.zeros(n_c, dtype=DT)
        step[col] = eps
        moved = problem.evaluate(problem.retract(state, step, torch.zeros(n_p, 1, dtype=DT)), jacobians=False)
        numeric = (moved[0].residuals - base[0]) / eps
        analytic = (flow.camera_jacobian * (flow.camera_columns == col)[:, None, :]).sum(-1)
        assert torch.allclose(numeric, analytic, atol=1e-4 * (1 + analytic.abs().max()))
    for point in [5, 100, n_p - 7]:
        step_p = torch.zeros(n_p, 1, dtype=DT)
        step_p[point] = eps
        moved = problem.evaluate(problem.retract(state, torch.zeros(n_c, dtype=DT), step_p), jacobians=False)
        numeric = (moved[0].residuals - base[0]) / eps
        analytic = flow.point_jacobian[:, :, 0] * (flow.point_index == point)[:, None]
        assert torch.allclose(numeric, analytic, atol=1e-4 * (1 + analytic.abs().max()))
        numeric_prior = (moved[1].residuals - base[1]) / eps
        analytic_prior = depth_prior.point_jacobian[:, :, 0] * (depth_prior.point_index == point)[:, None]
        assert torch.allclose(numeric_prior, analytic_prior, atol=1e-4)


def test_window_recovers_truth_with_fixed_first_frame() -> None:
    truth, corr, prior = _scene(4)
    free = [1, 2, 3]
    start = perturb_dense_state(truth, free)
    result = solve_window(start, corr, prior * 1.0, free, (H, W), PRINCIPAL)
    state = result.state
    assert torch.equal(state.c2w[0], truth.c2w[0]) and torch.equal(state.inv_depth[0], truth.inv_depth[0])
    assert result.solve.final_cost < 1e-3 * result.solve.initial_cost
    assert result.reprojection_rmse_px < 1e-3
    assert float(state.focal) == pytest.approx(FOCAL, rel=1e-4)
    assert (state.c2w[:, :3, 3] - truth.c2w[:, :3, 3]).norm(dim=-1).max() < 1e-3
    assert _rotation_error_deg(state.c2w, truth.c2w).max() < 0.01
    assert ((state.inv_depth - truth.inv_depth).abs() / truth.inv_depth).max() < 1e-3


def test_window_subset_keeps_other_frames_fixed() -> None:
    truth, corr, prior = _scene(4, seed=2)
    moved = perturb_dense_state(truth, [2])
    start = DenseState(moved.c2w, moved.inv_depth, truth.focal)  # the focal is held fixed: start it true
    cfg = DenseConfig(optimize_focal=False)
    result = solve_window(start, corr, prior, [2], (H, W), PRINCIPAL, cfg)
    for k in (0, 1, 3):
        assert torch.equal(result.state.c2w[k], start.c2w[k])
        assert torch.equal(result.state.inv_depth[k], start.inv_depth[k])
    assert torch.equal(result.state.focal, start.focal)
    assert _rotation_error_deg(result.state.c2w[2:3], truth.c2w[2:3]).max() < 0.01
    assert (result.state.c2w[2, :3, 3] - truth.c2w[2, :3, 3]).norm() < 1e-3


def test_noisy_prior_only_softly_constrains_depth() -> None:
    truth, corr, prior = _scene(3, seed=3)
    gen = torch.Generator().manual_seed(9)
    noisy_prior = prior * (1 + 0.1 * torch.randn(prior.shape, generator=gen, dtype=DT))
    start = perturb_dense_state(truth, [1, 2])
    result = solve_window(start, corr, noisy_prior, [1, 2], (H, W), PRINCIPAL, DenseConfig(prior_weight=1.0))
    depth_err = ((result.state.inv_depth[1:] - truth.inv_depth[1:]).abs() / truth.inv_depth[1:]).median()
    prior_err = ((noisy_prior[1:] - truth.inv_depth[1:]).abs() / truth.inv_depth[1:]).median()
    assert depth_err < 0.5 * prior_err
    assert math.isfinite(result.reprojection_rmse_px) and result.reprojection_rmse_px < 0.5


def test_bad_inputs() -> None:
    truth, corr, prior = _scene(3)
    with pytest.raises(BundleAdjustmentError, match="free frame"):
        solve_window(truth, corr, prior, [5], (H, W), PRINCIPAL)
    with pytest.raises(BundleAdjustmentError, match="at least one"):
        solve_window(truth, corr, prior, [], (H, W), PRINCIPAL)
    same = FlowCorrespondences(
        corr.source_frame, corr.source_pixel, corr.source_frame, corr.target_uv, corr.weight
    )
    with pytest.raises(BundleAdjustmentError, match="different"):
        solve_window(truth, same, prior, [1], (H, W), PRINCIPAL)
    with pytest.raises(BundleAdjustmentError, match="shape"):
        solve_window(truth, corr, prior[:, :-1], [1], (H, W), PRINCIPAL)
    only_fixed = FlowCorrespondences(
        corr.source_frame[:0],
        corr.source_pixel[:0],
        corr.target_frame[:0],
        corr.target_uv[:0],
        corr.weight[:0],
    )
    with pytest.raises(BundleAdjustmentError, match="unconstrained"):
        solve_window(truth, only_fixed, prior, [1], (H, W), PRINCIPAL)
