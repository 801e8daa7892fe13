"""Levenberg-Marquardt trust-region solver (Ceres' strategy) over a LeastSquaresProblem.

Each iteration solves (J'J + D/radius) step = -J'r with D = clamp(diag(J'J)) through the Schur
complement, evaluates the candidate and accepts it when the actual/model decrease ratio rho
exceeds ``min_relative_decrease``. Radius update (Ceres / Nielsen): on success radius /=
max(1/3, 1 - (2 rho - 1)^3) and the decrease factor resets to 2; on failure radius /= factor and
factor doubles. Stops on function tolerance (|dcost| <= ftol * cost), gradient tolerance
(max |J'r| <= gtol), parameter tolerance (|step| <= ptol (|x| + ptol)), a too-small radius, or
max_iterations. Logs one record per iteration, accepted or not.

The iteration itself runs on the device (``dv4d.ba.iteration``): the host reads one small vector
of statistics per iteration, decides whether to stop, and asks for a new linearisation after an
accepted step. On CUDA the iteration's kernels are replayed from CUDA graphs
(``dv4d.ba.cuda_graph``, ``LMConfig.cuda_graphs``); the arithmetic is the same on every device.
"""

import contextlib
import time
from dataclasses import dataclass, field
from typing import Generic, Literal, Protocol

import torch

from dv4d.ba.cuda_graph import CudaGraphIterations
from dv4d.ba.iteration import DeviceIteration, Stat
from dv4d.ba.lm_config import LMConfig
from dv4d.ba.problem import LeastSquaresProblem, StateT

__all__ = ["LMConfig", "LMIteration", "LMResult", "solve_lm"]


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
    cuda_graphs: bool = False
    """Whether iterations were replayed from CUDA graphs (``LMConfig.cuda_graphs``)."""

    @property
    def num_successful_steps(self) -> int:
        """Number of accepted steps."""
        return sum(it.accepted for it in self.iterations)


class _Iterations(Protocol):
    def relinearise(self) -> None: ...

    def step(self) -> list[float]: ...


class _EagerIterations(Generic[StateT]):
    """The two halves of an iteration called directly (CPU, or CUDA without graphs)."""

    def __init__(self, iteration: DeviceIteration[StateT]) -> None:
        self.iteration = iteration
        self.lin = iteration.linearise()
        iteration.prepare(self.lin)

    def relinearise(self) -> None:
        self.lin = self.iteration.linearise()
        self.iteration.update_parameter_norm()

    def step(self) -> list[float]:
        values: list[float] = self.iteration.step(self.lin).tolist()
        return values


def _record(it: int, stats: list[float], start: float) -> LMIteration:
    return LMIteration(
        it,
        stats[Stat.COST],
        stats[Stat.COST_CHANGE],
        stats[Stat.STEP_NORM],
        stats[Stat.GRADIENT_MAX],
        stats[Stat.RADIUS],
        stats[Stat.RHO],
        bool(stats[Stat.ACCEPTED]),
        int(stats[Stat.LINEAR_ITERATIONS]),
        time.perf_counter() - start,
    )


def _stop_reason(stats: list[float], cfg: LMConfig) -> str:
    """Why to stop after an iteration with these statistics ("" to go on)."""
    if stats[Stat.OK] and stats[Stat.SMALL_STEP]:
        return "parameter_tolerance"
    if stats[Stat.OK] and abs(stats[Stat.COST_CHANGE]) <= cfg.function_tolerance * stats[Stat.PREVIOUS_COST]:
        return "function_tolerance"
    if stats[Stat.NEXT_RADIUS] < cfg.min_trust_region_radius:
        return "min_trust_region_radius"
    return ""


def solve_lm(
    problem: LeastSquaresProblem[StateT], state: StateT, config: LMConfig | None = None
) -> LMResult[StateT]:
    """Minimise problem's robust cost from state with Levenberg-Marquardt; returns the final state and log.

    ``state`` must be a dataclass whose fields are tensors; it is not modified (the solver works on
    a copy).
    """
    cfg = config or LMConfig()
    solver: Literal["dense", "pcg"]
    if cfg.linear_solver == "auto":
        solver = "dense" if problem.num_camera_parameters <= cfg.dense_max_camera_parameters else "pcg"
    else:
        solver = cfg.linear_solver
    start = time.perf_counter()
    iteration = DeviceIteration(problem, state, cfg, solver)
    device = iteration.cost.device
    use_graphs = cfg.cuda_graphs and device.type == "cuda" and solver == "dense"
    stream = torch.cuda.Stream(device) if use_graphs else None
    if stream is not None:
        stream.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(stream) if stream is not None else contextlib.nullcontext():
        eager = _EagerIterations(iteration)
        runner: _Iterations = eager
        initial_cost = cost = float(iteration.cost)
        log: list[LMIteration] = []
        termination = "max_iterations"
        if cfg.max_iterations == 0 and float(eager.lin.gradient_max) <= cfg.gradient_tolerance:
            termination = "gradient_tolerance"
        for it in range(1, cfg.max_iterations + 1):
            stats = runner.step()
            if stats[Stat.GRADIENT_MAX] <= cfg.gradient_tolerance:
                termination = "gradient_tolerance"
                break
            log.append(_record(it, stats, start))
            cost = stats[Stat.COST]
            stop = _stop_reason(stats, cfg)
            if stop:
                termination = stop
                break
            if it == cfg.max_iterations:
                break
            if stream is not None and runner is eager:
                runner = CudaGraphIterations(iteration, stream)
            elif stats[Stat.ACCEPTED]:
                runner.relinearise()
    if stream is not None:
        torch.cuda.current_stream(device).wait_stream(stream)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return LMResult(
        iteration.state,
        initial_cost,
        cost,
        termination,
        time.perf_counter() - start,
        solver,
        log,
        runner is not eager,
    )
