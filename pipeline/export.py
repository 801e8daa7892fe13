"""Writers for the output files of schema ``dv4d/1``: streamed arrays, cameras, point cloud, video."""

import contextlib
import subprocess
from pathlib import Path
from types import TracebackType
from typing import Self

import numpy as np

from dv4d.pipeline.errors import Dv4dError
from dv4d.pipeline.ffmpeg import ffmpeg_executable


def open_array(path: Path, shape: tuple[int, ...], dtype: np.dtype | type) -> np.memmap:
    """Create a memory-mapped ``.npy`` file to be filled frame by frame (never all in RAM)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    return np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=shape)


def load_array(path: Path) -> np.memmap:
    """Open a ``.npy`` file written by ``open_array`` read-only, memory-mapped."""
    return np.load(path, mmap_mode="r")


def write_cameras(
    path: Path,
    c2w: np.ndarray,
    K: np.ndarray,
    frame_index: np.ndarray,
    timestamps: np.ndarray,
    is_keyframe: np.ndarray,
) -> None:
    """Write ``cameras.npz``: c2w (F,4,4) f64, K (F,3,3) f64, frame_index (F,) i64, timestamps (F,) f64 s,
    is_keyframe (F,) bool. ``K`` may be given as one (3,3) matrix, repeated for every frame."""
    num = len(c2w)
    K_all = np.broadcast_to(K, (num, 3, 3)) if K.ndim == 2 else K
    arrays = {
        "c2w": np.asarray(c2w, dtype=np.float64),
        "K": np.ascontiguousarray(K_all, dtype=np.float64),
        "frame_index": np.asarray(frame_index, dtype=np.int64),
        "timestamps": np.asarray(timestamps, dtype=np.float64),
        "is_keyframe": np.asarray(is_keyframe, dtype=bool),
    }
    for key, value in arrays.items():
        if len(value) != num:
            raise ValueError(f"cameras.npz: {key} has {len(value)} rows, expected {num}")
    with path.open("wb") as fh:
        np.savez(
            fh,
            c2w=arrays["c2w"],
            K=arrays["K"],
            frame_index=arrays["frame_index"],
            timestamps=arrays["timestamps"],
            is_keyframe=arrays["is_keyframe"],
        )


EMPTY_PLY = (
    "ply\nformat binary_little_endian 1.0\nelement vertex 0\n"
    "property double x\nproperty double y\nproperty double z\n"
    "property uchar red\nproperty uchar green\nproperty uchar blue\nend_header\n"
)


def write_points(path: Path, points: np.ndarray, colors: np.ndarray) -> None:
    """Write a coloured point cloud (N,3) metres + (N,3) uint8 as binary PLY through open3d."""
    import open3d as o3d

    if len(points) == 0:  # open3d refuses to write an empty cloud; an empty PLY is still a valid answer
        path.write_text(EMPTY_PLY)
        return
    cloud = o3d.geometry.PointCloud()
    cloud.points = o3d.utility.Vector3dVector(np.asarray(points, dtype=np.float64).reshape(-1, 3))
    cloud.colors = o3d.utility.Vector3dVector(np.asarray(colors, dtype=np.float64).reshape(-1, 3) / 255.0)
    if not o3d.io.write_point_cloud(path, cloud, write_ascii=False):
        raise Dv4dError(f"open3d could not write {path}")


class VideoWriter:
    """Encode RGB frames (H,W,3) uint8 to H.264 mp4 through an ffmpeg pipe, chunk by chunk."""

    def __init__(
        self, path: Path, width: int, height: int, fps: float, crf: int = 18, pix_fmt: str = "yuv420p"
    ) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.shape = (height, width, 3)
        cmd = [
            ffmpeg_executable(),
            "-v", "error", "-y",
            "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{width}x{height}", "-r", f"{fps:.6f}",
            "-i", "pipe:0",
            "-an", "-c:v", "libx264", "-preset", "veryfast", "-crf", str(crf), "-g", "16",
            "-pix_fmt", pix_fmt, "-movflags", "+faststart", "-f", "mp4", str(path),
        ]  # fmt: skip
        self._proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stderr=subprocess.PIPE)

    def write(self, frames: np.ndarray) -> None:
        """Append frames (n,H,W,3) uint8."""
        if frames.shape[1:] != self.shape or frames.dtype != np.uint8:
            raise ValueError(f"VideoWriter expects (n,{self.shape}) uint8, got {frames.shape} {frames.dtype}")
        assert self._proc.stdin is not None
        try:
            self._proc.stdin.write(np.ascontiguousarray(frames).tobytes())
        except BrokenPipeError:
            self.close()

    def close(self) -> None:
        """Finish the file; raises ``Dv4dError`` with ffmpeg's message when encoding failed."""
        if self._proc.stdin is not None and not self._proc.stdin.closed:
            with contextlib.suppress(BrokenPipeError):
                self._proc.stdin.close()
        assert self._proc.stderr is not None
        err = self._proc.stderr.read()
        self._proc.wait()
        if self._proc.returncode != 0:
            lines = err.decode(errors="replace").strip().splitlines()
            reason = lines[-1] if lines else "unknown error"
            raise Dv4dError(f"ffmpeg could not encode {self.path.name}: {reason}")

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc_type is None:
            self.close()
        else:
            self._proc.kill()
            self._proc.wait()
