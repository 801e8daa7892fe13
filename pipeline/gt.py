"""Ground-truth readers for ``dv4d eval``: TUM, KITTI, npz, Open3D RGB-D and depth-only ``.npy``.

Every reader returns one ``GroundTruth`` in dv4d's conventions (DESIGN.md): camera-to-world poses in
OpenCV axes, metres, seconds, z-depth with 0 = invalid, intrinsics in pixels of the GT image size.

Formats (``FORMATS``):

- ``tum``: text, one pose per line ``timestamp tx ty tz qx qy qz qw`` (camera-to-world, ``#`` comments).
  Frames are associated with a video by timestamp.
- ``kitti``: text, 12 numbers per line, the row-major 3x4 camera-to-world matrix of frame i.
- ``npz``: arrays with poses, intrinsics, depth and dynamic masks under common names (``KEY_ALIASES``),
  e.g. Pi3's ``condition.npz`` (``poses``, ``intrinsics``, ``depths``).
- ``open3d``: a folder (or its ``.log``) with ``trajectory.log`` (a metadata line then a 4x4
  camera-to-world matrix per frame), 16-bit depth PNGs in millimetres in ``depth/`` and a
  ``PinholeCameraIntrinsic`` JSON (``intrinsic_matrix`` column-major, ``width``, ``height``).
- ``depth``: a ``.npy`` (or a folder holding ``depth.npy``) of z-depth in metres, (H,W) or (N,H,W):
  depth-only ground truth, e.g. one NYU image.

Frames other than TUM's are associated with a video by source-frame index (GT frame i = video frame i).
"""

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from dv4d.pipeline.errors import Dv4dError

FORMATS = ("tum", "kitti", "npz", "open3d", "depth")

KEY_ALIASES: dict[str, tuple[str, ...]] = {
    "c2w": ("c2w", "poses", "pose", "cam2world", "camera_poses", "c2ws"),
    "w2c": ("w2c", "world2cam", "extrinsics", "extrinsic", "w2cs"),
    "K": ("K", "intrinsics", "intrinsic", "Ks", "camera_intrinsics"),
    "depth": ("depth", "depths", "depth_maps", "depthmaps"),
    "dynamic": ("dynamic", "dynamic_masks", "motion_masks", "masks", "dynamic_mask"),
    "timestamps": ("timestamps", "timestamp", "times"),
}
"""npz key names accepted for each field (first match wins). ``w2c`` keys hold world-to-camera
matrices and are inverted; ``dynamic`` holds booleans or ids (> 0 = dynamic)."""

MM_PER_M = 1000.0


@dataclass(frozen=True)
class DepthFrames:
    """Ground-truth z-depth of N frames in metres (0 = invalid), read one frame at a time.

    Either ``array`` holds every frame, or ``files`` lists one 16-bit image per frame whose values times
    ``scale`` are metres.
    """

    array: np.ndarray | None = None
    """(N, H, W) float depth in metres, or None when ``files`` is used."""
    files: tuple[Path, ...] = ()
    """Depth images, one per frame (read lazily)."""
    scale: float = 1.0
    """Metres per stored unit of ``files`` (0.001 for millimetre PNGs)."""

    def __len__(self) -> int:
        return len(self.array) if self.array is not None else len(self.files)

    def frame(self, index: int) -> np.ndarray:
        """(H, W) float32 z-depth of frame ``index`` in metres; non-finite or negative values become 0."""
        if self.array is not None:
            depth = np.asarray(self.array[index], dtype=np.float32)
        else:
            raw = cv2.imread(str(self.files[index]), cv2.IMREAD_ANYDEPTH)
            if raw is None or raw.ndim != 2:
                raise Dv4dError(f"{self.files[index]}: not a single-channel depth image")
            depth = raw.astype(np.float32) * np.float32(self.scale)
        return np.where(np.isfinite(depth) & (depth > 0), depth, np.float32(0.0))


@dataclass(frozen=True)
class GroundTruth:
    """Ground truth of one sequence of N frames, in dv4d's conventions."""

    kind: str
    """The format it was read from, one of ``FORMATS``."""
    source: Path
    """The file or folder read."""
    num_frames: int
    """N, the number of GT frames."""
    c2w: np.ndarray | None
    """(N, 4, 4) float64 camera-to-world poses (OpenCV axes, metres), or None for depth-only GT."""
    timestamps: np.ndarray | None = None
    """(N,) float64 seconds, non-decreasing (TUM files repeat rounded stamps); when given, frames are
    associated with a video by time."""
    K: np.ndarray | None = None
    """(N, 3, 3) float64 intrinsics in pixels of ``image_size``, or None."""
    image_size: tuple[int, int] | None = None
    """(width, height) in pixels of ``K`` and of the depth/mask images; None when unknown (the video's
    source size is then assumed)."""
    depth: DepthFrames | None = None
    """Per-frame z-depth in metres, or None."""
    dynamic: np.ndarray | None = None
    """(N, H, W) bool, True on independently moving objects, or None."""


def detect_format(path: Path) -> str:
    """The format of ``path`` from its extension or folder contents; ``Dv4dError`` naming what was
    expected when it cannot tell."""
    if not path.exists():
        raise Dv4dError(f"ground truth {path} does not exist")
    if path.is_dir():
        if (path / "trajectory.log").is_file():
            return "open3d"
        if (path / "depth.npy").is_file():
            return "depth"
        npz = sorted(path.glob("*.npz"))
        if len(npz) == 1:
            return "npz"
        raise Dv4dError(
            f"ground truth folder {path}: expected trajectory.log (Open3D RGB-D), depth.npy (depth only) "
            f"or exactly one .npz, found {', '.join(sorted(p.name for p in path.iterdir())[:8]) or 'nothing'}"
        )
    suffix = path.suffix.lower()
    if suffix == ".log":
        return "open3d"
    if suffix == ".npz":
        return "npz"
    if suffix == ".npy":
        return "depth"
    if suffix == ".txt":
        columns = _first_row_width(path)
        if columns == 8:
            return "tum"
        if columns == 12:
            return "kitti"
        raise Dv4dError(
            f"{path}: expected 8 numbers per line (TUM: timestamp tx ty tz qx qy qz qw) or 12 (KITTI: "
            f"3x4 pose), found {columns}"
        )
    raise Dv4dError(
        f"{path}: cannot tell the ground-truth format; expected .txt (TUM or KITTI), .npz, .npy, "
        f".log or an Open3D RGB-D folder (or pass the format: {', '.join(FORMATS)})"
    )


def read_ground_truth(path: Path, fmt: str | None = None, depth_scale: float = MM_PER_M) -> GroundTruth:
    """Read ground truth at ``path`` in format ``fmt`` (detected when None).

    ``depth_scale`` is the number of depth-PNG units per metre (Open3D RGB-D; 1000 = millimetres).
    """
    path = Path(path)
    if not path.exists():
        raise Dv4dError(f"ground truth {path} does not exist")
    kind = fmt or detect_format(path)
    if kind == "tum":
        return read_tum(path)
    if kind == "kitti":
        return read_kitti(path)
    if kind == "npz":
        return read_npz(_single(path, "*.npz") if path.is_dir() else path)
    if kind == "open3d":
        return read_open3d(path if path.is_dir() else path.parent, depth_scale)
    if kind == "depth":
        return read_depth_npy(path / "depth.npy" if path.is_dir() else path)
    raise Dv4dError(f"unknown ground-truth format {kind!r}; choose from {', '.join(FORMATS)}")


def read_tum(path: Path) -> GroundTruth:
    """TUM RGB-D trajectory: ``timestamp tx ty tz qx qy qz qw`` per line, camera-to-world."""
    rows = _numeric_rows(path, 8, "TUM (timestamp tx ty tz qx qy qz qw)")
    times = rows[:, 0]
    if np.any(np.diff(times) < 0):
        raise Dv4dError(f"{path}: TUM timestamps must not decrease from line to line")
    c2w = np.tile(np.eye(4), (len(rows), 1, 1))
    c2w[:, :3, :3] = quaternion_to_rotation(rows[:, 4:8], path)
    c2w[:, :3, 3] = rows[:, 1:4]
    return GroundTruth(kind="tum", source=path, num_frames=len(rows), c2w=c2w, timestamps=times)


def read_kitti(path: Path) -> GroundTruth:
    """KITTI odometry poses: 12 numbers per line, the row-major 3x4 camera-to-world matrix."""
    rows = _numeric_rows(path, 12, "KITTI (3x4 pose, row-major)")
    c2w = np.tile(np.eye(4), (len(rows), 1, 1))
    c2w[:, :3, :] = rows.reshape(-1, 3, 4)
    return GroundTruth(kind="kitti", source=path, num_frames=len(rows), c2w=_orthonormalized(c2w, path))


def read_npz(path: Path) -> GroundTruth:
    """Poses, intrinsics, depth, dynamic masks and timestamps from an npz (names in ``KEY_ALIASES``)."""
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {key: data[key] for key in data.files}
    except (OSError, ValueError) as exc:
        raise Dv4dError(f"{path}: not a readable npz ({exc})") from None
    found = {field: _pick(arrays, names) for field, names in KEY_ALIASES.items()}
    if found["c2w"] is None and found["w2c"] is None and found["depth"] is None:
        accepted = ", ".join(KEY_ALIASES["c2w"] + KEY_ALIASES["w2c"] + KEY_ALIASES["depth"])
        raise Dv4dError(
            f"{path}: no pose or depth array; keys are {', '.join(sorted(arrays)) or 'none'}, "
            f"expected one of {accepted}"
        )
    c2w = _poses(found["c2w"], path, "c2w") if found["c2w"] is not None else None
    if c2w is None and found["w2c"] is not None:
        c2w = np.linalg.inv(_poses(found["w2c"], path, "w2c"))
    depth = found["depth"]
    if depth is not None:
        depth = np.asarray(depth, dtype=np.float32)
        depth = depth.reshape(depth.shape[-2:])[None] if depth.ndim == 2 else depth
        if depth.ndim != 3:
            raise Dv4dError(f"{path}: depth must be (N,H,W) or (H,W), got {depth.shape}")
    num = _common_length(path, c2w=c2w, depth=depth)
    times = found["timestamps"]
    if times is not None:
        times = np.asarray(times, dtype=np.float64).reshape(-1)
        if len(times) != num or np.any(np.diff(times) < 0):
            raise Dv4dError(f"{path}: timestamps must be {num} non-decreasing values")
    dynamic = found["dynamic"]
    if dynamic is not None:
        dynamic = np.asarray(dynamic) > 0
        dynamic = dynamic[None] if dynamic.ndim == 2 else dynamic
        if dynamic.ndim != 3 or len(dynamic) != num:
            raise Dv4dError(f"{path}: dynamic masks must be ({num},H,W), got {dynamic.shape}")
    size = (depth.shape[2], depth.shape[1]) if depth is not None else None
    if dynamic is not None and depth is not None and dynamic.shape[1:] != depth.shape[1:]:
        raise Dv4dError(
            f"{path}: dynamic masks {dynamic.shape[1:]} and depth {depth.shape[1:]} differ in size"
        )
    size = size or ((dynamic.shape[2], dynamic.shape[1]) if dynamic is not None else None)
    return GroundTruth(
        kind="npz",
        source=path,
        num_frames=num,
        c2w=c2w,
        timestamps=times,
        K=_intrinsics(found["K"], num, path) if found["K"] is not None else None,
        image_size=size,
        depth=DepthFrames(array=depth) if depth is not None else None,
        dynamic=dynamic,
    )


def read_open3d(folder: Path, depth_scale: float = MM_PER_M) -> GroundTruth:
    """Open3D RGB-D folder: ``trajectory.log``, ``depth/*.png`` (``depth_scale`` units per metre) and the
    first ``*.json`` holding an ``intrinsic_matrix``."""
    log = folder / "trajectory.log"
    if not log.is_file():
        raise Dv4dError(f"{folder}: expected an Open3D trajectory.log")
    c2w = read_trajectory_log(log)
    num = len(c2w)
    depth_files = tuple(sorted((folder / "depth").glob("*.png")))
    if depth_files and len(depth_files) != num:
        raise Dv4dError(
            f"{folder}: {len(depth_files)} depth PNGs in depth/ but {num} poses in trajectory.log"
        )
    K, size = None, None
    for candidate in sorted(folder.glob("*.json")):
        intrinsics = _open3d_intrinsics(candidate)
        if intrinsics is not None:
            K, size = intrinsics
            break
    return GroundTruth(
        kind="open3d",
        source=folder,
        num_frames=num,
        c2w=c2w,
        K=np.broadcast_to(K, (num, 3, 3)).copy() if K is not None else None,
        image_size=size,
        depth=DepthFrames(files=depth_files, scale=1.0 / depth_scale) if depth_files else None,
    )


def read_trajectory_log(path: Path) -> np.ndarray:
    """(N, 4, 4) camera-to-world matrices of an Open3D/Redwood ``.log`` (3 metadata + 16 numbers a frame)."""
    try:
        values = np.array(path.read_text().split(), dtype=np.float64)
    except (ValueError, UnicodeDecodeError):
        raise Dv4dError(f"{path}: expected only numbers (3 metadata + 16 matrix entries per frame)") from None
    if len(values) == 0 or len(values) % 19:
        raise Dv4dError(f"{path}: {len(values)} numbers is not a whole number of frames (19 numbers each)")
    return _orthonormalized(values.reshape(-1, 19)[:, 3:].reshape(-1, 4, 4), path)


def read_depth_npy(path: Path) -> GroundTruth:
    """Depth-only ground truth: a ``.npy`` of z-depth in metres, (H,W), (1,1,H,W) or (N,H,W)."""
    try:
        depth = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise Dv4dError(f"{path}: not a readable .npy ({exc})") from None
    depth = np.asarray(depth, dtype=np.float32)
    if depth.ndim == 4 and depth.shape[1] == 1:
        depth = depth[:, 0]
    depth = depth[None] if depth.ndim == 2 else depth
    if depth.ndim != 3:
        raise Dv4dError(f"{path}: depth must be (H,W) or (N,H,W) metres, got {depth.shape}")
    return GroundTruth(
        kind="depth",
        source=path,
        num_frames=len(depth),
        c2w=None,
        image_size=(depth.shape[2], depth.shape[1]),
        depth=DepthFrames(array=depth),
    )


def quaternion_to_rotation(quat: np.ndarray, source: Path | str = "quaternion") -> np.ndarray:
    """(N, 3, 3) rotations of (N, 4) quaternions ``qx qy qz qw`` (normalised first)."""
    norm = np.linalg.norm(quat, axis=1, keepdims=True)
    if np.any(norm < 1e-8):
        raise Dv4dError(f"{source}: zero-length quaternion")
    x, y, z, w = (quat / norm).T
    return np.stack(
        [
            np.stack([1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)], axis=-1),
            np.stack([2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)], axis=-1),
            np.stack([2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)], axis=-1),
        ],
        axis=1,
    )


def _single(folder: Path, pattern: str) -> Path:
    matches = sorted(folder.glob(pattern))
    if len(matches) != 1:
        raise Dv4dError(f"{folder}: expected exactly one {pattern}, found {len(matches)}")
    return matches[0]


def _data_lines(path: Path) -> list[tuple[int, list[str]]]:
    """(line number, fields) of the non-empty, non-comment lines of a text file."""
    try:
        text = path.read_text()
    except UnicodeDecodeError:
        raise Dv4dError(f"{path}: not a text file") from None
    rows = []
    for number, line in enumerate(text.splitlines(), start=1):
        fields = line.replace(",", " ").split()
        if fields and not fields[0].startswith("#"):
            rows.append((number, fields))
    return rows


def _first_row_width(path: Path) -> int:
    rows = _data_lines(path)
    if not rows:
        raise Dv4dError(f"{path}: no data lines")
    return len(rows[0][1])


def _numeric_rows(path: Path, width: int, what: str) -> np.ndarray:
    rows = _data_lines(path)
    if not rows:
        raise Dv4dError(f"{path}: no data lines (expected {what})")
    for number, fields in rows:
        if len(fields) != width:
            raise Dv4dError(f"{path}:{number}: expected {width} numbers ({what}), found {len(fields)}")
    try:
        values = np.array([fields for _, fields in rows], dtype=np.float64)
    except ValueError:
        raise Dv4dError(f"{path}: non-numeric values (expected {what})") from None
    if not np.all(np.isfinite(values)):
        raise Dv4dError(f"{path}: non-finite values (expected {what})")
    return values


def _orthonormalized(c2w: np.ndarray, source: Path) -> np.ndarray:
    """``c2w`` with each rotation replaced by the nearest rotation matrix (SVD).

    Poses stored as float32 or as rounded text are off SO(3) by ~1e-7 to 1e-5, which reads as a spurious
    rotation of 0.02-0.1 degrees in the relative-pose error; rotations further off are an error.
    """
    R = c2w[:, :3, :3]
    err = np.abs(R @ np.swapaxes(R, 1, 2) - np.eye(3)).max(axis=(1, 2))
    bad = np.nonzero((err > 1e-3) | ~np.isfinite(err) | ~np.isfinite(c2w).all(axis=(1, 2)))[0]
    if len(bad) or np.any(np.linalg.det(R) < 0):
        first = bad[0] if len(bad) else int(np.argmax(np.linalg.det(R) < 0))
        raise Dv4dError(f"{source}: pose {first} is not a rigid transform (rotation not orthonormal)")
    u, _, vt = np.linalg.svd(R)
    out = c2w.copy()
    out[:, :3, :3] = u @ vt
    return out


def _pick(arrays: dict[str, np.ndarray], names: Sequence[str]) -> np.ndarray | None:
    lower = {key.lower(): key for key in arrays}
    for name in names:
        if name.lower() in lower:
            return arrays[lower[name.lower()]]
    return None


def _poses(matrices: np.ndarray, source: Path, what: str) -> np.ndarray:
    m = np.asarray(matrices, dtype=np.float64)
    if m.ndim != 3 or m.shape[1:] not in ((4, 4), (3, 4)):
        raise Dv4dError(f"{source}: {what} poses must be (N,4,4) or (N,3,4), got {m.shape}")
    out = np.tile(np.eye(4), (len(m), 1, 1))
    out[:, :3, :] = m[:, :3, :]
    return _orthonormalized(out, source)


def _intrinsics(K: np.ndarray, num: int, source: Path) -> np.ndarray:
    k = np.asarray(K, dtype=np.float64)
    if k.shape == (3, 3):
        k = np.broadcast_to(k, (num, 3, 3)).copy()
    if k.shape != (num, 3, 3):
        raise Dv4dError(f"{source}: intrinsics must be (3,3) or ({num},3,3), got {k.shape}")
    if np.any(k[:, 0, 0] <= 0) or np.any(k[:, 1, 1] <= 0):
        raise Dv4dError(f"{source}: intrinsics have non-positive focal lengths")
    return k


def _common_length(source: Path, **arrays: np.ndarray | None) -> int:
    lengths = {name: len(a) for name, a in arrays.items() if a is not None}
    if len(set(lengths.values())) != 1:
        raise Dv4dError(f"{source}: arrays disagree on the number of frames: {lengths}")
    return next(iter(lengths.values()))


def _open3d_intrinsics(path: Path) -> tuple[np.ndarray, tuple[int, int]] | None:
    """K and (width, height) of an Open3D ``PinholeCameraIntrinsic`` JSON, None for other JSON files."""
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
    if not isinstance(data, dict) or "intrinsic_matrix" not in data:
        return None
    try:
        K = np.array(data["intrinsic_matrix"], dtype=np.float64).reshape(3, 3).T
        size = (int(data["width"]), int(data["height"]))
    except (KeyError, TypeError, ValueError):
        raise Dv4dError(
            f"{path}: expected intrinsic_matrix (9 numbers, column-major), width and height"
        ) from None
    return K, size
