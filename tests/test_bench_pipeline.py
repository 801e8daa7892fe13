"""``dv4d bench pipeline``: the whole pipeline on a tiny synthetic clip (smoke preset, CPU)."""

import json
from pathlib import Path

import pytest

from dv4d.flows.cli import main
from dv4d.pipeline.synthetic import SceneConfig, render_scene, write_video


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("bench") / "clip.mp4"
    write_video(render_scene(SceneConfig(width=96, height=72, num_frames=8, seed=3)).frames, path, fps=10.0)
    return path


def test_bench_pipeline_reports_every_stage(
    clip: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(
        ["bench", "pipeline", str(clip), "--preset", "smoke", "--device", "cpu", "--out", str(tmp_path)]
    )
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert code == 0, report["error"]
    assert report["status"] == "complete" and report["frames"] == 8
    assert {"ingest", "depth_model", "geometry", "objects", "captions", "export"} <= set(report["stages"])
    assert all(st["seconds"] >= 0 for st in report["stages"].values())
    assert report["frames_per_s"] > 0 and report["peak_rss_gb"] > 0 and report["peak_gpu_memory_gb"] is None
    assert set(report["random_init"]) == set(report["weights"])  # smoke: every network is random
    assert (tmp_path / "clip" / "manifest.json").is_file()


def test_bench_pipeline_missing_video_is_a_usage_error(tmp_path: Path) -> None:
    assert main(["bench", "pipeline", str(tmp_path / "nope.mp4")]) == 2
