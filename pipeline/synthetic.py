"""Synthetic videos with exact ground truth: a textured room, a moving camera, a moving textured box.

Pure numpy ray casting (no GL). The room is an axis-aligned box seen from inside; every wall carries a
rich multi-scale random texture so that optical flow and feature matching work. An optional rigid box
moves and spins through the room (instance id 1). Colours are supersampled; depth, dynamic mask and
instance ids come from the ray through each pixel centre. Conventions follow DESIGN.md: OpenCV
cameras, camera-to-world poses, z-depth in metres, pixel centres at integer coordinates.
"""

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from dv4d.pipeline.artifacts import atomic_path
from dv4d.pipeline.export import VideoWriter

CAMERA_MOTIONS = ("orbit", "static", "rotation", "forward")
ROOM_HALF = np.array([4.0, 1.5, 4.0])
"""Half extents (x, y, z) of the room in metres; the room is centred on ROOM_CENTRE."""
ROOM_CENTRE = np.array([0.0, 0.0, 1.0])
LOOK_TARGET = np.array([0.0, 0.1, 2.2])
"""Point the orbiting and static cameras look at (world metres)."""
TEXTURE_SIZE = 512
OBJECT_ID = 1


@dataclass(frozen=True)
class SceneConfig:
    """What to render; the same config and seed always give the same video."""

    width: int = 160
    """Image width in pixels."""
    height: int = 120
    """Image height in pixels."""
    num_frames: int = 30
    """Number of frames."""
    fps: float = 10.0
    """Frame rate; sets the timing of the moving object and the camera (seconds = index / fps)."""
    focal_px: float | None = None
    """Focal length in pixels (fx = fy); None means 0.9 * width."""
    seed: int = 0
    """Seed of the textures and of the random parts of the motions."""
    moving_object: bool = True
    """Whether a textured box moves independently through the room (instance id 1)."""
    camera_motion: str = "orbit"
    """"orbit" (arc around a point, translation + rotation), "static", "rotation" (pure pan/tilt about
    the optical centre) or "forward" (dolly forward with a gentle yaw)."""
    motion_scale: float = 1.0
    """Multiplies the camera path's extent (arc angle, pan angle, dolly distance)."""
    supersample: int = 2
    """Colour samples per pixel along each axis (anti-aliasing); depth and masks use the pixel centre."""

    def __post_init__(self) -> None:
        if self.width < 2 or self.height < 2:
            raise ValueError(f"image size must be at least 2x2, got {self.width}x{self.height}")
        if self.num_frames < 1:
            raise ValueError(f"num_frames must be >= 1, got {self.num_frames}")
        if self.fps <= 0:
            raise ValueError(f"fps must be positive, got {self.fps}")
        if self.camera_motion not in CAMERA_MOTIONS:
            raise ValueError(f"camera_motion must be one of {CAMERA_MOTIONS}, got {self.camera_motion!r}")
        if self.supersample < 1:
            raise ValueError(f"supersample must be >= 1, got {self.supersample}")


@dataclass(frozen=True)
class SyntheticScene:
    """A rendered video and its exact ground truth (F frames of H x W pixels)."""

    frames: np.ndarray
    """(F, H, W, 3) uint8 RGB."""
    c2w: np.ndarray
    """(F, 4, 4) float64 camera-to-world poses (OpenCV axes) in the room's world frame, metres."""
    K: np.ndarray
    """(3, 3) float64 intrinsics in pixels; principal point ((W-1)/2, (H-1)/2)."""
    depth: np.ndarray
    """(F, H, W) float32 z-depth in metres at each pixel centre (always > 0: the room is closed)."""
    dynamic: np.ndarray
    """(F, H, W) bool, True where the pixel centre sees the moving object."""
    instance_ids: np.ndarray
    """(F, H, W) uint16 instance id, 0 = static room."""


def look_at(position: np.ndarray, target: np.ndarray, roll: float = 0.0) -> np.ndarray:
    """(4, 4) camera-to-world pose at `position` looking at `target`, world "down" = +y, roll in radians."""
    z = target - position
    z = z / np.linalg.norm(z)
    x = np.cross(np.array([0.0, 1.0, 0.0]), z)
    x /= np.linalg.norm(x)
    y = np.cross(z, x)
    c, s = np.cos(roll), np.sin(roll)
    x, y = c * x + s * y, -s * x + c * y
    pose = np.eye(4)
    pose[:3, :3] = np.stack([x, y, z], axis=1)
    pose[:3, 3] = position
    return pose


def _rot_y(angle: float) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])


def _rot_x(angle: float) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[1.0, 0.0, 0.0], [0.0, c, -s], [0.0, s, c]])


def camera_path(cfg: SceneConfig) -> np.ndarray:
    """(F, 4, 4) float64 ground-truth camera-to-world poses for the config's motion."""
    rng = np.random.default_rng(cfg.seed + 1)
    phase = rng.uniform(0.0, 2.0 * np.pi)
    sign = rng.choice([-1.0, 1.0])
    s = np.linspace(0.0, 1.0, cfg.num_frames) if cfg.num_frames > 1 else np.zeros(1)
    scale = cfg.motion_scale
    poses = []
    for u in s:
        if cfg.camera_motion == "orbit":
            radius = 3.2
            angle = sign * np.deg2rad(30.0) * scale * (u - 0.5)
            pos = LOOK_TARGET + radius * np.array([np.sin(angle), 0.0, -np.cos(angle)])
            pos[1] += 0.15 * scale * np.sin(2.0 * np.pi * u + phase)
            pose = look_at(pos, LOOK_TARGET, roll=np.deg2rad(3.0) * np.sin(np.pi * u + phase))
        elif cfg.camera_motion == "static":
            pose = look_at(np.array([0.2, -0.1, -1.0]), LOOK_TARGET)
        elif cfg.camera_motion == "rotation":
            pose = np.eye(4)
            yaw = sign * np.deg2rad(25.0) * scale * (u - 0.5)
            pitch = np.deg2rad(5.0) * scale * np.sin(np.pi * u + phase)
            pose[:3, :3] = _rot_y(yaw) @ _rot_x(pitch)
            pose[:3, 3] = [0.1, -0.1, -1.0]
        else:
            pos = np.array([0.3 * np.sin(phase), -0.1, -1.6 + 1.6 * scale * u])
            pose = np.eye(4)
            pose[:3, :3] = _rot_y(np.deg2rad(8.0) * np.sin(np.pi * u + phase))
            pose[:3, 3] = pos
        poses.append(pose)
    return np.stack(poses)


def _object_pose(cfg: SceneConfig, index: int) -> np.ndarray:
    """(4, 4) object-to-world pose of the moving box at frame `index`."""
    t = index / cfg.fps
    duration = max(cfg.num_frames - 1, 1) / cfg.fps
    u = t / duration
    pose = np.eye(4)
    pose[:3, :3] = _rot_y(0.5 + 1.2 * u) @ _rot_x(0.3)
    pose[:3, 3] = [-0.9 + 1.8 * u, 0.35 - 0.2 * np.sin(np.pi * u), 2.0 + 0.3 * u]
    return pose


OBJECT_HALF = np.array([0.3, 0.3, 0.3])


def _texture(rng: np.random.Generator, size: int) -> np.ndarray:
    """(size, size, 3) float32 texture in [0, 1]: coloured multi-octave noise plus sharp random shapes."""
    acc = np.zeros((size, size, 3), np.float32)
    for cells in (4, 8, 16, 32, 64, 128):
        noise = rng.standard_normal((cells, cells, 3)).astype(np.float32)
        acc += cv2.resize(noise, (size, size), interpolation=cv2.INTER_CUBIC) * (cells**-0.35)
    lo, hi = np.percentile(acc, [2, 98], axis=(0, 1))
    img = np.clip((acc - lo) / (hi - lo), 0.0, 1.0)
    img = 0.15 + 0.7 * (0.6 * img + 0.4 * rng.uniform(0.2, 1.0, 3).astype(np.float32))
    for _ in range(60):
        colour = tuple(float(c) for c in rng.uniform(0.0, 1.0, 3))
        centre = (int(rng.integers(size)), int(rng.integers(size)))
        extent = int(rng.integers(6, 24))
        if rng.random() < 0.5:
            cv2.circle(img, centre, extent, colour, -1)
        else:
            corner = (centre[0] + extent, centre[1] + int(rng.integers(6, 24)))
            cv2.rectangle(img, centre, corner, colour, -1)
    return img


def _slab(origin: np.ndarray, dirs: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, ...]:
    """Per-axis ray parameters at the lower and upper slab planes (inf where the ray is parallel)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        t_lo = (lo - origin) / dirs
        t_hi = (hi - origin) / dirs
    return t_lo, t_hi


def _cast_room(origin: np.ndarray, dirs: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Exit of rays (N,3) from inside the room: ray parameter (N,), face (N,) in 0..5, hit points (N,3)."""
    t_lo, t_hi = _slab(origin, dirs, ROOM_CENTRE - ROOM_HALF, ROOM_CENTRE + ROOM_HALF)
    t_exit = np.where(dirs > 0, t_hi, t_lo)
    t_exit = np.where(np.isfinite(t_exit), t_exit, np.inf)
    axis = np.argmin(t_exit, axis=1)
    t = np.take_along_axis(t_exit, axis[:, None], axis=1)[:, 0]
    side = (np.take_along_axis(dirs, axis[:, None], axis=1)[:, 0] > 0).astype(np.int64)
    return t, 2 * axis + side, origin + t[:, None] * dirs


def _cast_box(origin: np.ndarray, dirs: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Entry of rays (object frame) into the box: ray parameter (N,) (inf on a miss), face, hit points."""
    t_lo, t_hi = _slab(origin, dirs, -OBJECT_HALF, OBJECT_HALF)
    t_near_axes = np.where(np.isnan(t_lo), -np.inf, np.minimum(t_lo, t_hi))
    t_far_axes = np.where(np.isnan(t_lo), np.inf, np.maximum(t_lo, t_hi))
    axis = np.argmax(t_near_axes, axis=1)
    t_near = np.take_along_axis(t_near_axes, axis[:, None], axis=1)[:, 0]
    t_far = t_far_axes.min(axis=1)
    hit = (t_near <= t_far) & (t_near > 1e-6)
    t = np.where(hit, t_near, np.inf)
    side = (np.take_along_axis(dirs, axis[:, None], axis=1)[:, 0] < 0).astype(np.int64)
    points = origin + np.where(hit, t_near, 0.0)[:, None] * dirs
    return t, 2 * axis + side, points


def _face_uv(points: np.ndarray, face: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Texture coordinates (N,2) in texels of the two in-plane axes of each hit, faces spanning [lo, hi]."""
    axis = face // 2
    u_axis = np.where(axis == 0, 2, 0)
    v_axis = np.where(axis == 1, 2, 1)
    rel = (points - lo) / (hi - lo) * (TEXTURE_SIZE - 1)
    rows = np.arange(len(points))
    return np.stack([rel[rows, u_axis], rel[rows, v_axis]], axis=1).astype(np.float32)


def _shade(textures: np.ndarray, face: np.ndarray, uv: np.ndarray) -> np.ndarray:
    """Bilinear texture lookup (N,3) float32 for hits on `face` (index into `textures`) at `uv` texels."""
    out = np.empty((len(face), 3), np.float32)
    for f in np.unique(face):
        sel = face == f
        n = int(sel.sum())
        # cv2.remap wants maps shorter than 32767 rows: lay the coordinates out in rows of 1024.
        coords = np.zeros((-(-n // 1024) * 1024, 2), np.float32)
        coords[:n] = uv[sel]
        maps = coords.reshape(-1, 1024, 2)
        sampled = cv2.remap(
            textures[f], maps[..., 0], maps[..., 1], cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT
        )
        out[sel] = sampled.reshape(-1, 3)[:n]
    return out


def render_scene(cfg: SceneConfig) -> SyntheticScene:
    """Render the video and its ground truth (camera poses, intrinsics, z-depth, motion masks)."""
    w, h, ss = cfg.width, cfg.height, cfg.supersample
    focal = cfg.focal_px if cfg.focal_px is not None else 0.9 * w
    K = np.array([[focal, 0.0, (w - 1) / 2], [0.0, focal, (h - 1) / 2], [0.0, 0.0, 1.0]])
    rng = np.random.default_rng(cfg.seed)
    room_tex = np.stack([_texture(rng, TEXTURE_SIZE) for _ in range(6)])
    room_tex *= np.array([0.8, 1.0, 0.9, 0.7, 0.95, 0.85], np.float32)[:, None, None, None]
    box_tex = np.stack([_texture(rng, TEXTURE_SIZE) for _ in range(6)])

    # Pixel centres first (depth, masks), then the supersampled colour rays.
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float64)
    offsets = (np.arange(ss) + 0.5) / ss - 0.5
    sub_x = (xs[..., None, None] + offsets[None, None, None, :]).repeat(ss, axis=2)
    sub_y = (ys[..., None, None] + offsets[None, None, :, None]).repeat(ss, axis=3)
    px = np.concatenate([xs.ravel(), sub_x.ravel()])
    py = np.concatenate([ys.ravel(), sub_y.ravel()])
    rays_cam = np.stack([(px - K[0, 2]) / focal, (py - K[1, 2]) / focal, np.ones_like(px)], axis=1)
    n_centre = h * w

    c2w = camera_path(cfg)
    frames = np.empty((cfg.num_frames, h, w, 3), np.uint8)
    depth = np.empty((cfg.num_frames, h, w), np.float32)
    ids = np.zeros((cfg.num_frames, h, w), np.uint16)
    for i, pose in enumerate(c2w):
        origin = pose[:3, 3]
        dirs = rays_cam @ pose[:3, :3].T
        t, face, points = _cast_room(origin, dirs)
        colour = _shade(
            room_tex, face, _face_uv(points, face, ROOM_CENTRE - ROOM_HALF, ROOM_CENTRE + ROOM_HALF)
        )
        on_object = np.zeros(len(t), bool)
        if cfg.moving_object:
            obj = _object_pose(cfg, i)
            o_origin = obj[:3, :3].T @ (origin - obj[:3, 3])
            t_box, box_face, box_points = _cast_box(o_origin, dirs @ obj[:3, :3])
            on_object = t_box < t
            t = np.where(on_object, t_box, t)
            if on_object.any():
                colour[on_object] = _shade(
                    box_tex,
                    box_face[on_object],
                    _face_uv(box_points[on_object], box_face[on_object], -OBJECT_HALF, OBJECT_HALF),
                )
        # Rays have unit z in the camera, so the ray parameter is the z-depth.
        depth[i] = t[:n_centre].reshape(h, w)
        ids[i] = np.where(on_object[:n_centre], OBJECT_ID, 0).reshape(h, w)
        sub = colour[n_centre:].reshape(h, w, ss * ss, 3).mean(axis=2)
        frames[i] = np.clip(np.rint(sub * 255.0), 0, 255).astype(np.uint8)
    return SyntheticScene(frames=frames, c2w=c2w, K=K, depth=depth, dynamic=ids > 0, instance_ids=ids)


def write_video(frames: np.ndarray, path: Path, fps: float, crf: int = 4) -> None:
    """Encode (F, H, W, 3) uint8 RGB frames as near-lossless H.264 (yuv444p), atomically.

    A crash never leaves a partial video at ``path``.
    """
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"frames must be (F, H, W, 3) uint8, got {frames.shape} {frames.dtype}")
    if len(frames) == 0:
        raise ValueError("cannot write a video with no frames")
    _, h, w, _ = frames.shape
    with atomic_path(Path(path)) as tmp, VideoWriter(tmp, w, h, fps, crf=crf, pix_fmt="yuv444p") as writer:
        writer.write(frames)
