"""BAL benchmark: solve a BAL file with the Levenberg-Marquardt + Schur solver and report a JSON-able dict."""

import itertools
import statistics
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import torch

from dv4d.ba.bal import BalData, bal_cost, read_bal
from dv4d.ba.bal_problem import BalProblem
from dv4d.ba.errors import BundleAdjustmentError
from dv4d.ba.lm import LMConfig, solve_lm
from dv4d.ba.synthetic import make_synthetic_bal
from dv4d.ba.tensor_ops import cpu_threads

_WARMUP_CAMERAS = 3
_WARMUP_POINTS = 20


def _warmup_problem(device: str, dtype: torch.dtype) -> BalData:
    """A tiny well-posed BAL problem that runs every kernel of the solver once (first-call costs)."""
    gen = torch.Generator().manual_seed(0)
    cams = torch.zeros(_WARMUP_CAMERAS, 9, dtype=torch.float64)
    cams[:, :3] = 0.05 * torch.randn(_WARMUP_CAMERAS, 3, generator=gen)
    cams[:, 5] = -5.0
    cams[:, 6] = 500.0
    pts = torch.randn(_WARMUP_POINTS, 3, generator=gen, dtype=torch.float64)
    cam_idx = torch.arange(_WARMUP_CAMERAS).repeat_interleave(_WARMUP_POINTS)
    pt_idx = torch.arange(_WARMUP_POINTS).repeat(_WARMUP_CAMERAS)
    data = BalData(
        "warmup", cams, pts, cam_idx, pt_idx, torch.zeros(cam_idx.shape[0], 2, dtype=torch.float64)
    )
    obs = BalProblem(data).evaluate(BalProblem(data).initial_state(), jacobians=False)[0].residuals
    noisy = BalData("warmup", cams, pts + 0.01, cam_idx, pt_idx, obs + 0.1)
    return noisy.to(device, dtype)


def _dtype(name: str) -> torch.dtype:
    torch_dtype = {"float64": torch.float64, "float32": torch.float32}.get(name)
    if torch_dtype is None:
        raise BundleAdjustmentError(f"dtype must be float64 or float32, got {name!r}")
    return torch_dtype


def _solve_and_report(
    data: BalData, device: str, dtype: str, config: LMConfig, threads: int | None
) -> dict[str, Any]:
    """Solve with ``threads`` CPU threads (None: torch's setting), restoring the setting afterwards."""
    if threads is not None and threads < 1:
        raise BundleAdjustmentError(f"threads must be >= 1, got {threads}")
    with cpu_threads(threads):
        return _timed_solve(data, device, dtype, config)


def _timed_solve(data: BalData, device: str, dtype: str, config: LMConfig) -> dict[str, Any]:
    """Warm up, then solve data on device in dtype; the report described in ``run_bal_benchmark``."""
    torch_dtype = _dtype(dtype)
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise BundleAdjustmentError("device cuda requested but CUDA is not available")
    on_device = data.to(device, torch_dtype)
    warm = BalProblem(_warmup_problem(device, torch_dtype))
    solve_lm(warm, warm.initial_state(), replace(config, max_iterations=3))
    problem = BalProblem(on_device)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    start, cpu_start = time.perf_counter(), time.process_time()
    result = solve_lm(problem, problem.initial_state(), config)
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    ends = [0.0] + [it.seconds for it in result.iterations]
    durations = [b - a for a, b in itertools.pairwise(ends)]
    return {
        "problem": data.name,
        "cameras": data.num_cameras,
        "points": data.num_points,
        "observations": data.num_observations,
        "initial_cost": result.initial_cost,
        "final_cost": result.final_cost,
        "iterations": len(result.iterations),
        "successful_steps": result.num_successful_steps,
        "termination": result.termination,
        "seconds": seconds,
        "cpu_seconds": cpu_seconds,
        "ms_per_iteration": 1000 * seconds / max(1, len(result.iterations)),
        "median_iteration_ms": 1000 * statistics.median(durations) if durations else 0.0,
        "cuda_graphs": result.cuda_graphs,
        "linear_solver": result.linear_solver,
        "device": str(torch.device(device)),
        "dtype": dtype,
        "threads": torch.get_num_threads(),
        "log": [asdict(it) for it in result.iterations],
    }


def run_bal_benchmark(
    path: Path,
    device: str = "cpu",
    max_iterations: int = 50,
    dtype: str = "float64",
    threads: int | None = 1,
    cuda_graphs: bool = True,
) -> dict[str, Any]:
    """Solve the BAL problem at path: sizes, costs, iterations, solve seconds and the per-iteration log.

    ``seconds`` covers the solve only (parsing, the transfer to the device and a warm-up solve of a
    tiny problem that pays one-time kernel start-up costs are excluded). Keys: problem, cameras,
    points, observations, initial_cost, final_cost, iterations, successful_steps, termination,
    seconds, cpu_seconds (process CPU time of the solve, all threads: on a machine shared with other
    busy processes it grows far less than wall time), ms_per_iteration, median_iteration_ms (median
    wall time of one iteration, which leaves out the first linearisation and the CUDA graph
    capture), linear_solver, cuda_graphs (whether the iterations were replayed from CUDA graphs),
    device, dtype, threads, log (one dict per iteration). The ``cuda_graphs`` argument is
    ``LMConfig.cuda_graphs`` (used on CUDA only).

    ``threads`` sets torch's CPU threads for the solve (None keeps the current setting). The default 1
    is deliberate: torch's OpenMP pool spins at barriers, so on a machine whose cores are shared with
    other busy processes two threads ran 3-20x slower than one, while one thread is ~20% slower than
    two on an idle 2-core machine.
    """
    _dtype(dtype)
    return benchmark_bal_data(read_bal(path), device, max_iterations, dtype, threads, cuda_graphs)


def benchmark_bal_data(
    data: BalData,
    device: str = "cpu",
    max_iterations: int = 50,
    dtype: str = "float64",
    threads: int | None = 1,
    cuda_graphs: bool = True,
) -> dict[str, Any]:
    """``run_bal_benchmark`` on a problem already read (to time several settings without re-parsing)."""
    config = LMConfig(max_iterations=max_iterations, cuda_graphs=cuda_graphs)
    return _solve_and_report(data, device, dtype, config, threads)


def run_synthetic_benchmark(
    num_cameras: int,
    num_points: int,
    observations_per_point: int,
    device: str = "cpu",
    max_iterations: int = 50,
    dtype: str = "float64",
    threads: int | None = 1,
    cuda_graphs: bool = True,
) -> dict[str, Any]:
    """Scaling run on a synthetic BAL problem with known truth (see ``dv4d.ba.synthetic``).

    Adds to the ``run_bal_benchmark`` keys: ``truth_cost`` (cost at the true parameters) and
    ``noise_floor`` (expected optimum 0.5 sigma^2 (2N - parameters)).
    """
    syn = make_synthetic_bal(num_cameras, num_points, observations_per_point)
    config = LMConfig(max_iterations=max_iterations, cuda_graphs=cuda_graphs)
    report = _solve_and_report(syn.start, device, dtype, config, threads)
    params = 9 * num_cameras + 3 * num_points
    report["truth_cost"] = bal_cost(syn.truth)
    report["noise_floor"] = 0.5 * syn.noise_px**2 * (2 * syn.start.num_observations - params)
    return report
