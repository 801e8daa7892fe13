"""Writers for the output files of schema ``dv4d/1``: streamed arrays, cameras, point cloud, video.

Frame-sized arrays (``frames.npy`` in the work folder, ``depth.npy``, ``instances.npy``) are ``.npy``
files read and written by rows through ``ArrayFile`` (positional reads and writes), not memory maps: the
pages of a memory map that a process has touched stay mapped and count toward its resident memory
until the kernel reclaims them, so a memory map walked over a 10,000-frame video shows several GB of
RSS. With ``ArrayFile`` only the rows asked for are ever in memory.
"""

import contextlib
import errno
import os
import subprocess
from pathlib import Path
from types import TracebackType
from typing import Self, cast

import numpy as np

from dv4d.pipeline.artifacts import atomic_path, naming
from dv4d.pipeline.errors import Dv4dError
from dv4d.pipeline.ffmpeg import ffmpeg_executable

RowKey = int | slice | tuple[int | slice, ...]
"""An index of ``ArrayFile``: a row, a range of rows, or either followed by indices into the rows."""


class ArrayFile:
    """A C-ordered ``.npy`` file accessed by rows with ``pread``/``pwrite``; an ndarray look-alike.

    ``a[i]``, ``a[i:j]`` (any step), ``a[i, ...]`` return new arrays read from the file;
    ``a[i] = x``, ``a[i:j] = x``, ``a[i, y0:y1] = x`` write through (a sub-row index reads, modifies and
    writes back its rows). ``len``, ``shape``, ``ndim``, ``dtype`` behave as on an ndarray, so stage
    functions written for ``(F, ...)`` arrays (which only take rows) accept it (see ``as_rows``).
    """

    def __init__(self, path: Path, writable: bool = False) -> None:
        self._fd = -1
        self.path = Path(path)
        self.writable = writable
        with self.path.open("rb") as f:
            version = np.lib.format.read_magic(f)
            if version == (1, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
            else:
                shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
            self.offset = f.tell()
        if fortran or dtype.hasobject or len(shape) == 0:
            raise Dv4dError(f"{self.path}: not a C-ordered numeric array with rows")
        self.shape: tuple[int, ...] = tuple(int(s) for s in shape)
        self.dtype: np.dtype = dtype
        self.row_shape = self.shape[1:]
        self.row_bytes = int(np.prod(self.row_shape, dtype=np.int64)) * dtype.itemsize
        self._fd = os.open(self.path, os.O_RDWR if writable else os.O_RDONLY)

    def __reduce__(self) -> tuple[type["ArrayFile"], tuple[Path, bool]]:
        """Pickled by path: a copy sent to another process (a spawned DataLoader worker) reopens the file."""
        return ArrayFile, (self.path, self.writable)

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def __len__(self) -> int:
        return self.shape[0]

    def _rows(self, key: int | slice) -> tuple[range, bool]:
        """(row numbers, whether the key selects a single row)."""
        if isinstance(key, slice):
            return range(*key.indices(len(self))), False
        index = int(key)
        if not -len(self) <= index < len(self):
            raise IndexError(f"row {index} out of range for {len(self)} rows of {self.path.name}")
        return range(index % len(self), index % len(self) + 1), True

    def _read(self, start: int, count: int) -> np.ndarray:
        out = np.empty((count, *self.row_shape), self.dtype)
        view = out.reshape(-1).view(np.uint8).data
        done, offset = 0, self.offset + start * self.row_bytes
        while done < len(view):
            got = os.preadv(self._fd, [view[done:]], offset + done)
            if got == 0:
                raise Dv4dError(f"{self.path}: file ends early (truncated)")
            done += got
        return out

    def _write(self, start: int, rows: np.ndarray) -> None:
        data = np.ascontiguousarray(rows, dtype=self.dtype).reshape(-1).view(np.uint8).data
        done, offset = 0, self.offset + start * self.row_bytes
        with naming(self.path):
            while done < len(data):
                done += os.pwrite(self._fd, data[done:], offset + done)

    def __getitem__(self, key: RowKey) -> np.ndarray:
        first, rest = (key[0], key[1:]) if isinstance(key, tuple) else (key, ())
        rows, single = self._rows(first)
        if len(rows) == 0:
            data = np.empty((0, *self.row_shape), self.dtype)
        elif rows.step == 1:
            data = self._read(rows.start, len(rows))
        else:
            data = np.stack([self._read(r, 1)[0] for r in rows])
        data = data[0] if single else data
        return data[rest] if single else data[(slice(None), *rest)]

    def __setitem__(self, key: RowKey, value: np.ndarray | float | int) -> None:
        if not self.writable:
            raise ValueError(f"{self.path.name} is open read-only")
        first, rest = (key[0], key[1:]) if isinstance(key, tuple) else (key, ())
        rows, single = self._rows(first)
        if len(rows) == 0:
            return
        if rest:
            block = self[first]
            block[rest if single else (slice(None), *rest)] = value
            value = block
        full = np.broadcast_to(np.asarray(value, dtype=self.dtype), (len(rows), *self.row_shape))
        if rows.step == 1:
            self._write(rows.start, full)
        else:
            for k, r in enumerate(rows):
                self._write(r, full[k : k + 1])

    def flush(self) -> None:
        """Make what was written durable (``fsync``)."""
        with naming(self.path):
            os.fsync(self._fd)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __del__(self) -> None:
        self.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def open_array(path: Path, shape: tuple[int, ...], dtype: np.dtype | type) -> ArrayFile:
    """Create a ``.npy`` file of ``shape`` (all zeros), its space reserved at once, to be filled by rows.

    Reserving the space (``posix_fallocate``) makes a full disk or a file-size limit fail here with a
    clear ``OSError`` naming the file, never later in the middle of a stage.
    """
    dt = np.dtype(dtype)
    header = {"descr": np.lib.format.dtype_to_descr(dt), "fortran_order": False, "shape": tuple(shape)}
    nbytes = int(np.prod(shape, dtype=np.int64)) * dt.itemsize
    with naming(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("wb") as f:
            np.lib.format.write_array_header_1_0(f, header)
            f.flush()
            offset = f.tell()
            if nbytes:
                reserve(f.fileno(), offset, nbytes)
        return ArrayFile(path, writable=True)


def reserve(fd: int, offset: int, nbytes: int) -> None:
    """Allocate ``nbytes`` of disk from ``offset`` (zeros). A file system that cannot preallocate gets a
    sparse extension instead, where a full disk only shows when the rows are written."""
    try:
        os.posix_fallocate(fd, offset, nbytes)
    except OSError as exc:
        if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL):
            raise
        os.ftruncate(fd, offset + nbytes)


def load_array(path: Path) -> ArrayFile:
    """Open a ``.npy`` file (as written by ``open_array``) read-only, by rows."""
    return ArrayFile(path)


def as_rows(array: ArrayFile) -> np.ndarray:
    """``array`` for a stage function typed for ``(F, ...)`` ndarrays that only takes ``len``, ``shape``,
    ``ndim``, ``dtype`` and whole rows (``a[i]``, ``a[i:j]``), which ``ArrayFile`` provides."""
    return cast(np.ndarray, array)


def save_npy(path: Path, array: np.ndarray) -> None:
    """Write a small ``.npy`` atomically (temporary file, fsync, rename)."""
    with atomic_path(path) as tmp, tmp.open("wb") as fh:
        np.save(fh, array)


def save_npz(path: Path, **arrays: np.ndarray) -> None:
    """Write a small ``.npz`` atomically (temporary file, fsync, rename)."""
    with atomic_path(path) as tmp, tmp.open("wb") as fh:
        np.savez(fh, **arrays)  # type: ignore[arg-type]


def write_cameras(
    path: Path,
    c2w: np.ndarray,
    K: np.ndarray,
    frame_index: np.ndarray,
    timestamps: np.ndarray,
    is_keyframe: np.ndarray,
    posed: np.ndarray,
) -> None:
    """Write ``cameras.npz``: c2w (F,4,4) f64, K (F,3,3) f64, frame_index (F,) i64, timestamps (F,) f64 s,
    is_keyframe (F,) bool, posed (F,) bool (False: the pose was not solved but copied from the nearest
    solved frame). ``K`` may be given as one (3,3) matrix, repeated for every frame."""
    num = len(c2w)
    K_all = np.broadcast_to(K, (num, 3, 3)) if K.ndim == 2 else K
    arrays = {
        "c2w": np.asarray(c2w, dtype=np.float64),
        "K": np.ascontiguousarray(K_all, dtype=np.float64),
        "frame_index": np.asarray(frame_index, dtype=np.int64),
        "timestamps": np.asarray(timestamps, dtype=np.float64),
        "is_keyframe": np.asarray(is_keyframe, dtype=bool),
        "posed": np.asarray(posed, dtype=bool),
    }
    for key, value in arrays.items():
        if len(value) != num:
            raise ValueError(f"cameras.npz: {key} has {len(value)} rows, expected {num}")
    save_npz(path, **arrays)


EMPTY_PLY = (
    "ply\nformat binary_little_endian 1.0\nelement vertex 0\n"
    "property double x\nproperty double y\nproperty double z\n"
    "property uchar red\nproperty uchar green\nproperty uchar blue\nend_header\n"
)


def write_points(path: Path, points: np.ndarray, colors: np.ndarray) -> None:
    """Write a coloured point cloud (N,3) metres + (N,3) uint8 as binary PLY through open3d."""
    import open3d as o3d

    with atomic_path(path) as tmp:
        if len(points) == 0:  # open3d refuses to write an empty cloud; an empty PLY is still a valid answer
            tmp.write_text(EMPTY_PLY)
            return
        cloud = o3d.geometry.PointCloud()
        cloud.points = o3d.utility.Vector3dVector(np.asarray(points, dtype=np.float64).reshape(-1, 3))
        cloud.colors = o3d.utility.Vector3dVector(np.asarray(colors, dtype=np.float64).reshape(-1, 3) / 255.0)
        if not o3d.io.write_point_cloud(tmp, cloud, write_ascii=False):
            raise Dv4dError(f"open3d could not write {path} (disk full or not writable?)")


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
            raise Dv4dError(f"ffmpeg could not encode {self.path}: {reason}")

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
