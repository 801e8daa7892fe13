"""``dv4d bench models`` on CPU with the smoke preset (seconds), its JSON report and its usage errors."""

import argparse
import io
import json

import numpy as np
import pytest
import torch
from rich.console import Console

from dv4d.flows.cli import UsageError
from dv4d.flows.cmd_bench_models import add_parser, run
from dv4d.models.bench import BenchConfig, frames_for, object_boxes


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers(dest="bench_command"))
    return parser.parse_args(["models", *argv])


def test_smoke_bench_reports_every_stage(capsys: pytest.CaptureFixture[str]) -> None:
    args = parse(
        "--preset", "smoke", "--device", "cpu", "--frames", "3", "--resolution", "96", "--objects", "2"
    )
    console = Console(file=io.StringIO())
    assert run(args, console) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["benchmark"] == "models" and report["preset"] == "smoke" and report["device"] == "cpu"
    assert (report["width"], report["height"], report["frames"]) == (96, 54, 3)
    assert report["dtype"] == "float32" and report["threads"] == 1
    stages = {s["stage"]: s for s in report["stages"]}
    assert list(stages) == ["depth", "detect", "segment", "vlm_names", "vlm_captions"]
    expected = {"depth": ("frame", 3), "detect": ("frame", 3), "segment": ("frame", 3),
                "vlm_names": ("video", 1), "vlm_captions": ("object", 2)}  # fmt: skip
    for name, s in stages.items():
        assert (s["unit"], s["count"]) == expected[name]
        assert s["weights"] == "random-init" and s["seconds"] > 0 and s["peak_memory_mb"] > 0
        assert s["per_second"] == pytest.approx(s["count"] / s["seconds"], rel=1e-2)
    assert stages["depth"]["model"] == "Depth Pro" and stages["vlm_names"]["model"] == "Qwen2.5-VL"
    assert "vlm_captions" in console.file.getvalue()  # type: ignore[attr-defined]


def test_bench_inputs() -> None:
    frames = frames_for(BenchConfig("smoke", "cpu", frames=2, resolution=101))
    assert frames.shape == (2, 56, 100, 3) and frames.dtype == np.uint8
    boxes = object_boxes(56, 100, 3)
    assert boxes.shape == (3, 4) and (boxes[:, 2] > boxes[:, 0]).all() and (boxes[:, 3] > boxes[:, 1]).all()
    assert boxes[:, [0, 2]].max() <= 99 and boxes[:, [1, 3]].max() <= 55 and boxes.min() >= 0


def test_bench_usage_errors() -> None:
    with pytest.raises(UsageError, match="frames"):
        run(parse("--preset", "smoke", "--device", "cpu", "--frames", "0"), Console(file=io.StringIO()))
    with pytest.raises(UsageError, match="batch-size"):
        run(parse("--preset", "smoke", "--device", "cpu", "--batch-size", "0"), Console(file=io.StringIO()))
    with pytest.raises(UsageError, match="device"):
        run(parse("--preset", "smoke", "--device", "tpu"), Console(file=io.StringIO()))
    if not torch.cuda.is_available():
        with pytest.raises(UsageError, match="CUDA is not available"):
            run(parse("--preset", "smoke", "--device", "cuda"), Console(file=io.StringIO()))
    with pytest.raises(SystemExit):
        parse("--preset", "classical")
