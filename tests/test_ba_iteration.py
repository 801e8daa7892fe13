"""The device-side LM iteration is CUDA-graph safe: checked on CPU by recording every aten op it runs.

A CUDA graph cannot contain a host read-back (``aten::_local_scalar_dense``, behind ``float(t)``,
``.item()``, ``bool(t)``), an op whose output size depends on values (nonzero, boolean-mask
indexing, unique, ...) or an error-checked linear solve; and every replay must see the same ops on
the same shapes. The recorder below runs ``linearise`` and ``step`` twice and checks both.
"""

from typing import Any

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from dv4d.ba.bal_problem import BalProblem
from dv4d.ba.dense import DenseConfig, DenseDepthProblem
from dv4d.ba.iteration import DeviceIteration, Stat
from dv4d.ba.lm import LMConfig, solve_lm
from dv4d.ba.losses import RobustLoss
from dv4d.ba.schur import ReducedSystem, solve_reduced
from dv4d.ba.synthetic import make_synthetic_bal, make_synthetic_dense_scene, perturb_dense_state

FORBIDDEN = (
    "_local_scalar_dense",
    "nonzero",
    "masked_select",
    "unique",
    "_linalg_check_errors",
    "repeat_interleave",
    "bincount",
    "boolean mask",
)


class _Recorder(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.ops: list[tuple[str, tuple[tuple[int, ...], ...]]] = []

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        outs = out if isinstance(out, (tuple, list)) else (out,)
        shapes = tuple(tuple(o.shape) for o in outs if isinstance(o, torch.Tensor))
        name = str(func)
        indices = args[1] if name.startswith(("aten.index", "aten._index_put")) and len(args) > 1 else ()
        if any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in indices or ()):
            name += " with a boolean mask (nonzero)"
        self.ops.append((name, shapes))
        return out


def _record(iteration: DeviceIteration[Any], rounds: int = 2) -> list[list[tuple[str, Any]]]:
    """The ops of the captured parts (linearise, reduce, finish_dense) over two iterations."""
    lin = iteration.linearise()
    iteration.prepare(lin)
    iteration.step(lin)  # first call fills workspaces, as the eager first iteration does
    runs = []
    for _ in range(rounds):
        with _Recorder() as rec:
            lin = iteration.linearise()
            system = iteration.reduce(lin)
        camera_step, ok = solve_reduced(system)  # eager between the graphs
        with _Recorder() as rec_finish:
            iteration.finish_dense(lin, system, camera_step, ok)
        runs.append(rec.ops + rec_finish.ops)
    return runs


def _assert_graph_safe(runs: list[list[tuple[str, Any]]]) -> None:
    names = {name for name, _ in runs[0]}
    bad = sorted(n for n in names if any(f in n for f in FORBIDDEN))
    assert not bad, f"ops that cannot be captured in a CUDA graph: {bad}"
    assert not [n for n in names if "cholesky" in n], "cuSOLVER must stay out of the captured parts"
    assert runs[0] == runs[1], "the ops or their shapes changed between two iterations"


def test_cholesky_step_never_syncs() -> None:
    problem = BalProblem(make_synthetic_bal(4, 40, 3, seed=5).start)
    iteration = DeviceIteration(problem, problem.initial_state(), LMConfig(), "dense")
    lin = iteration.linearise()
    iteration.prepare(lin)
    system = iteration.reduce(lin)
    with _Recorder() as rec:
        camera_step, ok = solve_reduced(system)
    assert bool(ok) and camera_step.shape == (problem.num_camera_parameters,)
    assert not [n for n, _ in rec.ops if any(f in n for f in FORBIDDEN)]
    failed, not_ok = solve_reduced(
        ReducedSystem(system.eliminated, -torch.eye(system.matrix.shape[0]).double())
    )
    assert not bool(not_ok) and torch.equal(failed, torch.zeros_like(failed))


@pytest.mark.parametrize("loss", ["trivial", "huber"])
def test_bal_iteration_is_graph_safe(loss: str) -> None:
    problem = BalProblem(make_synthetic_bal(6, 80, 3, seed=1).start, RobustLoss(loss))  # type: ignore[arg-type]
    config = LMConfig(fixed_camera_parameters=(0, 1, 2))
    _assert_graph_safe(_record(DeviceIteration(problem, problem.initial_state(), config, "dense")))


def test_dense_window_iteration_is_graph_safe() -> None:
    scene = make_synthetic_dense_scene(3)
    start = perturb_dense_state(scene.truth, [1, 2])
    free = torch.tensor([False, True, True])
    problem = DenseDepthProblem(
        scene.image_size, scene.principal, scene.correspondences, scene.truth.inv_depth, free, DenseConfig()
    )
    _assert_graph_safe(_record(DeviceIteration(problem, start, LMConfig(), "dense")))


def test_step_statistics_match_the_log() -> None:
    problem = BalProblem(make_synthetic_bal(5, 60, 3, seed=2).start)
    iteration = DeviceIteration(problem, problem.initial_state(), LMConfig(), "dense")
    lin = iteration.linearise()
    iteration.prepare(lin)
    before = float(iteration.cost)
    stats = iteration.step(lin).tolist()
    assert len(stats) == len(Stat)
    assert stats[Stat.PREVIOUS_COST] == before
    assert stats[Stat.ACCEPTED] == 1.0 and stats[Stat.OK] == 1.0
    assert stats[Stat.COST] == pytest.approx(before - stats[Stat.COST_CHANGE])
    assert stats[Stat.NEXT_RADIUS] > stats[Stat.RADIUS] == LMConfig().initial_trust_region_radius
    log = solve_lm(problem, problem.initial_state(), LMConfig(max_iterations=1)).iterations[0]
    assert (log.cost, log.step_norm, log.relative_decrease) == (
        stats[Stat.COST],
        stats[Stat.STEP_NORM],
        stats[Stat.RHO],
    )
