"""Levenberg-Marquardt trust-region solver (Ceres' strategy) over a LeastSquaresProblem.

Each iteration solves (J'J + D/radius) step = -J'r with D = clamp(diag(J'J)) through the Schur
complement, evaluates the candidate and accepts it when the actual/model decrease ratio rho
exceeds ``min_relative_decrease``. Radius update (Ceres / Nielsen): on success radius /=
max(1/3, 1 - (2 rho - 1)^3) and the decrease factor resets to 2; on failure radius /= factor and
factor doubles. Stops on function tolerance (|dcost| <= ftol * cost), gradient tolerance
(max |J'r| <= gtol), parameter tolerance (|step| <= ptol (|x| + ptol)), a too-small radius, or
max_iterations. Logs one record per iteration, accepted or not.
"""

import time
from dataclasses import dataclass, field
from typing import Generic, Literal

import torch

from dv4d.ba.errors import BundleAdjustmentError
from dv4d.ba.normal_eqs import (
    NormalEquations,
    build_normal_equations,
    linearised_change,
    reweight,
    robust_cost,
)
from dv4d.ba.problem import LeastSquaresProblem, StateT
from dv4d.ba.schur import Damping, SchurStructure, Step, build_schur_structure, solve_dense, solve_pcg


@dataclass(frozen=True)
class LMConfig:
    """Levenberg-Marquardt options; defaults are Ceres' defaults."""

    max_iterations: int = 50
    """Maximum number of iterations (accepted or rejected steps)."""
    function_tolerance: float = 1e-6
    """Stop when |cost change| <= function_tolerance * cost."""
    gradient_tolerance: float = 1e-10
    """Stop when the max-norm of the gradient J'r is at most this."""
    parameter_tolerance: float = 1e-8
    """Stop when |step| <= parameter_tolerance * (|x| + parameter_tolerance)."""
    initial_trust_region_radius: float = 1e4
    """Initial radius (the damping is its inverse)."""
    max_trust_region_radius: float = 1e16
    """Upper bound on the radius."""
    min_trust_region_radius: float = 1e-32
    """Stop when the radius falls below this."""
    min_relative_decrease: float = 1e-3
    """Accept a step when actual/model decrease exceeds this."""
    min_diagonal: float = 1e-6
    """Lower clamp of diag(J'J) in the damping."""
    max_diagonal: float = 1e32
    """Upper clamp of diag(J'J) in the damping."""
    linear_solver: Literal["auto", "dense", "pcg"] = "auto"
    """Reduced camera system: dense Cholesky, PCG, or auto (dense up to dense_max_camera_parameters)."""
    dense_max_camera_parameters: int = 3000
    """Largest camera side solved densely under "auto"."""
    pcg_max_iterations: int = 500
    """Conjugate-gradient iteration cap per step."""
    pcg_tolerance: float = 1e-8
    """Relative residual at which conjugate gradients stop."""

    def __post_init__(self) -> None:
        if self.max_iterations < 0:
            raise BundleAdjustmentError(f"max_iterations must be >= 0, got {self.max_iterations}")
        if self.linear_solver not in ("auto", "dense", "pcg"):
            raise BundleAdjustmentError(f"unknown linear solver {self.linear_solver!r}")


@dataclass(frozen=True)
class LMIteration:
    """One iteration of the solver."""

    iteration: int
    """1-based iteration number."""
    cost: float
    """Cost after the iteration (unchanged when the step was rejected)."""
    cost_change: float
    """Actual decrease of the candidate step (negative when it increased the cost)."""
    step_norm: float
    """Euclidean norm of the step (camera and point parts together)."""
    gradient_max_norm: float
    """Max-norm of J'r at the linearisation point."""
    trust_region_radius: float
    """Radius used for this step (damping = 1 / radius)."""
    relative_decrease: float
    """Actual / model decrease (nan when the linear solve failed)."""
    accepted: bool
    """Whether the step was accepted."""
    linear_solver_iterations: int
    """Conjugate-gradient iterations (0 for dense Cholesky)."""
    seconds: float
    """Wall time since the start of the solve, seconds."""


@dataclass(frozen=True)
class LMResult(Generic[StateT]):
    """Outcome of a solve."""

    state: StateT
    """Optimised parameters."""
    initial_cost: float
    """Cost 0.5 * sum rho(||r||^2) at the start."""
    final_cost: float
    """Cost at the returned state."""
    termination: str
    """Why the solver stopped: function_tolerance, gradient_tolerance, parameter_tolerance,
    min_trust_region_radius, max_iterations or no_residuals."""
    seconds: float
    """Wall time of the solve, seconds (CUDA synchronised)."""
    linear_solver: str
    """"dense" or "pcg"."""
    iterations: list[LMIteration] = field(default_factory=list)
    """Per-iteration log."""

    @property
    def num_successful_steps(self) -> int:
        """Number of accepted steps."""
        return sum(it.accepted for it in self.iterations)


def _gradient_max(ne: NormalEquations) -> float:
    gc = ne.g_camera.abs().max() if ne.g_camera.numel() else ne.g_camera.new_zeros(())
    gp = ne.g_point.abs().max() if ne.g_point.numel() else ne.g_point.new_zeros(())
    return float(torch.maximum(gc, gp))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def solve_lm(
    problem: LeastSquaresProblem[StateT], state: StateT, config: LMConfig | None = None
) -> LMResult[StateT]:
    """Minimise problem's robust cost from state with Levenberg-Marquardt; returns the final state and log."""
    cfg = config or LMConfig()
    n_c, num_p, d = problem.num_camera_parameters, problem.num_points, problem.point_dim
    solver = cfg.linear_solver
    if solver == "auto":
        solver = "dense" if n_c <= cfg.dense_max_camera_parameters else "pcg"
    start = time.perf_counter()
    weighted = reweight(problem.evaluate(state, jacobians=True))
    device = weighted.cost.device
    cost = float(weighted.cost)
    initial_cost = cost
    ne = build_normal_equations(weighted.terms, n_c, num_p, d)
    structure: SchurStructure | None = build_schur_structure(ne) if solver == "dense" else None
    gradient_max = _gradient_max(ne)
    radius = cfg.initial_trust_region_radius
    decrease_factor = 2.0
    log: list[LMIteration] = []
    termination = "max_iterations"
    if gradient_max <= cfg.gradient_tolerance:
        termination = "gradient_tolerance"
    for it in range(1, cfg.max_iterations + 1 if termination == "max_iterations" else 1):
        damping = Damping(1 / radius, cfg.min_diagonal, cfg.max_diagonal)
        step: Step
        if structure is not None:
            step = solve_dense(ne, structure, damping)
        else:
            step = solve_pcg(
                ne, damping, problem.camera_block_size, cfg.pcg_max_iterations, cfg.pcg_tolerance
            )
        step_norm = float(torch.sqrt((step.camera * step.camera).sum() + (step.point * step.point).sum()))
        cost_change, rho, accepted, stop = 0.0, float("nan"), False, ""
        small_step = step_norm <= cfg.parameter_tolerance * (
            problem.parameter_norm(state) + cfg.parameter_tolerance
        )
        if step.ok and small_step:
            stop = "parameter_tolerance"
        elif step.ok:
            model_change = float(linearised_change(weighted.terms, step.camera, step.point))
            candidate = problem.retract(state, step.camera, step.point)
            new_cost = float(robust_cost(problem.evaluate(candidate, jacobians=False)))
            cost_change = cost - new_cost
            rho = cost_change / model_change if model_change > 0 else -1.0
            accepted = rho > cfg.min_relative_decrease and cost_change > 0
            if abs(cost_change) <= cfg.function_tolerance * cost:
                stop = "function_tolerance"
            if accepted:
                state, cost = candidate, new_cost
        used_radius = radius
        if accepted:
            radius = min(cfg.max_trust_region_radius, radius / max(1 / 3, 1 - (2 * rho - 1) ** 3))
            decrease_factor = 2.0
        else:
            radius /= decrease_factor
            decrease_factor *= 2
        log.append(
            LMIteration(
                it,
                cost,
                cost_change,
                step_norm,
                gradient_max,
                used_radius,
                rho,
                accepted,
                step.iterations,
                time.perf_counter() - start,
            )
        )
        if not stop and radius < cfg.min_trust_region_radius:
            stop = "min_trust_region_radius"
        if not stop and accepted:
            weighted = reweight(problem.evaluate(state, jacobians=True))
            ne = build_normal_equations(weighted.terms, n_c, num_p, d)
            gradient_max = _gradient_max(ne)
            if gradient_max <= cfg.gradient_tolerance:
                stop = "gradient_tolerance"
        if stop:
            termination = stop
            break
    _sync(device)
    return LMResult(state, initial_cost, cost, termination, time.perf_counter() - start, solver, log)
