"""One Levenberg-Marquardt iteration computed on the device, with no host synchronisation.

``DeviceIteration`` owns the solver's copy of the parameters and the solver scalars (cost, trust
region radius, decrease factor, parameter norm) as device tensors at fixed addresses, and offers
the two halves of an iteration:

- ``linearise()``: residuals and Jacobians at the current parameters, robust reweighting, normal
  equations and the gradient max-norm;
- ``step(lin)``: the damped step through the Schur complement, the model and actual cost
  decrease of the candidate, and the accept / reject decision with the radius update (Ceres /
  Nielsen rules), all as tensor operations: the parameters and scalars are updated in place and
  one small vector of statistics (``Stat``) is returned for the host to read once. With the dense
  solver a step is ``reduce`` (reduced camera system), ``solve_reduced`` (Cholesky) and
  ``finish_dense`` (back-substitution, candidate, decision).

Nothing here reads a value back to the host or changes a tensor size from one call to the next
(the problem's sizes and index tensors are fixed), so ``linearise``, ``reduce`` and
``finish_dense`` can be captured in CUDA graphs and replayed (``dv4d.ba.cuda_graph``); on CPU and
without graphs the same functions are simply called.
"""

import dataclasses
from dataclasses import dataclass
from enum import IntEnum
from typing import Any, Generic, Literal

import torch
from torch import Tensor

from dv4d.ba.errors import BundleAdjustmentError
from dv4d.ba.lm_config import LMConfig
from dv4d.ba.normal_eqs import (
    NormalEquations,
    build_normal_equations,
    linearised_change,
    reweight,
    robust_cost,
)
from dv4d.ba.problem import LeastSquaresProblem, ResidualTerm, StateT
from dv4d.ba.schur import (
    Damping,
    ReducedSystem,
    SchurStructure,
    Step,
    back_substitute,
    build_schur_structure,
    reduce_dense,
    solve_pcg,
    solve_reduced,
)


class Stat(IntEnum):
    """Positions in the statistics vector returned by ``DeviceIteration.step`` (float64)."""

    COST = 0
    """Cost after the iteration (unchanged when rejected)."""
    COST_CHANGE = 1
    """Actual decrease of the candidate (0 when the step was not evaluated)."""
    STEP_NORM = 2
    """Euclidean norm of the step."""
    GRADIENT_MAX = 3
    """Max-norm of J'r at the linearisation point."""
    RADIUS = 4
    """Trust-region radius used for this step."""
    RHO = 5
    """Actual / model decrease (nan when the step was not evaluated)."""
    OK = 6
    """1 when the linear solve succeeded."""
    SMALL_STEP = 7
    """1 when the step met the parameter tolerance."""
    ACCEPTED = 8
    """1 when the step was accepted (the parameters moved)."""
    LINEAR_ITERATIONS = 9
    """Conjugate-gradient iterations (0 for dense Cholesky)."""
    NEXT_RADIUS = 10
    """Radius for the next iteration."""
    PREVIOUS_COST = 11
    """Cost before the iteration."""


@dataclass(frozen=True)
class Linearisation:
    """Reweighted residual terms and normal equations at the current parameters."""

    terms: list[ResidualTerm]
    """Terms scaled by sqrt(rho'), with the gauge's fixed columns marked -1."""
    cost: Tensor
    """0-d robust cost at the linearisation point (working dtype)."""
    ne: NormalEquations
    """Undamped normal equations."""
    gradient_max: Tensor
    """0-d max-norm of J'r."""


def _state_tensors(state: object) -> dict[str, Tensor]:
    """The tensor fields of a dataclass state (the solver selects and copies states field by field)."""
    if not dataclasses.is_dataclass(state) or isinstance(state, type):
        raise BundleAdjustmentError(f"the solver state must be a dataclass of tensors, got {type(state)!r}")
    fields = {f.name: getattr(state, f.name) for f in dataclasses.fields(state)}
    bad = [name for name, value in fields.items() if not isinstance(value, Tensor)]
    if not fields:
        raise BundleAdjustmentError("the solver state has no tensor fields")
    if bad:
        raise BundleAdjustmentError(f"the solver state's fields must all be tensors; not: {', '.join(bad)}")
    return fields


def _gradient_max(ne: NormalEquations) -> Tensor:
    parts = [g.abs().max() for g in (ne.g_camera, ne.g_point) if g.numel()]
    if not parts:
        return ne.g_camera.new_zeros(())
    return parts[0] if len(parts) == 1 else torch.maximum(parts[0], parts[1])


class DeviceIteration(Generic[StateT]):
    """Parameters, solver scalars and the parts of an LM iteration for one problem."""

    def __init__(
        self,
        problem: LeastSquaresProblem[StateT],
        state: StateT,
        config: LMConfig,
        solver: Literal["dense", "pcg"],
    ) -> None:
        self.problem = problem
        self.config = config
        self.solver = solver
        fields = _state_tensors(state)
        self.state: StateT = dataclasses.replace(state, **{k: v.clone() for k, v in fields.items()})  # type: ignore[type-var]
        ref = next(iter(fields.values()))
        f64, device = torch.float64, ref.device
        self.cost = torch.zeros((), dtype=f64, device=device)
        self.radius = torch.tensor(config.initial_trust_region_radius, dtype=f64, device=device)
        self.decrease_factor = torch.tensor(2.0, dtype=f64, device=device)
        self.parameter_norm = torch.zeros((), dtype=f64, device=device)
        self._fixed_lut = self._gauge_lookup(ref.device)
        self._fixed_columns: dict[int, Tensor] = {}
        self.structure: SchurStructure | None = None

    def _gauge_lookup(self, device: torch.device) -> Tensor | None:
        """Map camera column -> itself, or -1 for the columns the gauge holds fixed."""
        fixed = self.config.fixed_camera_parameters
        if not fixed:
            return None
        n_c = self.problem.num_camera_parameters
        if min(fixed) < 0 or max(fixed) >= n_c:
            raise BundleAdjustmentError(
                f"fixed_camera_parameters must lie in 0..{n_c - 1} (the problem's camera parameters)"
            )
        lut = torch.arange(n_c, device=device)
        lut[torch.tensor(fixed, device=device)] = -1
        return lut

    def _fix_gauge(self, index: int, term: ResidualTerm) -> ResidualTerm:
        """The term with the gauge's fixed columns marked -1 (index tensors are fixed, so cached)."""
        if self._fixed_lut is None or term.camera_columns is None:
            return term
        cols = self._fixed_columns.get(index)
        if cols is None:
            raw = term.camera_columns
            cols = torch.where(raw < 0, raw, self._fixed_lut[raw.clamp_min(0)])
            self._fixed_columns[index] = cols
        return dataclasses.replace(term, camera_columns=cols)

    def linearise(self) -> Linearisation:
        """Residuals, Jacobians and normal equations at the current parameters (no host sync)."""
        problem = self.problem
        terms = [self._fix_gauge(i, t) for i, t in enumerate(problem.evaluate(self.state, jacobians=True))]
        weighted = reweight(terms)
        ne = build_normal_equations(
            weighted.terms, problem.num_camera_parameters, problem.num_points, problem.point_dim
        )
        return Linearisation(weighted.terms, weighted.cost, ne, _gradient_max(ne))

    def prepare(self, lin: Linearisation) -> None:
        """Once, eagerly, before the first step: initial cost and the Schur sparsity structure."""
        self.cost.copy_(lin.cost)
        if self.solver == "dense":
            self.structure = build_schur_structure(lin.ne)
        self.update_parameter_norm()

    def update_parameter_norm(self) -> None:
        """Refresh the parameter norm used by the parameter tolerance (eager; after every accepted step)."""
        value: Any = self.problem.parameter_norm(self.state)
        if isinstance(value, Tensor):
            self.parameter_norm.copy_(value)
        else:
            self.parameter_norm.fill_(float(value))

    def _damping(self) -> Damping:
        return Damping(1 / self.radius, self.config.min_diagonal, self.config.max_diagonal)

    def reduce(self, lin: Linearisation) -> ReducedSystem:
        """First part of a dense step: the damped reduced camera system (no host sync)."""
        if self.structure is None:
            raise BundleAdjustmentError("reduce() needs the dense solver")
        return reduce_dense(lin.ne, self.structure, self._damping())

    def finish_dense(
        self, lin: Linearisation, system: ReducedSystem, camera_step: Tensor, ok: Tensor
    ) -> Tensor:
        """Last part of a dense step, from the camera step: ``finish`` after the back-substitution."""
        return self.finish(lin, back_substitute(lin.ne, system, camera_step, ok))

    def step(self, lin: Linearisation) -> Tensor:
        """A whole step: solve, then ``finish``; returns the (12,) ``Stat`` vector."""
        if self.structure is not None:
            system = self.reduce(lin)
            camera_step, ok = solve_reduced(system)
            return self.finish_dense(lin, system, camera_step, ok)
        cfg = self.config
        step = solve_pcg(
            lin.ne, self._damping(), self.problem.camera_block_size, cfg.pcg_max_iterations, cfg.pcg_tolerance
        )
        return self.finish(lin, step)

    def finish(self, lin: Linearisation, step: Step) -> Tensor:
        """Evaluate the candidate of step, accept or reject it in place; the (12,) ``Stat`` vector."""
        cfg = self.config
        f64 = torch.float64
        step_norm = torch.sqrt((step.camera * step.camera).sum() + (step.point * step.point).sum()).to(f64)
        small = step_norm <= cfg.parameter_tolerance * (self.parameter_norm + cfg.parameter_tolerance)
        evaluated = step.ok & ~small
        model_change = linearised_change(lin.terms, step.camera, step.point).to(f64)
        candidate = self.problem.retract(self.state, step.camera, step.point)
        new_cost = robust_cost(self.problem.evaluate(candidate, jacobians=False)).to(f64)
        previous_cost = self.cost.clone()
        change = previous_cost - new_cost
        rho = torch.where(model_change > 0, change / model_change, torch.full_like(change, -1.0))
        gradient_max = lin.gradient_max.to(f64)
        accepted = (
            evaluated
            & (rho > cfg.min_relative_decrease)
            & (change > 0)
            & (gradient_max > cfg.gradient_tolerance)
        )
        for name, value in _state_tensors(self.state).items():
            value.copy_(torch.where(accepted, getattr(candidate, name), value))
        self.cost.copy_(torch.where(accepted, new_cost, previous_cost))
        radius = self.radius.clone()
        grown = (radius / torch.clamp(1 - (2 * rho - 1) ** 3, min=1 / 3)).clamp(
            max=cfg.max_trust_region_radius
        )
        self.radius.copy_(torch.where(accepted, grown, radius / self.decrease_factor))
        self.decrease_factor.copy_(
            torch.where(accepted, torch.full_like(radius, 2.0), 2 * self.decrease_factor)
        )
        nan = torch.full_like(rho, float("nan"))
        stats = (
            self.cost,
            torch.where(evaluated, change, torch.zeros_like(change)),
            step_norm,
            gradient_max,
            radius,
            torch.where(evaluated, rho, nan),
            step.ok.to(f64),
            small.to(f64),
            accepted.to(f64),
            step.iterations.to(f64),
            self.radius,
            previous_cost,
        )
        return torch.stack(stats)
