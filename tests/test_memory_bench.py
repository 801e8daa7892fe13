"""``dv4d bench memory`` on a tiny generated video: the JSON report's keys and plausible values."""

import argparse
import json
from pathlib import Path

import numpy as np
import pytest
from rich.console import Console

from dv4d.flows import cmd_bench_memory
from dv4d.flows.cli import EXIT_OK, UsageError
from dv4d.pipeline.ingest import probe
from dv4d.pipeline.memory_bench import MemoryBenchConfig, write_parallax_video

KEYS = {
    "peak_rss_gb",
    "peak_tree_rss_gb",
    "frames",
    "seconds",
    "frames_per_s",
    "video_size",
    "working_size",
    "video_mb",
    "dataset_clips",
    "dataset_rss_first_clip_gb",
    "dataset_rss_peak_gb",
    "dataset_rss_growth_mb",
}


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="bench_command", required=True)
    cmd_bench_memory.add_parser(sub)
    return parser.parse_args(["memory", *argv])


def test_generated_video_has_parallax(tmp_path: Path) -> None:
    cfg = MemoryBenchConfig(frames=12, width=128, height=72, clip_len=4)
    done: list[int] = []
    write_parallax_video(tmp_path / "v.mp4", cfg, done.append)
    info = probe(tmp_path / "v.mp4")
    assert (info.width, info.height, info.num_frames, sum(done)) == (128, 72, 12, 12)


@pytest.mark.slow
def test_bench_prints_json_report_last(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    size = ("--frames", "24", "--width", "192", "--height", "108", "--resolution", "96")
    args = parse(*size, "--clip-len", "8", "--workdir", str(tmp_path), "-q")
    assert cmd_bench_memory.run(args, Console(stderr=True)) == EXIT_OK
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(report) >= KEYS
    assert (
        report["frames"] == 24 and report["video_size"] == [192, 108] and report["working_size"] == [96, 54]
    )
    assert 0.05 < report["peak_rss_gb"] < 4.0  # a Python process with numpy/torch/OpenCV loaded
    assert report["peak_tree_rss_gb"] >= report["peak_rss_gb"] * 0.5
    assert report["dataset_clips"] == 3
    assert report["dataset_rss_peak_gb"] >= report["dataset_rss_first_clip_gb"] > 0
    assert np.isfinite(report["frames_per_s"]) and report["frames_per_s"] > 0


@pytest.mark.parametrize("argv", [("--frames", "1"), ("--width", "63"), ("--clip-len", "0"), ("--fps", "0")])
def test_bad_options_are_usage_errors(argv: tuple[str, ...]) -> None:
    with pytest.raises(UsageError):
        cmd_bench_memory.run(parse(*argv), Console(stderr=True))
