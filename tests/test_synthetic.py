"""The synthetic renderer's ground truth is exact: depth, poses and masks agree with the images."""

from pathlib import Path

import av
import cv2
import numpy as np
import pytest

from dv4d.pipeline import synthetic
from dv4d.pipeline.synthetic import SceneConfig, SyntheticScene, render_scene, write_video


@pytest.fixture(scope="module")
def scene() -> SyntheticScene:
    return render_scene(SceneConfig(num_frames=12, seed=3))


def backproject(scene: SyntheticScene, index: int) -> np.ndarray:
    """(H, W, 3) world points of every pixel centre of frame `index` from its z-depth."""
    h, w = scene.depth.shape[1:]
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float64)
    rays = np.stack([xs, ys, np.ones_like(xs)], axis=-1) @ np.linalg.inv(scene.K).T
    cam = rays * scene.depth[index][..., None]
    pose = scene.c2w[index]
    return cam @ pose[:3, :3].T + pose[:3, 3]


def test_shapes_dtypes_and_intrinsics(scene: SyntheticScene) -> None:
    f, h, w = 12, 120, 160
    assert scene.frames.shape == (f, h, w, 3) and scene.frames.dtype == np.uint8
    assert scene.c2w.shape == (f, 4, 4) and scene.c2w.dtype == np.float64
    assert scene.depth.shape == (f, h, w) and scene.depth.dtype == np.float32
    assert scene.dynamic.shape == (f, h, w) and scene.dynamic.dtype == bool
    assert scene.instance_ids.dtype == np.uint16
    np.testing.assert_array_equal(scene.dynamic, scene.instance_ids > 0)
    np.testing.assert_allclose(scene.K, [[144.0, 0, 79.5], [0, 144.0, 59.5], [0, 0, 1]])
    assert np.all(scene.depth > 0) and np.all(np.isfinite(scene.depth))
    rotations = scene.c2w[:, :3, :3]
    np.testing.assert_allclose(
        rotations @ rotations.transpose(0, 2, 1), np.broadcast_to(np.eye(3), (f, 3, 3)), atol=1e-12
    )
    np.testing.assert_allclose(np.linalg.det(rotations), 1.0)
    assert 0.005 < scene.dynamic.mean() < 0.3, "the moving box should be visible but small"


def test_depth_is_z_depth_on_the_room_walls(scene: SyntheticScene) -> None:
    # Back-projected with z-depth, static pixels land exactly on a wall; with ray length they would not.
    for index in (0, 11):
        points = backproject(scene, index)[~scene.dynamic[index]]
        rel = np.abs(points - synthetic.ROOM_CENTRE) / synthetic.ROOM_HALF
        np.testing.assert_allclose(rel.max(axis=1), 1.0, atol=1e-4)


def test_dynamic_pixels_lie_on_the_moving_box(scene: SyntheticScene) -> None:
    cfg = SceneConfig(num_frames=12, seed=3)
    for index in (0, 6, 11):
        points = backproject(scene, index)[scene.dynamic[index]]
        obj = synthetic._object_pose(cfg, index)
        local = (points - obj[:3, 3]) @ obj[:3, :3]
        np.testing.assert_allclose((np.abs(local) / synthetic.OBJECT_HALF).max(axis=1), 1.0, atol=1e-4)


def test_reprojection_with_depth_and_poses_matches_colours(scene: SyntheticScene) -> None:
    src, dst = 0, 8
    points = backproject(scene, src)
    w2c = np.linalg.inv(scene.c2w[dst])
    cam = points @ w2c[:3, :3].T + w2c[:3, 3]
    proj = cam @ scene.K.T
    uv = (proj[..., :2] / proj[..., 2:]).astype(np.float32)
    h, w = scene.depth.shape[1:]
    inside = (uv[..., 0] > 1) & (uv[..., 0] < w - 2) & (uv[..., 1] > 1) & (uv[..., 1] < h - 2)
    depth_dst = cv2.remap(scene.depth[dst], uv[..., 0], uv[..., 1], cv2.INTER_NEAREST)
    visible = inside & ~scene.dynamic[src] & (np.abs(depth_dst - cam[..., 2]) < 0.05 * cam[..., 2])
    assert visible.mean() > 0.5
    warped = cv2.remap(scene.frames[dst], uv[..., 0], uv[..., 1], cv2.INTER_LINEAR).astype(np.float64)
    error = np.abs(warped - scene.frames[src]).mean(axis=-1)[visible]
    shuffled = np.abs(np.roll(warped, 7, axis=1) - scene.frames[src]).mean(axis=-1)[visible]
    assert np.median(error) < 4.0, np.median(error)
    assert np.median(shuffled) > 5 * np.median(error)
    # The moving box does not follow the camera's motion: its pixels do not reproject onto themselves.
    moving = inside & scene.dynamic[src]
    moving_error = np.abs(warped - scene.frames[src]).mean(axis=-1)[moving]
    assert np.median(moving_error) > 3 * np.median(error)


def test_deterministic_by_seed() -> None:
    cfg = SceneConfig(width=48, height=32, num_frames=3, seed=5)
    a, b = render_scene(cfg), render_scene(cfg)
    np.testing.assert_array_equal(a.frames, b.frames)
    np.testing.assert_array_equal(a.depth, b.depth)
    other = render_scene(SceneConfig(width=48, height=32, num_frames=3, seed=6))
    assert np.abs(other.frames.astype(int) - a.frames).mean() > 10


@pytest.mark.parametrize("motion", ["static", "rotation", "forward", "orbit"])
def test_camera_motions(motion: str) -> None:
    scene = render_scene(
        SceneConfig(width=40, height=30, num_frames=5, camera_motion=motion, moving_object=False)
    )
    centres = scene.c2w[:, :3, 3]
    travel = np.linalg.norm(centres[-1] - centres[0])
    angle = np.arccos(np.clip((np.trace(scene.c2w[0, :3, :3].T @ scene.c2w[-1, :3, :3]) - 1) / 2, -1, 1))
    if motion == "static":
        assert travel == 0 and angle == 0
    elif motion == "rotation":
        assert travel == 0 and angle > np.deg2rad(10)
    else:
        assert travel > 0.5
    assert not scene.dynamic.any()


def test_custom_focal_and_bad_config() -> None:
    scene = render_scene(SceneConfig(width=40, height=30, num_frames=1, focal_px=50.0))
    assert scene.K[0, 0] == scene.K[1, 1] == 50.0
    with pytest.raises(ValueError, match="camera_motion"):
        SceneConfig(camera_motion="spin")
    with pytest.raises(ValueError, match="num_frames"):
        SceneConfig(num_frames=0)


def test_write_video_roundtrip(tmp_path: Path, scene: SyntheticScene) -> None:
    path = tmp_path / "clip.mp4"
    write_video(scene.frames, path, fps=10.0)
    with av.open(str(path)) as container:
        decoded = np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])
    assert decoded.shape == scene.frames.shape
    assert np.abs(decoded.astype(int) - scene.frames).mean() < 2.0
    assert [p.name for p in tmp_path.iterdir()] == ["clip.mp4"]
    with pytest.raises(ValueError, match="uint8"):
        write_video(scene.frames.astype(np.float32), path, fps=10.0)
