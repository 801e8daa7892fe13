"""BAL benchmark report: keys, units, a converged synthetic file, bad arguments."""

import json
from pathlib import Path

import pytest
import torch

from dv4d.ba.bal import BalData
from dv4d.ba.bench import run_bal_benchmark, run_synthetic_benchmark
from dv4d.ba.errors import BundleAdjustmentError
from dv4d.ba.synthetic import make_synthetic_bal

KEYS = {
    "problem",
    "cameras",
    "points",
    "observations",
    "initial_cost",
    "final_cost",
    "iterations",
    "seconds",
    "device",
    "dtype",
    "log",
}


def _write_bal(data: BalData, path: Path) -> None:
    lines = [f"{data.num_cameras} {data.num_points} {data.num_observations}"]
    for c, p, (x, y) in zip(
        data.camera_index.tolist(), data.point_index.tolist(), data.observations.tolist(), strict=True
    ):
        lines.append(f"{c} {p} {x!r} {y!r}")
    lines += [repr(v) for v in data.cameras.reshape(-1).tolist()]
    lines += [repr(v) for v in data.points.reshape(-1).tolist()]
    path.write_text("\n".join(lines) + "\n")


def test_run_bal_benchmark_report(tmp_path: Path) -> None:
    syn = make_synthetic_bal(5, 120, 3, seed=8)
    path = tmp_path / "problem-5-120-synthetic.txt"
    _write_bal(syn.start, path)
    threads = torch.get_num_threads()
    report = run_bal_benchmark(path, max_iterations=20)
    assert torch.get_num_threads() == threads
    assert report.keys() >= KEYS
    assert report["problem"] == "problem-5-120-synthetic"
    assert (report["cameras"], report["points"], report["observations"]) == (5, 120, 360)
    assert report["device"] == "cpu" and report["dtype"] == "float64" and report["threads"] == 1
    assert report["final_cost"] < 1e-2 * report["initial_cost"]
    assert report["iterations"] == len(report["log"]) > 0
    assert report["seconds"] > 0 and report["log"][-1]["seconds"] <= report["seconds"]
    assert report["cpu_seconds"] > 0 and report["cuda_graphs"] is False
    durations = [b["seconds"] - a["seconds"] for a, b in zip(report["log"], report["log"][1:], strict=False)]
    assert min(durations) <= report["median_iteration_ms"] / 1000 <= report["seconds"]
    json.dumps(report)


def test_synthetic_benchmark_reaches_noise_floor() -> None:
    report = run_synthetic_benchmark(6, 150, 3, max_iterations=30)
    assert report["final_cost"] < 1.2 * report["noise_floor"]
    assert report["final_cost"] < report["truth_cost"]


def test_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(BundleAdjustmentError):
        run_bal_benchmark(tmp_path / "x.txt", dtype="float16")
    with pytest.raises(BundleAdjustmentError):
        run_synthetic_benchmark(4, 10, 2, threads=0)
    if not torch.cuda.is_available():
        syn = make_synthetic_bal(3, 10, 2)
        path = tmp_path / "p.txt"
        _write_bal(syn.start, path)
        with pytest.raises(BundleAdjustmentError, match="CUDA"):
            run_bal_benchmark(path, device="cuda")
