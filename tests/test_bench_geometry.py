"""``dv4d bench geometry``: scoring against known truth, the JSON summary, and one tiny end-to-end run of
COLMAP and dv4d classical mode side by side."""

import argparse
import json
import math
from pathlib import Path

import numpy as np
import pytest
from rich.console import Console

from dv4d.flows import cmd_bench_geometry
from dv4d.flows.cli import EXIT_OK, UsageError
from dv4d.pipeline.bench_geometry import (
    BenchConfig,
    Estimate,
    GroundTruth,
    SceneScore,
    load_ground_truth,
    score,
    summary,
)
from dv4d.pipeline.errors import Dv4dError
from dv4d.pipeline.synthetic import SceneConfig, camera_path


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    cmd_bench_geometry.add_parser(parser.add_subparsers(dest="bench_command"))
    return parser.parse_args(["geometry", *argv])


def truth(num: int = 10) -> GroundTruth:
    c2w = camera_path(SceneConfig(num_frames=num))
    depth = np.full((num, 6, 8), 2.0, np.float32)
    dynamic = np.zeros((num, 6, 8), bool)
    dynamic[:, 2:4, 3:5] = True
    return GroundTruth(c2w=c2w, focal_px=100.0, depth=depth, dynamic=dynamic)


def similar(c2w: np.ndarray, scale: float) -> np.ndarray:
    """The same trajectory in another world frame and unit (rotated, shifted, scaled)."""
    rot = np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    out = c2w.copy()
    out[:, :3, :3] = rot @ c2w[:, :3, :3]
    out[:, :3, 3] = scale * c2w[:, :3, 3] @ rot.T + np.array([1.0, 2.0, 3.0])
    return out


def test_score_is_exact_on_a_similar_trajectory_and_counts_unposed_frames() -> None:
    gt = truth()
    est = similar(gt.c2w, 0.3)
    est[4] = np.nan  # not posed
    depth = gt.depth * 0.5 if gt.depth is not None else None
    dynamic = gt.dynamic.copy() if gt.dynamic is not None else None
    assert dynamic is not None
    dynamic[:5] = False  # half the object's pixels missed
    result = score(Estimate(est, 101.0, 2.0, 1.5, depth, dynamic, 1), gt)
    assert (result.frames, result.frames_posed) == (10, 9)
    assert result.ate_pct < 1e-9 and result.rpe_rot_deg < 1e-4 and result.rpe_trans_m < 1e-9
    assert math.isclose(result.focal_err_pct, 1.0) and math.isclose(result.fps, 5.0)
    assert math.isclose(result.camera_fps, 10 / 1.5)
    assert result.depth_absrel is not None and result.depth_absrel < 1e-6  # median scaling
    assert result.mask_iou is not None and math.isclose(result.mask_iou, 0.5)
    shifted = similar(gt.c2w, 0.3)
    shifted[:, :3, 3] += np.linspace(0, 0.05, 10)[:, None]
    assert score(Estimate(shifted, 100.0, 1.0), gt).ate_pct > 0.1
    nothing = score(Estimate(np.full((10, 4, 4), np.nan), float("nan"), 1.0), gt)
    assert nothing.frames_posed == 0 and math.isnan(nothing.ate_pct) and nothing.mask_iou is None


def test_summary_means_ratios_targets_and_json_safety() -> None:
    gt = truth()
    wobble = np.zeros((10, 4, 4))
    wobble[:, 0, 3] = 0.01 * np.sin(np.arange(10))  # metres, across the path

    def est(amount: float, scale: float) -> np.ndarray:
        return similar(gt.c2w + amount * wobble, scale)

    colmap = score(Estimate(est(1.0, 2.0), 102.0, 4.0), gt)
    dv4d = score(Estimate(est(3.0, 0.5), 100.5, 1.0, 0.5, gt.depth, gt.dynamic, 1), gt)
    unposed = np.full((10, 4, 4), np.nan)
    failed = score(Estimate(unposed, float("nan"), 1.0, 0.5, gt.depth, gt.dynamic, 1), gt)
    report = summary(BenchConfig(scenes=1), [SceneScore("a", colmap, dv4d), SceneScore("b", colmap, failed)])
    json.dumps(report, allow_nan=False)
    assert report["scenes"][1]["dv4d"]["ate_pct"] is None  # NaN becomes null
    assert report["mean"]["colmap"]["depth_absrel"] is None  # COLMAP gives no depth
    assert math.isclose(report["mean"]["dv4d"]["ate_pct"], dv4d.ate_pct)  # means over finite values
    assert math.isclose(report["ratios"]["ate_dv4d_over_colmap"], 3.0, rel_tol=0.05)
    assert math.isclose(report["ratios"]["fps_dv4d_over_colmap"], 4.0)
    assert math.isclose(report["ratios"]["camera_fps_dv4d_over_colmap"], 8.0)  # COLMAP's whole run
    targets = report["targets"]
    assert targets["end_to_end_fps_ge_2x_colmap"] and targets["camera_fps_ge_2x_colmap"]
    assert targets["focal_err_le_1pct"] and targets["mask_iou_ge_0.6"]
    assert not targets["ate_no_worse_than_colmap"] and not targets["all_frames_posed"]


def test_ground_truth_files_and_bad_inputs(tmp_path: Path) -> None:
    gt = truth()
    np.savez(tmp_path / "a.npz", c2w=gt.c2w, K=np.diag([100.0, 100.0, 1.0]))
    loaded = load_ground_truth(tmp_path / "a.npz")
    assert loaded.focal_px == 100.0 and loaded.depth is None and loaded.dynamic is None
    np.savez(tmp_path / "b.npz", c2w=gt.c2w)
    with pytest.raises(Dv4dError, match="'c2w' and 'K'"):
        load_ground_truth(tmp_path / "b.npz")
    with pytest.raises(UsageError, match=r"no <name>\.mp4"):
        cmd_bench_geometry.run(parse("--videos", str(tmp_path)), Console())
    with pytest.raises(UsageError, match="at least 1 scene"):
        cmd_bench_geometry.run(parse("--scenes", "0"), Console())
    with pytest.raises(UsageError, match="16x16"):
        cmd_bench_geometry.run(parse("--width", "8"), Console())


def test_tiny_scene_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """20 frames at 160x120: both methods pose the frames, the JSON line has every figure."""
    args = parse("--scenes", "1", "--frames", "20", "--width", "160", "--height", "120",
                 "--work", str(tmp_path))  # fmt: skip
    assert cmd_bench_geometry.run(args, Console(file=None, width=160)) == EXIT_OK
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(report) == {"benchmark", "config", "cpu_count", "scenes", "mean", "ratios", "targets"}
    (scene,) = report["scenes"]
    colmap, dv4d = scene["colmap"], scene["dv4d"]
    assert colmap["frames"] == dv4d["frames"] == 20
    assert colmap["frames_posed"] >= 15 and dv4d["frames_posed"] == 20
    for figures in (colmap, dv4d):
        assert 0 <= figures["ate_pct"] < 10 and figures["rpe_rot_deg"] < 2 and figures["fps"] > 0
        assert figures["focal_err_pct"] < 10
    assert dv4d["camera_fps"] > dv4d["fps"] and report["scenes"][0]["colmap"]["camera_fps"] > 0
    assert dv4d["depth_absrel"] < 0.2 and dv4d["depth_delta1"] > 0.7 and 0 < dv4d["depth_coverage"] <= 1
    assert 0.2 < dv4d["mask_iou"] <= 1 and dv4d["instances"] >= 1
    assert colmap["mask_iou"] is None and colmap["depth_absrel"] is None
    assert report["ratios"]["ate_dv4d_over_colmap"] > 0 and report["ratios"]["fps_dv4d_over_colmap"] > 0
    assert set(report["targets"]) >= {
        "ate_no_worse_than_colmap",
        "camera_fps_ge_2x_colmap",
        "mask_iou_ge_0.6",
    }
    assert (tmp_path / "videos" / "scene0.mp4").is_file() and (tmp_path / "videos" / "scene0.npz").is_file()
