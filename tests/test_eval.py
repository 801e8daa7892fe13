"""``dv4d eval``: metrics of hand-made output folders against GT written in every format, known answers."""

import argparse
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from rich.console import Console

from dv4d.flows import cmd_eval
from dv4d.flows.cli import UsageError
from dv4d.pipeline.artifacts import SCHEMA, VideoArtifacts, write_json
from dv4d.pipeline.errors import Dv4dError
from dv4d.pipeline.evaluate import EvalConfig, evaluate
from dv4d.pipeline.export import write_cameras
from dv4d.pipeline.gt import GroundTruth, read_ground_truth
from dv4d.pipeline.synthetic import SceneConfig, SyntheticScene, render_scene

FPS = 10.0
TUM_T0 = 1305031098.5


@pytest.fixture(scope="module")
def scene() -> SyntheticScene:
    return render_scene(SceneConfig(width=64, height=48, num_frames=12, fps=FPS, supersample=1, seed=5))


def rotation(axis: np.ndarray, angle: float) -> np.ndarray:
    R, _ = cv2.Rodrigues(np.asarray(axis, np.float64) / np.linalg.norm(axis) * angle)
    return R


def similarity(c2w: np.ndarray, s: float, R: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Poses seen from another world frame x' = s R x + t (rotations turn, centres move and scale)."""
    out = c2w.copy()
    out[:, :3, :3] = R @ c2w[:, :3, :3]
    out[:, :3, 3] = s * c2w[:, :3, 3] @ R.T + t
    return out


def half_res_K(K: np.ndarray) -> np.ndarray:
    """GT intrinsics at half the resolution (pixel centres at integers: c -> (c + 0.5) / 2 - 0.5)."""
    out = K.copy()
    out[:2, :2] /= 2
    out[:2, 2] = (K[:2, 2] + 0.5) / 2 - 0.5
    return out


def write_output(
    root: Path,
    scene: SyntheticScene,
    c2w: np.ndarray,
    *,
    name: str = "video",
    depth_factor: float = 1.0,
    focal_factor: float = 1.0,
    frames: np.ndarray | None = None,
    metric: bool = False,
    dynamic: bool = True,
    holes: bool = False,
    posed: np.ndarray | None = None,
    flags: tuple[str, ...] = (),
) -> Path:
    """An output folder at half the GT resolution for source frames ``frames`` (default: all) whose
    depth and instances are the GT's exactly (the pixels nearest-neighbour resizing picks)."""
    a = VideoArtifacts
    index = np.arange(len(scene.c2w)) if frames is None else frames
    num = len(index)
    _, h, w = scene.depth.shape
    folder = root / name
    folder.mkdir(parents=True)
    depth = (scene.depth[index, 1::2, 1::2] * depth_factor).astype(np.float16)
    if holes:
        depth[:, : h // 4] = 0  # the top half of the rows
    np.save(folder / a.DEPTH, depth)
    np.save(folder / a.INSTANCES, scene.instance_ids[index, 1::2, 1::2])
    K = half_res_K(scene.K)
    K[0, 0] *= focal_factor
    K[1, 1] *= focal_factor
    posed = np.ones(num, bool) if posed is None else posed
    write_cameras(folder / a.CAMERAS, c2w, K, index, index / FPS, index % 4 == 0, posed)
    write_json(folder / a.INSTANCES_JSON, [
        {"id": 1, "label": "object", "dynamic": dynamic, "first_frame": 0, "last_frame": num - 1,
         "num_pixels": 1, "caption": None},
    ])  # fmt: skip
    write_json(folder / a.MANIFEST, {
        "schema": SCHEMA, "status": "complete", "metric": metric,
        "video": {"width": w, "height": h, "fps": FPS, "num_frames": len(scene.c2w)},
        "frames": {"count": num, "width": w // 2, "height": h // 2},
        "quality": {"flags": list(flags)},
    })  # fmt: skip
    return folder


def write_npz(path: Path, scene: SyntheticScene) -> Path:
    """GT under Pi3's key names (poses, intrinsics, depths) plus dynamic masks."""
    num = len(scene.c2w)
    np.savez(
        path,
        poses=scene.c2w.astype(np.float32),
        intrinsics=np.broadcast_to(scene.K, (num, 3, 3)).astype(np.float32),
        depths=scene.depth,
        masks=scene.dynamic,
    )
    return path


def rotation_to_quaternion(R: np.ndarray) -> np.ndarray:
    """(qx, qy, qz, qw) of a rotation matrix (for writing TUM files)."""
    w = np.sqrt(max(0.0, 1.0 + np.trace(R))) / 2
    x = np.copysign(np.sqrt(max(0.0, 1.0 + R[0, 0] - R[1, 1] - R[2, 2])) / 2, R[2, 1] - R[1, 2])
    y = np.copysign(np.sqrt(max(0.0, 1.0 - R[0, 0] + R[1, 1] - R[2, 2])) / 2, R[0, 2] - R[2, 0])
    z = np.copysign(np.sqrt(max(0.0, 1.0 - R[0, 0] - R[1, 1] + R[2, 2])) / 2, R[1, 0] - R[0, 1])
    return np.array([x, y, z, w])


def write_tum(path: Path, scene: SyntheticScene, rate: float = 100.0) -> Path:
    """A TUM trajectory sampled at ``rate`` Hz (faster than the video), starting with the video's
    first frame; between video frames the pose of the previous frame is repeated."""
    lines = ["# timestamp tx ty tz qx qy qz qw"]
    steps = round(rate / FPS)
    for i, pose in enumerate(scene.c2w):
        q = rotation_to_quaternion(pose[:3, :3])
        for k in range(steps):
            stamp = TUM_T0 + i / FPS + k / rate
            lines.append(f"{stamp:.4f} " + " ".join(f"{v:.9f}" for v in (*pose[:3, 3], *q)))
    path.write_text("\n".join(lines) + "\n")
    return path


def write_kitti(path: Path, scene: SyntheticScene) -> Path:
    path.write_text("\n".join(" ".join(f"{v:.12e}" for v in pose[:3].ravel()) for pose in scene.c2w) + "\n")
    return path


def write_open3d(folder: Path, scene: SyntheticScene) -> Path:
    """trajectory.log, depth/*.png in millimetres and camera_primesense.json, as in Open3D's test data."""
    (folder / "depth").mkdir(parents=True)
    blocks = []
    for i, pose in enumerate(scene.c2w):
        blocks.append(f"{i} {i} {i + 1}\n" + "\n".join(" ".join(f"{v:.12f}" for v in row) for row in pose))
        mm = np.rint(scene.depth[i] * 1000).astype(np.uint16)
        cv2.imwrite(str(folder / "depth" / f"{i:05d}.png"), mm)
    (folder / "trajectory.log").write_text("\n".join(blocks) + "\n")
    _, h, w = scene.depth.shape
    intrinsic = {"width": w, "height": h, "intrinsic_matrix": scene.K.T.ravel().tolist()}
    (folder / "camera_primesense.json").write_text(json.dumps(intrinsic))
    return folder


def centred_rms(points: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.sum((points - points.mean(axis=0)) ** 2, axis=1))))


def test_similarity_gives_zero_sim3_ate_and_exact_scores(tmp_path: Path, scene: SyntheticScene) -> None:
    s, R, t = 0.5, rotation(np.array([0.3, -1.0, 0.2]), 0.7), np.array([1.0, -2.0, 0.5])
    out = write_output(tmp_path, scene, similarity(scene.c2w, s, R, t), depth_factor=0.5)
    report = evaluate(out, read_ground_truth(write_npz(tmp_path / "gt.npz", scene)))
    assert (report.frames_output, report.frames_matched, report.frames_posed, report.frames_unposed) == (
        12,
        12,
        12,
        0,
    )
    assert report.ate_sim3 is not None and report.ate_sim3 < 1e-6
    assert report.scale_ratio == pytest.approx(s, rel=1e-6)
    # Rigid alignment of half-size centres leaves (s - 1) times their spread around the centroid.
    assert report.ate_se3 == pytest.approx((1 - s) * centred_rms(scene.c2w[:, :3, 3]), rel=1e-5)
    length = float(np.sum(np.linalg.norm(np.diff(scene.c2w[:, :3, 3], axis=0), axis=1)))
    assert report.gt_path_length == pytest.approx(length, rel=1e-6)
    assert report.ate_se3_pct == pytest.approx(100 * report.ate_se3 / length)
    assert report.rpe_trans is not None and report.rpe_trans < 1e-6
    assert report.rpe_rot_deg is not None and report.rpe_rot_deg < 1e-3
    assert report.focal_error_pct == pytest.approx(0.0, abs=1e-4)  # GT K rescaled to the working size
    # float16 output depth: about 5e-4 relative rounding.
    assert report.depth_absrel is not None and report.depth_absrel < 1e-3 and report.depth_delta1 == 1.0
    assert report.depth_scale_ratio == pytest.approx(0.5, rel=1e-3) and report.depth_coverage == 1.0
    assert report.depth_frames == 12 and report.depth_absrel_metric is None
    assert report.mask_iou == 1.0
    json.dumps(report.to_json(), allow_nan=False)


def test_known_position_noise_gives_known_rmse(tmp_path: Path, scene: SyntheticScene) -> None:
    centres = scene.c2w[:, :3, 3]
    rng = np.random.default_rng(0)
    noise = rng.normal(0.0, 0.03, centres.shape)
    basis = np.column_stack([np.ones(len(centres)), centres - centres.mean(axis=0)])
    noise -= basis @ np.linalg.lstsq(basis, noise, rcond=None)[0]  # zero mean, uncorrelated with the path
    est = scene.c2w.copy()
    est[:, :3, 3] += noise
    report = evaluate(
        write_output(tmp_path, scene, est), read_ground_truth(write_npz(tmp_path / "gt.npz", scene))
    )
    rms_noise = float(np.sqrt(np.mean(np.sum(noise**2, axis=1))))
    # Such noise leaves the rigid alignment at the identity; Sim(3) shrinks it by s = var / (var + noise).
    assert report.ate_se3 == pytest.approx(rms_noise, rel=1e-6)
    var = centred_rms(centres) ** 2
    s = var / (var + rms_noise**2)
    assert report.ate_sim3 == pytest.approx(np.sqrt((s - 1) ** 2 * var + s**2 * rms_noise**2), rel=1e-6)
    assert report.scale_ratio == pytest.approx(1 / s, rel=1e-6)


def test_metric_depth_only_when_manifest_says_metric(tmp_path: Path, scene: SyntheticScene) -> None:
    gt = read_ground_truth(write_npz(tmp_path / "gt.npz", scene))
    near = evaluate(write_output(tmp_path, scene, scene.c2w, name="near", depth_factor=1.1, metric=True), gt)
    assert near.depth_absrel_metric == pytest.approx(0.1, abs=1e-3) and near.depth_delta1_metric == 1.0
    far = evaluate(write_output(tmp_path, scene, scene.c2w, name="far", depth_factor=2.0, metric=True), gt)
    assert far.depth_absrel_metric == pytest.approx(1.0, abs=1e-3) and far.depth_delta1_metric == 0.0
    assert far.depth_absrel is not None and far.depth_absrel < 1e-3  # median scaling removes any factor
    relative = evaluate(write_output(tmp_path, scene, scene.c2w, name="rel", depth_factor=2.0), gt)
    assert relative.depth_absrel_metric is None and any("metric: false" in n for n in relative.notes)


def test_focal_error_coverage_and_static_masks(tmp_path: Path, scene: SyntheticScene) -> None:
    out = write_output(tmp_path, scene, scene.c2w, focal_factor=1.02, holes=True, dynamic=False)
    report = evaluate(out, read_ground_truth(write_npz(tmp_path / "gt.npz", scene)))
    assert report.focal_error_pct == pytest.approx(2.0, abs=1e-4)
    assert report.depth_coverage == pytest.approx(0.5)
    assert scene.dynamic.any() and report.mask_iou == 0.0  # the object is there but not called dynamic


def test_unposed_frames_are_counted_not_dropped(tmp_path: Path, scene: SyntheticScene) -> None:
    est = scene.c2w.copy()
    est[[3, 7]] = np.nan
    posed = np.ones(12, bool)
    posed[10] = False
    est[10, :3, 3] += 5.0  # a flagged frame's (filled-in) pose must not count
    report = evaluate(
        write_output(tmp_path, scene, est, posed=posed),
        read_ground_truth(write_npz(tmp_path / "gt.npz", scene)),
    )
    assert (report.frames_matched, report.frames_posed, report.frames_unposed) == (12, 9, 3)
    assert report.ate_sim3 is not None and report.ate_sim3 < 1e-6


def test_filled_in_poses_without_a_mask_are_reported(tmp_path: Path, scene: SyntheticScene) -> None:
    est = scene.c2w.copy()
    est[9:] = est[8]  # the solver gave the last 3 frames the pose of frame 8
    out = write_output(tmp_path, scene, est, flags=("unregistered_frames",))
    report = evaluate(out, read_ground_truth(write_npz(tmp_path / "gt.npz", scene)))
    assert report.frames_posed == 12 and report.flags == ["unregistered_frames"]
    assert any("3 frames repeat the previous frame's pose" in n for n in report.notes)
    assert report.ate_sim3 is not None and report.ate_sim3 > 1e-3  # evaluated as given: they cost


def test_camera_that_never_moves(tmp_path: Path, scene: SyntheticScene) -> None:
    report = evaluate(
        write_output(tmp_path, scene, np.tile(np.eye(4), (12, 1, 1))),
        read_ground_truth(write_npz(tmp_path / "gt.npz", scene)),
    )
    # All centres at one point: the best alignment puts it on the GT centroid, either way.
    expected = centred_rms(scene.c2w[:, :3, 3])
    assert report.ate_sim3 == pytest.approx(expected) and report.ate_se3 == pytest.approx(expected)
    assert report.scale_ratio is None and any("never moves" in n for n in report.notes)


def test_tum_matches_by_timestamp(tmp_path: Path, scene: SyntheticScene) -> None:
    gt = read_ground_truth(write_tum(tmp_path / "groundtruth.txt", scene))
    assert gt.kind == "tum" and gt.num_frames == 120
    sampled = np.arange(0, 12, 2)  # every other frame, as --fps would sample
    out = write_output(tmp_path, scene, scene.c2w[sampled], frames=sampled)
    report = evaluate(out, gt)
    assert report.frames_matched == 6 and report.ate_sim3 is not None and report.ate_sim3 < 1e-6
    assert report.ate_se3 is not None and report.ate_se3 < 1e-6
    # Video time 0 = GT time TUM_T0 + 0.05: every frame meets the pose of its predecessor plus 0.05 s,
    # which here is the same pose (held for 0.1 s).
    shifted = evaluate(out, gt, EvalConfig(time_offset=TUM_T0 + 0.05))
    assert shifted.frames_matched == 6 and shifted.ate_se3 is not None and shifted.ate_se3 < 1e-6
    late = evaluate(out, gt, EvalConfig(time_offset=TUM_T0 + 0.5))  # the last 2 frames run past the GT
    assert late.frames_matched == 4 and any("2 output frames have no GT frame" in n for n in late.notes)
    with pytest.raises(Dv4dError, match="time-offset"):
        evaluate(out, gt, EvalConfig(time_offset=0.0))


@pytest.mark.parametrize("fmt", ["kitti", "open3d"])
def test_kitti_and_open3d_roundtrip(tmp_path: Path, scene: SyntheticScene, fmt: str) -> None:
    path = (
        write_kitti(tmp_path / "poses.txt", scene)
        if fmt == "kitti"
        else write_open3d(tmp_path / "rgbd", scene)
    )
    gt = read_ground_truth(path)
    assert gt.kind == fmt and gt.num_frames == 12 and gt.c2w is not None
    np.testing.assert_allclose(gt.c2w, scene.c2w, atol=1e-9)
    out = write_output(tmp_path, scene, similarity(scene.c2w, 2.0, np.eye(3), np.zeros(3)), depth_factor=3.0)
    report = evaluate(out, gt)
    assert report.ate_sim3 is not None and report.ate_sim3 < 1e-6 and report.scale_ratio == pytest.approx(2.0)
    if fmt == "open3d":
        assert gt.image_size == (64, 48) and gt.depth is not None
        np.testing.assert_allclose(gt.depth.frame(4), np.rint(scene.depth[4] * 1000) / 1000, atol=1e-6)
        assert report.focal_error_pct == pytest.approx(0.0, abs=1e-6)
        assert report.depth_absrel is not None and report.depth_absrel < 2e-3  # mm and float16 rounding
    else:
        assert report.depth_absrel is None and "no GT depth" in report.notes


def test_depth_only_gt(tmp_path: Path, scene: SyntheticScene) -> None:
    np.save(tmp_path / "depth.npy", scene.depth[:3])
    report = evaluate(
        write_output(tmp_path, scene, scene.c2w, depth_factor=4.0), read_ground_truth(tmp_path / "depth.npy")
    )
    assert report.frames_matched == 3 and report.ate_sim3 is None and "no GT poses" in report.notes
    assert report.depth_frames == 3 and report.depth_absrel is not None and report.depth_absrel < 1e-3


def test_bad_output_folders(tmp_path: Path, scene: SyntheticScene) -> None:
    gt = read_ground_truth(write_npz(tmp_path / "gt.npz", scene))
    with pytest.raises(Dv4dError, match=r"no manifest\.json"):
        evaluate(tmp_path, gt)
    failed = tmp_path / "failed"
    failed.mkdir()
    write_json(
        failed / "manifest.json", {"schema": SCHEMA, "status": "failed", "error": {"message": "no frames"}}
    )
    with pytest.raises(Dv4dError, match="status is 'failed', not complete no frames"):
        evaluate(failed, gt)
    np.savez(tmp_path / "square.npz", poses=scene.c2w, depth=np.ones((12, 48, 48), np.float32))
    with pytest.raises(Dv4dError, match="different aspect ratio"):
        evaluate(
            write_output(tmp_path, scene, scene.c2w, name="wide"), read_ground_truth(tmp_path / "square.npz")
        )
    beyond = write_output(tmp_path, scene, scene.c2w[:2], name="beyond", frames=np.arange(2))
    K = half_res_K(scene.K)
    write_cameras(
        beyond / "cameras.npz",
        scene.c2w[:2],
        K,
        np.array([20, 21]),
        np.array([2.0, 2.1]),
        np.ones(2, bool),
        np.ones(2, bool),
    )
    with pytest.raises(Dv4dError, match="fewer frames than the video"):
        evaluate(beyond, gt)


def cli_args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    cmd_eval.add_parser(parser.add_subparsers(dest="command"))
    return parser.parse_args(["eval", *argv])


def test_cli_table_and_json_last_line(
    tmp_path: Path, scene: SyntheticScene, capsys: pytest.CaptureFixture[str]
) -> None:
    out = write_output(tmp_path, scene, scene.c2w)
    gt = write_kitti(tmp_path / "poses.txt", scene)
    assert cmd_eval.run(cli_args(str(out), str(gt)), Console(width=120)) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert any("ATE Sim(3)" in line for line in lines)
    report = json.loads(lines[-1])
    assert report["frames_posed"] == 12 and report["ate_sim3"] < 1e-6 and report["focal_error_pct"] is None
    with pytest.raises(UsageError, match="expected 8 numbers"):
        cmd_eval.run(cli_args(str(out), str(gt), "--gt-format", "tum"), Console())
    with pytest.raises(UsageError, match="does not exist"):
        cmd_eval.run(cli_args(str(out), str(tmp_path / "nope.txt")), Console())
    with pytest.raises(UsageError, match="--max-time-diff must be positive"):
        cmd_eval.run(cli_args(str(out), str(gt), "--max-time-diff", "0"), Console())


def test_ground_truth_is_typed(tmp_path: Path, scene: SyntheticScene) -> None:
    gt = read_ground_truth(write_npz(tmp_path / "gt.npz", scene))
    assert isinstance(gt, GroundTruth) and gt.c2w is not None and gt.K is not None and gt.dynamic is not None
    assert gt.c2w.dtype == np.float64 and gt.K.shape == (12, 3, 3) and gt.dynamic.dtype == bool
    assert gt.image_size == (64, 48) and gt.depth is not None and gt.depth.frame(0).dtype == np.float32
