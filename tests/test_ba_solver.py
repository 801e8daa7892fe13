"""LM + Schur solver: synthetic truth recovery, Schur vs full dense solve, PCG, robust loss, BAL target."""

from pathlib import Path

import pytest
import torch

from dv4d.ba.bal import BalData, bal_cost, read_bal
from dv4d.ba.bal_problem import BalProblem, BalState
from dv4d.ba.dense import DenseConfig, solve_window
from dv4d.ba.errors import BundleAdjustmentError
from dv4d.ba.lm import LMConfig, solve_lm
from dv4d.ba.losses import RobustLoss
from dv4d.ba.normal_eqs import build_normal_equations, reweight
from dv4d.ba.schur import Damping, build_schur_structure, solve_dense, solve_pcg
from dv4d.ba.synthetic import make_synthetic_bal, make_synthetic_dense_scene, perturb_dense_state

BAL_DIR = Path(__file__).parents[1].parent / "shared" / "data" / "bal"


def _dense_reference(problem: BalProblem, lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Solve the damped normal equations of the full Jacobian densely (no Schur)."""
    term = problem.evaluate(problem.initial_state(), jacobians=True)[0]
    assert term.camera_columns is not None and term.camera_jacobian is not None
    assert term.point_index is not None and term.point_jacobian is not None
    n, n_c = term.residuals.shape[0], problem.num_camera_parameters
    jac = torch.zeros(n, 2, n_c + 3 * problem.num_points, dtype=torch.float64)
    rows = torch.arange(n)[:, None, None].expand(n, 2, 9)
    jac[
        rows, torch.arange(2)[None, :, None].expand(n, 2, 9), term.camera_columns[:, None, :].expand(n, 2, 9)
    ] = term.camera_jacobian
    pcols = (n_c + 3 * term.point_index[:, None] + torch.arange(3)).unsqueeze(1).expand(n, 2, 3)
    jac[rows[:, :, :3], torch.arange(2)[None, :, None].expand(n, 2, 3), pcols] = term.point_jacobian
    jac = jac.reshape(2 * n, -1)
    h = jac.T @ jac
    h = h + lam * torch.diag(h.diagonal().clamp(1e-6, 1e32))
    x = torch.linalg.solve(h, -(jac.T @ term.residuals.reshape(-1)))
    return x[:n_c], x[n_c:].reshape(-1, 3)


def test_schur_dense_and_pcg_equal_full_solve() -> None:
    problem = BalProblem(make_synthetic_bal(5, 40, 3, seed=1).start)
    weighted = reweight(problem.evaluate(problem.initial_state(), jacobians=True))
    ne = build_normal_equations(weighted.terms, problem.num_camera_parameters, problem.num_points, 3)
    damping = Damping(1e-3, 1e-6, 1e32)
    ref_c, ref_p = _dense_reference(problem, 1e-3)
    dense = solve_dense(ne, build_schur_structure(ne), damping)
    pcg = solve_pcg(ne, damping, 9, 500, 1e-12)
    assert dense.ok and pcg.ok and pcg.iterations > 0
    scale = ref_c.abs().max()
    assert torch.allclose(dense.camera, ref_c, atol=1e-8 * scale)
    assert torch.allclose(dense.point, ref_p, atol=1e-8 * scale)
    assert torch.allclose(pcg.camera, ref_c, atol=1e-6 * scale)
    assert torch.allclose(pcg.point, ref_p, atol=1e-6 * scale)


@pytest.mark.parametrize("solver", ["dense", "pcg"])
def test_synthetic_converges_to_noise_floor(solver: str) -> None:
    syn = make_synthetic_bal(8, 300, 4, noise_px=0.5, seed=2)
    problem = BalProblem(syn.start)
    result = solve_lm(problem, problem.initial_state(), LMConfig(linear_solver=solver))  # type: ignore[arg-type]
    n_obs, n_params = syn.start.num_observations, 8 * 9 + 300 * 3
    floor = 0.5 * syn.noise_px**2 * (2 * n_obs - n_params)
    assert result.initial_cost > 100 * floor
    assert result.final_cost < 1.2 * floor
    assert result.final_cost <= bal_cost(syn.truth) + 1e-6
    assert result.termination in ("function_tolerance", "gradient_tolerance", "parameter_tolerance")
    assert result.linear_solver == solver
    log = result.iterations
    assert log and all(it.seconds >= 0 and it.trust_region_radius > 0 for it in log)
    accepted = [it.cost for it in log if it.accepted]
    assert accepted == sorted(accepted, reverse=True)
    # Fitted residual RMS of a least-squares optimum: sigma * sqrt(1 - parameters / residuals).
    r = problem.evaluate(result.state, jacobians=False)[0].residuals
    expected = syn.noise_px * ((2 * n_obs - n_params) / (2 * n_obs)) ** 0.5
    assert float(r.pow(2).mean().sqrt()) == pytest.approx(expected, rel=0.1)


def test_robust_loss_resists_outliers() -> None:
    syn = make_synthetic_bal(6, 200, 4, noise_px=0.5, seed=3)
    obs = syn.start.observations.clone()
    obs[::25] += 80.0
    data = BalData(
        syn.start.name,
        syn.start.cameras,
        syn.start.points,
        syn.start.camera_index,
        syn.start.point_index,
        obs,
    )
    plain = solve_lm(BalProblem(data), BalProblem(data).initial_state())
    robust_problem = BalProblem(data, RobustLoss("cauchy", 2.0))
    robust = solve_lm(robust_problem, robust_problem.initial_state())
    inliers = torch.ones(obs.shape[0], dtype=torch.bool)
    inliers[::25] = False

    clean = BalProblem(syn.start)

    def inlier_rmse(state: BalState) -> float:
        r = clean.evaluate(state, jacobians=False)[0].residuals
        return float(r[inliers].pow(2).mean().sqrt())

    assert inlier_rmse(robust.state) < 0.6
    assert inlier_rmse(plain.state) > 2 * inlier_rmse(robust.state)


def test_max_iterations_and_config_validation() -> None:
    problem = BalProblem(make_synthetic_bal(4, 50, 3, seed=4).start)
    result = solve_lm(problem, problem.initial_state(), LMConfig(max_iterations=2))
    assert len(result.iterations) == 2 and result.termination == "max_iterations"
    zero = solve_lm(problem, problem.initial_state(), LMConfig(max_iterations=0))
    assert zero.final_cost == zero.initial_cost and not zero.iterations
    with pytest.raises(BundleAdjustmentError):
        LMConfig(max_iterations=-1)
    with pytest.raises(BundleAdjustmentError):
        LMConfig(linear_solver="qr")  # type: ignore[arg-type]


def test_trafalgar_matches_ceres() -> None:
    path = BAL_DIR / "problem-21-11315-pre.txt"
    if not path.is_file():
        pytest.skip(f"{path} not present")
    problem = BalProblem(read_bal(path))
    result = solve_lm(problem, problem.initial_state())
    assert result.initial_cost == pytest.approx(4.413239e6, rel=1e-6)
    assert result.final_cost == pytest.approx(3.037865e4, rel=1e-3)
    assert len(result.iterations) <= 10


def test_fixed_gauge_holds_first_camera_pose() -> None:
    syn = make_synthetic_bal(8, 300, 4, noise_px=0.5, seed=2)
    problem = BalProblem(syn.start)
    start = problem.initial_state()
    free = solve_lm(problem, start)
    fixed = solve_lm(problem, start, LMConfig(fixed_camera_parameters=tuple(range(6))))
    assert torch.equal(start.cameras, syn.start.cameras)  # the solver works on a copy
    assert torch.equal(fixed.state.cameras[0, :6], syn.start.cameras[0, :6])
    assert not torch.allclose(fixed.state.cameras[0, 6:], syn.start.cameras[0, 6:])
    assert (fixed.state.cameras[1:] - syn.start.cameras[1:]).abs().amax(1).min() > 0
    # With the damping alone the gauge drifts: the first camera moves too.
    assert (free.state.cameras[0, :6] - syn.start.cameras[0, :6]).abs().max() > 1e-4
    n_obs, n_params = syn.start.num_observations, 8 * 9 + 300 * 3
    floor = 0.5 * syn.noise_px**2 * (2 * n_obs - n_params)
    assert fixed.final_cost < 1.2 * floor
    assert fixed.final_cost == pytest.approx(free.final_cost, rel=1e-3)
    assert fixed.termination in ("function_tolerance", "gradient_tolerance", "parameter_tolerance")


def test_fixed_gauge_with_pcg_and_bad_indices() -> None:
    syn = make_synthetic_bal(5, 80, 3, seed=9)
    problem = BalProblem(syn.start)
    cfg = LMConfig(linear_solver="pcg", fixed_camera_parameters=(9, 10, 11, 12, 13, 14))
    result = solve_lm(problem, problem.initial_state(), cfg)
    assert torch.equal(result.state.cameras[1, :6], syn.start.cameras[1, :6])
    assert result.final_cost < 1e-2 * result.initial_cost
    with pytest.raises(BundleAdjustmentError, match="fixed_camera_parameters"):
        solve_lm(problem, problem.initial_state(), LMConfig(fixed_camera_parameters=(45,)))
    with pytest.raises(BundleAdjustmentError, match="repeated"):
        LMConfig(fixed_camera_parameters=(1, 1))


def test_state_must_be_a_dataclass_of_tensors() -> None:
    problem = BalProblem(make_synthetic_bal(3, 10, 2).start)
    with pytest.raises(BundleAdjustmentError, match="dataclass"):
        solve_lm(problem, (problem.data.cameras, problem.data.points))  # type: ignore[arg-type]


def test_cuda_graph_option_is_inert_on_cpu() -> None:
    problem = BalProblem(make_synthetic_bal(4, 60, 3, seed=4).start)
    a = solve_lm(problem, problem.initial_state(), LMConfig(cuda_graphs=True))
    b = solve_lm(problem, problem.initial_state(), LMConfig(cuda_graphs=False))
    assert not a.cuda_graphs and not b.cuda_graphs
    assert [it.cost for it in a.iterations] == [it.cost for it in b.iterations]


def test_fixed_gauge_in_dense_window() -> None:
    scene = make_synthetic_dense_scene(3)
    start = perturb_dense_state(scene.truth, [0, 1, 2])
    cfg = DenseConfig(lm=LMConfig(fixed_camera_parameters=tuple(range(6))))
    prior = scene.truth.inv_depth
    result = solve_window(
        start, scene.correspondences, prior, [0, 1, 2], scene.image_size, scene.principal, cfg
    )
    assert torch.equal(result.state.c2w[0], start.c2w[0])
    assert not torch.equal(result.state.c2w[1], start.c2w[1])
    assert not torch.equal(result.state.inv_depth[0], start.inv_depth[0])
    assert result.solve.final_cost < 1e-2 * result.solve.initial_cost
