from pathlib import Path

import numpy as np
import pytest
from torch.utils.data import DataLoader

from dv4d.pipeline.artifacts import SCHEMA, VideoArtifacts, write_json
from dv4d.pipeline.dataset import Dv4dDataset, read_rgb
from dv4d.pipeline.export import VideoWriter, open_array, write_cameras

F, H, W = 40, 48, 64


def level(i: int) -> int:
    return 5 + 6 * i  # distinct, far apart after lossy coding


def make_video_dir(root: Path, name: str, status: str = "complete") -> Path:
    """A hand-made output folder with known per-frame content."""
    a = VideoArtifacts
    d = root / name
    d.mkdir(parents=True)
    frames = np.stack([np.full((H, W, 3), level(i), np.uint8) for i in range(F)])
    with VideoWriter(d / a.RGB, W, H, fps=10.0) as writer:
        writer.write(frames)
    depth = open_array(d / a.DEPTH, (F, H, W), np.float16)
    inst = open_array(d / a.INSTANCES, (F, H, W), np.uint16)
    for i in range(F):
        depth[i] = 1.0 + i
        inst[i, :10, :10] = 1  # dynamic
        inst[i, -10:, -10:] = 2  # static instance
    depth.flush()
    inst.flush()
    c2w = np.tile(np.eye(4), (F, 1, 1))
    c2w[:, 0, 3] = np.arange(F)
    K = np.array([[50.0, 0, (W - 1) / 2], [0, 50.0, (H - 1) / 2], [0, 0, 1]])
    write_cameras(
        d / a.CAMERAS, c2w, K, np.arange(F) * 2, np.arange(F) / 10.0, np.arange(F) % 5 == 0, np.ones(F, bool)
    )
    write_json(d / a.INSTANCES_JSON, [
        {"id": 1, "label": "object", "dynamic": True, "first_frame": 0, "last_frame": F - 1,
         "num_pixels": 100 * F, "caption": None},
        {"id": 2, "label": "object", "dynamic": False, "first_frame": 0, "last_frame": F - 1,
         "num_pixels": 100 * F, "caption": None},
    ])  # fmt: skip
    write_json(d / a.CAPTIONS, {"scene": None, "camera": {"text": "truck right", "source": "trajectory",
                                                          "stats": {}}, "objects": {}})  # fmt: skip
    write_json(
        d / a.MANIFEST, {"schema": SCHEMA, "status": status, "frames": {"count": F, "width": W, "height": H}}
    )
    return d


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("out")
    make_video_dir(root, "a")
    make_video_dir(root, "broken", status="failed")
    return root


def test_read_rgb_seeks_to_exact_frames(root: Path) -> None:
    for start in (0, 7, 16, 33):
        rgb = read_rgb(root / "a" / "rgb.mp4", start, 5)
        assert rgb.shape == (5, H, W, 3)
        got = rgb.reshape(5, -1).mean(axis=1)
        np.testing.assert_allclose(got, [level(start + k) for k in range(5)], atol=2.0)


def test_dataset_shapes_dtypes_and_values(root: Path) -> None:
    ds = Dv4dDataset(root, clip_len=8, stride=4)
    assert [p.name for p in ds.skipped] == ["broken"]
    assert len(ds) == (F - 8) // 4 + 1
    s = ds[2]
    assert s["start"] == 8
    assert s["rgb"].shape == (8, 3, H, W) and str(s["rgb"].dtype) == "torch.uint8"
    assert s["depth"].shape == (8, 1, H, W) and str(s["depth"].dtype) == "torch.float32"
    assert float(s["depth"][0, 0, 0, 0]) == 9.0  # frame 8 has depth 9 m
    assert s["c2w"].shape == (8, 4, 4) and float(s["c2w"][0, 0, 3]) == 8.0
    assert s["K"].shape == (8, 3, 3)
    assert s["instances"].shape == (8, H, W)
    assert bool(s["dynamic"][0, 0, 0]) and not bool(s["dynamic"][0, -1, -1])
    assert s["captions"]["camera"] == "truck right"


def test_dataset_fields_subset_and_errors(root: Path) -> None:
    s = Dv4dDataset(root, clip_len=4, fields=("c2w",))[0]
    assert set(s) == {"video", "start", "c2w"}
    with pytest.raises(ValueError, match="unknown fields"):
        Dv4dDataset(root, clip_len=4, fields=("bogus",))
    with pytest.raises(ValueError):
        Dv4dDataset(root, clip_len=0)


def test_dataloader_with_workers(root: Path) -> None:
    ds = Dv4dDataset(root, clip_len=10)
    # spawn: pytest runs Prefect flows in this same process first, and a forked child of a process that
    # ran Prefect's ephemeral server exits with status 1; trainers do not run flows in their loader process.
    batches = list(DataLoader(ds, batch_size=2, num_workers=2, multiprocessing_context="spawn"))
    assert len(batches) == 2
    assert batches[0]["rgb"].shape == (2, 10, 3, H, W)
    assert batches[1]["start"].tolist() == [20, 30]


def test_write_points_round_trip_and_empty(tmp_path: Path) -> None:
    import open3d as o3d

    from dv4d.pipeline.export import write_points

    pts = np.array([[0.0, 1.0, 2.0], [3.0, 4.0, 5.0]])
    write_points(tmp_path / "a.ply", pts, np.array([[255, 0, 0], [0, 255, 0]], np.uint8))
    cloud = o3d.io.read_point_cloud(str(tmp_path / "a.ply"))
    np.testing.assert_allclose(np.asarray(cloud.points), pts)
    np.testing.assert_allclose(np.asarray(cloud.colors)[0], [1, 0, 0])
    write_points(tmp_path / "empty.ply", np.zeros((0, 3)), np.zeros((0, 3), np.uint8))
    assert len(o3d.io.read_point_cloud(str(tmp_path / "empty.ply")).points) == 0


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


def test_worker_memory_grows_with_the_clip_not_the_video(tmp_path: Path) -> None:
    """Reading every clip of a video whose depth + instances hold 64 MiB adds only a few MiB of RSS
    (a memory map would keep every page it read resident)."""
    a, frames, side = VideoArtifacts, 256, 256
    d = tmp_path / "long"
    depth = open_array(d / a.DEPTH, (frames, side, side), np.float16)
    inst = open_array(d / a.INSTANCES, (frames, side, side), np.uint16)
    for i in range(frames):
        depth[i] = float(i)
        inst[i] = i % 7
    write_cameras(d / a.CAMERAS, np.tile(np.eye(4), (frames, 1, 1)), np.eye(3), np.arange(frames),
                  np.arange(frames) / 10.0, np.ones(frames, bool), np.ones(frames, bool))  # fmt: skip
    write_json(d / a.INSTANCES_JSON, [])
    write_json(d / a.CAPTIONS, {"scene": None, "camera": {"text": "static", "source": "trajectory"}})
    write_json(d / a.MANIFEST, {"schema": SCHEMA, "status": "complete", "frames": {"count": frames}})
    ds = Dv4dDataset(tmp_path, clip_len=8, fields=("depth", "instances", "dynamic", "c2w"))
    ds[0]
    before = rss_bytes()
    for i in range(len(ds)):
        assert float(ds[i]["depth"][0, 0, 0, 0]) == 8.0 * i
    assert rss_bytes() - before < 12 * 2**20
