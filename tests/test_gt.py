"""Ground-truth readers: the real sample files in ../shared/data/gt and clear errors for bad input."""

from pathlib import Path

import numpy as np
import pytest

from dv4d.pipeline.errors import Dv4dError
from dv4d.pipeline.gt import detect_format, quaternion_to_rotation, read_ground_truth
from dv4d.pipeline.metrics import depth_errors

GT_ROOT = Path(__file__).resolve().parents[2] / "shared" / "data" / "gt"


def real(relative: str) -> Path:
    path = GT_ROOT / relative
    if not path.exists():
        pytest.skip(f"{path} not present")
    return path


def assert_rigid(c2w: np.ndarray) -> None:
    assert c2w.dtype == np.float64 and c2w.shape[1:] == (4, 4)
    R = c2w[:, :3, :3]
    np.testing.assert_allclose(R @ np.swapaxes(R, 1, 2), np.broadcast_to(np.eye(3), R.shape), atol=2e-3)
    np.testing.assert_allclose(np.linalg.det(R), 1.0, atol=2e-3)
    np.testing.assert_array_equal(c2w[:, 3], np.broadcast_to([0.0, 0.0, 0.0, 1.0], (len(c2w), 4)))


def reprojected_depth_agreement(gt_K: np.ndarray, c2w: np.ndarray, d0: np.ndarray, d1: np.ndarray) -> float:
    """Share of frame-0 pixels that land in frame 1 with a z-depth within 2% of frame 1's depth."""
    h, w = d0.shape
    ys, xs = np.mgrid[0:h, 0:w]
    valid = d0 > 0
    z = d0[valid]
    cam = np.stack(
        [(xs[valid] - gt_K[0, 2]) / gt_K[0, 0] * z, (ys[valid] - gt_K[1, 2]) / gt_K[1, 1] * z, z], 1
    )
    rel = np.linalg.inv(c2w[1]) @ c2w[0]
    q = cam @ rel[:3, :3].T + rel[:3, 3]
    u = np.rint(gt_K[0, 0] * q[:, 0] / q[:, 2] + gt_K[0, 2]).astype(int)
    v = np.rint(gt_K[1, 1] * q[:, 1] / q[:, 2] + gt_K[1, 2]).astype(int)
    inside = (q[:, 2] > 0) & (u >= 0) & (u < w) & (v >= 0) & (v < h)
    target = d1[v[inside], u[inside]]
    ok = target > 0
    return float(np.mean(np.abs(q[inside, 2][ok] - target[ok]) / target[ok] < 0.02))


def test_pi3_npz_is_c2w_opencv_with_z_depth() -> None:
    gt = read_ground_truth(real("pi3_room/condition.npz"))
    assert gt.kind == "npz" and gt.num_frames == 8 and gt.timestamps is None
    assert gt.c2w is not None and gt.K is not None and gt.depth is not None
    assert_rigid(gt.c2w)
    assert gt.K.shape == (8, 3, 3) and gt.image_size == (434, 350)
    np.testing.assert_allclose(gt.K[0, :2, 2], [(434 - 1) / 2, (350 - 1) / 2])
    d0, d1 = gt.depth.frame(0), gt.depth.frame(1)
    assert d0.shape == (350, 434) and d0.dtype == np.float32
    # Reading the poses as camera-to-world makes the two depth maps agree; world-to-camera would not.
    assert reprojected_depth_agreement(gt.K[0], gt.c2w[:2], d0, d1) > 0.9


def test_open3d_rgbd_folder() -> None:
    folder = real("open3d_rgbd")
    gt = read_ground_truth(folder)
    assert detect_format(folder / "trajectory.log") == "open3d"
    assert gt.kind == "open3d" and gt.num_frames == 5 and gt.image_size == (640, 480)
    assert gt.c2w is not None and gt.K is not None and gt.depth is not None
    assert_rigid(gt.c2w)
    np.testing.assert_allclose(gt.K[0], [[525.0, 0, 319.5], [0, 525.0, 239.5], [0, 0, 1]])
    d0 = gt.depth.frame(0)
    assert d0.shape == (480, 640) and 0.3 < np.median(d0[d0 > 0]) < 5.0  # millimetres read as metres
    assert reprojected_depth_agreement(gt.K[0], gt.c2w[:2], d0, gt.depth.frame(1)) > 0.9


@pytest.mark.parametrize("name", ["freiburg1_xyz-groundtruth.txt", "fr2_desk_groundtruth.txt"])
def test_tum_trajectories(name: str) -> None:
    path = real(f"tum_trajectories/{name}")
    gt = read_ground_truth(path)
    assert gt.kind == "tum" and gt.timestamps is not None and gt.c2w is not None
    assert gt.num_frames > 1000 and len(gt.timestamps) == gt.num_frames
    assert np.all(np.diff(gt.timestamps) >= 0) and gt.timestamps[0] > 1e9  # unix seconds
    assert_rigid(gt.c2w)
    first = np.array(path.read_text().splitlines()[3].split(), dtype=np.float64)
    np.testing.assert_allclose(gt.c2w[0, :3, 3], first[1:4])


def test_nyu_depth_only() -> None:
    gt = read_ground_truth(real("nyu_sample"))
    assert gt.kind == "depth" and gt.c2w is None and gt.num_frames == 1 and gt.image_size == (224, 224)
    assert gt.depth is not None and 0.5 < float(gt.depth.frame(0).min()) < float(gt.depth.frame(0).max()) < 10
    pred = read_ground_truth(real("nyu_sample/pred.npy"))  # (1,1,H,W) model output reads as one frame
    assert pred.num_frames == 1 and pred.image_size == (224, 224) and pred.depth is not None
    # The sample's prediction (FastDepth's) scores near FastDepth's published NYU delta1 of 0.771.
    absrel, delta1, coverage = depth_errors(pred.depth.frame(0), gt.depth.frame(0), median_scale=False)
    assert 0.1 < absrel < 0.2 and 0.7 < delta1 < 0.85 and coverage == 1.0


def test_quaternions() -> None:
    q = np.array(
        [[0.0, 0.0, 0.0, 1.0], [0.0, 0.0, np.sin(np.pi / 4), np.cos(np.pi / 4)], [0.0, 0.0, 0.0, 2.0]]
    )
    R = quaternion_to_rotation(q)
    np.testing.assert_allclose(R[0], np.eye(3))
    np.testing.assert_allclose(R[1], [[0, -1, 0], [1, 0, 0], [0, 0, 1]], atol=1e-12)  # 90 deg about z
    np.testing.assert_allclose(R[2], np.eye(3))  # normalised
    with pytest.raises(Dv4dError, match="zero-length"):
        quaternion_to_rotation(np.zeros((1, 4)))


def test_bad_inputs_give_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(Dv4dError, match="does not exist"):
        read_ground_truth(tmp_path / "missing.txt")
    (tmp_path / "poses.csv").write_text("1 2 3\n")
    with pytest.raises(Dv4dError, match=r"\.txt \(TUM or KITTI\)"):
        read_ground_truth(tmp_path / "poses.csv")
    (tmp_path / "five.txt").write_text("# header\n1 2 3 4 5\n")
    with pytest.raises(Dv4dError, match=r"expected 8 numbers .* or 12 .* found 5"):
        read_ground_truth(tmp_path / "five.txt")
    (tmp_path / "ragged.txt").write_text("0 0 0 0 0 0 0 1\n1 0 0 0 0 0 1\n")
    with pytest.raises(Dv4dError, match=r"ragged.txt:2: expected 8 numbers"):
        read_ground_truth(tmp_path / "ragged.txt")
    (tmp_path / "back.txt").write_text("1 0 0 0 0 0 0 1\n0.5 0 0 0 0 0 0 1\n")
    with pytest.raises(Dv4dError, match="must not decrease"):
        read_ground_truth(tmp_path / "back.txt")
    (tmp_path / "skew.txt").write_text(" ".join(["2", "0", "0", "0", "0", "1", "0", "0", "0", "0", "1", "0"]))
    with pytest.raises(Dv4dError, match="not a rigid transform"):
        read_ground_truth(tmp_path / "skew.txt")
    np.savez(tmp_path / "other.npz", foo=np.zeros(3), bar=np.ones(2))
    with pytest.raises(Dv4dError, match=r"keys are bar, foo, expected one of c2w, poses"):
        read_ground_truth(tmp_path / "other.npz")
    np.savez(tmp_path / "mixed.npz", poses=np.tile(np.eye(4), (3, 1, 1)), depths=np.ones((2, 4, 4)))
    with pytest.raises(Dv4dError, match="disagree on the number of frames"):
        read_ground_truth(tmp_path / "mixed.npz")
    empty = tmp_path / "empty_dir"
    empty.mkdir()
    with pytest.raises(Dv4dError, match=r"expected trajectory\.log"):
        read_ground_truth(empty)
    (tmp_path / "bad.log").write_text("0 0 1\n1 0 0\n")
    with pytest.raises(Dv4dError, match=r"trajectory\.log"):
        read_ground_truth(tmp_path / "bad.log")  # a .log means Open3D: its folder needs trajectory.log
    with pytest.raises(Dv4dError, match="unknown ground-truth format"):
        read_ground_truth(tmp_path / "five.txt", fmt="colmap")
