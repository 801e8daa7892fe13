"""Replay Levenberg-Marquardt iterations from CUDA graphs (``LMConfig.cuda_graphs``).

Three parts of an iteration are each captured once in a ``torch.cuda.CUDAGraph``: the
linearisation (``DeviceIteration.linearise``), the reduced camera system (``reduce``) and the
back-substitution with the candidate's evaluation and the accept / reject decision
(``finish_dense``). Every kernel of a part is recorded with the addresses of its tensors and one
``replay()`` relaunches them all, so the Python and launch overhead of several hundred small kernels
is paid once per solve instead of once per iteration. This works because a problem's sizes never
change during a solve: the parameters and solver scalars live at fixed addresses
(``DeviceIteration`` updates them in place), each graph reads the outputs of the previous one, and
none reads a value back to the host (no ``.item()``, no boolean-mask indexing, no error-checked
linear algebra).

The dense Cholesky factorisation and its two triangular solves run eagerly between the second and
third graph (a handful of launches, still without a host sync): cuSOLVER does not promise that its
routines can be captured, so they are kept out of the graphs.

Capture needs the kernels' one-time set-up (cuBLAS / cuSOLVER handles, workspaces) done first, on
the capture stream: the solver runs its first iteration eagerly on that stream before capturing.
"""

from collections.abc import Callable
from typing import Generic, TypeVar

import torch
from torch import Tensor

from dv4d.ba.errors import BundleAdjustmentError
from dv4d.ba.iteration import DeviceIteration, Linearisation
from dv4d.ba.problem import StateT
from dv4d.ba.schur import ReducedSystem, solve_reduced

T = TypeVar("T")


class CudaGraphCaptureError(BundleAdjustmentError):
    """The LM iteration could not be captured in a CUDA graph."""


def _capture(graph: torch.cuda.CUDAGraph, stream: torch.cuda.Stream, fn: Callable[[], T]) -> T:
    """Record fn's kernels in graph on stream (nothing is computed) and return its outputs."""
    with torch.cuda.stream(stream):
        graph.capture_begin()
        try:
            out = fn()
        finally:
            graph.capture_end()
    return out


class CudaGraphIterations(Generic[StateT]):
    """An LM iteration with the dense solver replayed from CUDA graphs; same interface as the eager runner."""

    def __init__(self, iteration: DeviceIteration[StateT], stream: torch.cuda.Stream) -> None:
        self.iteration = iteration
        self._linearise = torch.cuda.CUDAGraph()
        self._reduce = torch.cuda.CUDAGraph()
        self._finish = torch.cuda.CUDAGraph()
        torch.cuda.synchronize(stream.device)
        try:
            self._lin: Linearisation = _capture(self._linearise, stream, iteration.linearise)
            self._system: ReducedSystem = _capture(self._reduce, stream, lambda: iteration.reduce(self._lin))
            rhs = self._system.eliminated.rhs
            self._camera_step = torch.zeros_like(rhs)
            self._ok = torch.zeros((), dtype=torch.bool, device=rhs.device)
            self._stats: Tensor = _capture(
                self._finish,
                stream,
                lambda: iteration.finish_dense(self._lin, self._system, self._camera_step, self._ok),
            )
        except RuntimeError as exc:
            raise CudaGraphCaptureError(
                "capturing the Levenberg-Marquardt iteration in a CUDA graph failed (the problem's evaluate "
                "or retract probably waits for the device or changes tensor sizes between calls); solve with "
                "LMConfig(cuda_graphs=False) instead, in a new process (torch's CUDA random generator stays "
                f"in capture mode after a failed capture). Cause: {exc}"
            ) from exc
        self.relinearise()

    def relinearise(self) -> None:
        """Linearise at the current parameters (replays the first graph)."""
        self._linearise.replay()
        self.iteration.update_parameter_norm()

    def step(self) -> list[float]:
        """One step from the current linearisation; the ``Stat`` values (the iteration's one host sync)."""
        self._reduce.replay()
        camera_step, ok = solve_reduced(self._system)
        self._camera_step.copy_(camera_step)
        self._ok.copy_(ok)
        self._finish.replay()
        values: list[float] = self._stats.tolist()
        return values
