"""Ingest: find videos, probe them (PyAV), plan the sampled frames and stream them decoded (ffmpeg).

Every problem with an input becomes an ``IngestError`` whose message is one line naming the file.
Frames are decoded by the ffmpeg command-line tool at passthrough timing (decoded frame ``k`` is the
source frame ``k`` in presentation order, as counted by ``probe`` from the demuxed packets), rotated
by the stream's display matrix, scaled to the working size and streamed through a pipe in chunks.
"""

import hashlib
import math
import os
import stat
import subprocess
import tempfile
from collections.abc import Generator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import av
import ffmpeg
import numpy as np

from dv4d.pipeline.errors import IngestError
from dv4d.pipeline.ffmpeg import ffmpeg_executable

VIDEO_EXTENSIONS = frozenset(
    {
        ".3gp", ".avi", ".flv", ".m2ts", ".m4v", ".mkv", ".mov", ".mp4", ".mpeg",
        ".mpg", ".mts", ".mxf", ".ogv", ".ts", ".webm", ".wmv", ".y4m",
    }
)  # fmt: skip
"""File name endings (lower case) that ``find_videos`` picks up inside folders."""
MIN_SIDE = 16
"""Smallest accepted side in pixels, for the source (after rotation) and for the working size."""
MAX_SIDE = 16384
"""Largest accepted source side in pixels; anything larger is treated as a corrupt or absurd header."""
_LAST_LINES = 3
"""How many lines of ffmpeg's error output are quoted (joined into one line) in a decode error."""


@dataclass(frozen=True)
class VideoInfo:
    """What ``probe`` learned about one video file."""

    path: Path
    """The file, as given (not resolved)."""
    width: int
    """Display width in pixels, after the rotation metadata is applied."""
    height: int
    """Display height in pixels, after the rotation metadata is applied."""
    rotation: int
    """Degrees clockwise to apply to decoded frames: 0, 90, 180 or 270."""
    fps: float
    """Average frame rate in frames per second (from the timestamps when there are two or more frames)."""
    num_frames: int
    """Number of frames, counted from the demuxed packets (the header's count is not trusted)."""
    duration_s: float
    """Seconds from the first frame's start to the last frame's end."""
    codec: str
    """Video codec name as FFmpeg calls it (``h264``, ``hevc``, ...)."""
    timestamps: np.ndarray
    """(num_frames,) float64 presentation times in seconds, ascending, the first one 0 (VFR-correct)."""
    stream_index: int = 0
    """Index in the container of the video stream described (the one ``iter_frames`` decodes)."""


@dataclass(frozen=True)
class SamplePlan:
    """Which source frames are sampled, in order."""

    frame_index: np.ndarray
    """(F,) int64 source frame numbers, strictly increasing."""
    timestamps: np.ndarray
    """(F,) float64 presentation times in seconds of those frames."""


def display_name(path: Path) -> str:
    """``path`` as one printable line: control characters and undecodable bytes are escaped."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in str(path))


def _fail(path: Path, reason: str) -> IngestError:
    return IngestError(f"{display_name(path)}: {' '.join(reason.split())}")


def _check_readable_file(path: Path) -> None:
    """Raise ``IngestError`` unless ``path`` is an existing, readable, non-empty regular file."""
    try:
        path.resolve(strict=True)
    except RuntimeError:
        raise _fail(path, "symlink loop") from None
    except FileNotFoundError:
        reason = "broken symlink" if path.is_symlink() else "no such file"
        raise _fail(path, reason) from None
    except OSError as exc:
        raise _fail(path, exc.strerror or type(exc).__name__) from None
    mode = path.stat().st_mode
    if stat.S_ISDIR(mode):
        raise _fail(path, "is a directory, not a video file")
    if not stat.S_ISREG(mode):
        raise _fail(path, "not a regular file")
    try:
        with path.open("rb") as f:
            if not f.read(1):
                raise _fail(path, "empty file")
    except PermissionError:
        raise _fail(path, "permission denied") from None
    except OSError as exc:
        raise _fail(path, f"cannot read: {exc.strerror or type(exc).__name__}") from None


def _rotation_cw(path: Path, container: av.container.InputContainer, stream: av.VideoStream) -> int:
    """Clockwise degrees to apply, from the display matrix on the first decoded frame."""
    try:
        frame = next(container.decode(stream), None)
    except av.FFmpegError as exc:
        raise _fail(path, f"cannot decode the first frame: {exc}") from None
    if frame is None:
        raise _fail(path, "no decodable video frame")
    counterclockwise = frame.rotation
    if counterclockwise % 90:
        raise _fail(path, f"rotation of {counterclockwise} degrees is not a multiple of 90")
    return int(-counterclockwise % 360)


def _packet_times(
    path: Path, container: av.container.InputContainer, stream: av.VideoStream
) -> tuple[np.ndarray, float]:
    """Presentation times (seconds, sorted, unshifted) of the video packets and the last packet's duration."""
    ticks: list[int] = []
    last_duration = 0
    packets = 0
    try:
        for packet in container.demux(stream):
            if packet.size == 0:
                continue
            packets += 1
            if packet.is_corrupt:
                raise _fail(path, f"truncated or corrupt: packet {packets - 1} is incomplete or damaged")
            if packet.is_discard:
                continue
            pts = packet.pts if packet.pts is not None else packet.dts
            if pts is None:
                raise _fail(path, f"packet {len(ticks)} has no timestamp")
            ticks.append(pts)
            last_duration = packet.duration or 0
    except av.FFmpegError as exc:
        raise _fail(path, f"corrupt or truncated after {len(ticks)} packets: {exc}") from None
    if packets < stream.frames:
        raise _fail(
            path, f"truncated: the header lists {stream.frames} frames but only {packets} are present"
        )
    time_base = float(stream.time_base) if stream.time_base else 0.0
    if not time_base > 0:
        raise _fail(path, "video stream has no time base")
    seconds = np.sort(np.asarray(ticks, dtype=np.int64)).astype(np.float64) * time_base
    return seconds, last_duration * time_base


def _open(path: Path) -> av.container.InputContainer:
    try:
        return av.open(str(path.absolute()), mode="r")
    except (av.FFmpegError, OSError, ValueError) as exc:
        raise _fail(path, f"not a readable video ({getattr(exc, 'strerror', None) or exc})") from None


def probe(path: Path) -> VideoInfo:
    """Validate ``path`` and describe its first video stream; ``IngestError`` naming the file if unusable.

    Frames are counted by demuxing packets (reads the file, decodes one frame), not from the header.
    """
    _check_readable_file(path)
    with _open(path) as container:
        streams = [
            s for s in container.streams.video if not s.disposition & av.stream.Disposition.attached_pic
        ]
        if not streams:
            kinds = sorted({s.type for s in container.streams}) or ["none"]
            raise _fail(path, f"no video stream (streams: {', '.join(kinds)})")
        stream = streams[0]
        src_w, src_h = stream.codec_context.width, stream.codec_context.height
        if not (MIN_SIDE <= src_w <= MAX_SIDE and MIN_SIDE <= src_h <= MAX_SIDE):
            raise _fail(
                path, f"unsupported frame size {src_w}x{src_h} (each side must be {MIN_SIDE}..{MAX_SIDE} px)"
            )
        rotation = _rotation_cw(path, container, stream)
        codec = stream.codec_context.name
        header_rate = float(stream.average_rate or stream.guessed_rate or 0)
        stream_index = stream.index
    with _open(path) as container:  # a fresh demuxer: counting starts at the very first packet
        times, last_duration = _packet_times(path, container, container.streams[stream_index])
    if times.size == 0:
        raise _fail(path, "zero video frames")
    times = times - times[0]
    span = float(times[-1])
    fps = (times.size - 1) / span if times.size > 1 and span > 0 else header_rate
    if not (math.isfinite(fps) and fps > 0):
        raise _fail(path, "cannot determine the frame rate (no timestamps spread and no rate in the header)")
    width, height = (src_h, src_w) if rotation in (90, 270) else (src_w, src_h)
    return VideoInfo(
        path=path,
        width=width,
        height=height,
        rotation=rotation,
        fps=fps,
        num_frames=int(times.size),
        duration_s=span + (last_duration if last_duration > 0 else 1.0 / fps),
        codec=codec,
        timestamps=times,
        stream_index=stream_index,
    )


def working_size(width: int, height: int, resolution: int, source: Path | None = None) -> tuple[int, int]:
    """Working size ``(W, H)``: aspect kept, long side ``min(resolution, max(width, height))``, never
    upscaled, each side rounded down to even. Raises ``IngestError`` (naming ``source`` when given) if a
    side would be below ``MIN_SIDE`` pixels."""
    long_side = max(width, height)
    target = min(resolution, long_side)
    scale = target / long_side
    w = math.floor(width * scale + 1e-9) // 2 * 2
    h = math.floor(height * scale + 1e-9) // 2 * 2
    if min(w, h) < MIN_SIDE:
        what = (
            f"{width}x{height} video" if source is None else f"{display_name(source)}: {width}x{height} video"
        )
        raise IngestError(
            f"{what} at resolution {resolution} gives {w}x{h}, below the {MIN_SIDE} px minimum side"
        )
    return w, h


def plan_sampling(info: VideoInfo, fps: float | None, max_frames: int | None) -> SamplePlan:
    """Frames to sample: every frame by default; ``fps`` keeps the first frame of each ``1/fps`` second
    slot of the timeline (dropping, never duplicating); ``max_frames`` then keeps the first ones."""
    if fps is not None and not fps > 0:
        raise ValueError(f"fps must be positive, got {fps}")
    if max_frames is not None and max_frames < 1:
        raise ValueError(f"max_frames must be at least 1, got {max_frames}")
    index = np.arange(info.num_frames, dtype=np.int64)
    if fps is not None and fps < info.fps:
        slot = np.floor(info.timestamps * fps + 1e-6).astype(np.int64)
        index = index[np.concatenate([[True], slot[1:] > slot[:-1]])]
    if max_frames is not None:
        index = index[:max_frames]
    return SamplePlan(frame_index=index, timestamps=info.timestamps[index])


_ROTATE_FILTERS: dict[int, list[tuple[str, dict[str, str]]]] = {
    0: [],
    90: [("transpose", {"dir": "clock"})],
    180: [("hflip", {}), ("vflip", {})],
    270: [("transpose", {"dir": "cclock"})],
}


def _decode_command(info: VideoInfo, size: tuple[int, int], num_frames: int) -> list[str | bytes]:
    w, h = size
    pre_w, pre_h = (h, w) if info.rotation in (90, 270) else (w, h)
    source = b"file:" + os.fsencode(info.path.absolute())  # bytes: any file name survives, even undecodable
    stream = ffmpeg.input(source, noautorotate=None)[str(info.stream_index)]
    stream = stream.filter("scale", pre_w, pre_h, flags="area")
    for name, kwargs in _ROTATE_FILTERS[info.rotation]:
        stream = stream.filter(name, **kwargs)
    out = stream.output(
        "pipe:", format="rawvideo", pix_fmt="rgb24", fps_mode="passthrough", **{"frames:v": num_frames}
    )
    return list(ffmpeg.compile(out.global_args("-nostdin", "-v", "error"), cmd=ffmpeg_executable()))


def iter_frames(
    info: VideoInfo, plan: SamplePlan, size: tuple[int, int], chunk_size: int = 32
) -> Generator[np.ndarray, None, None]:
    """Yield the planned frames as uint8 RGB chunks (n, H, W, 3), in order, ``len(plan.frame_index)`` in all.

    ``size`` is ``(W, H)`` after rotation. Frames are streamed from an ffmpeg process through a pipe;
    only one chunk is held at a time. Raises ``IngestError`` if ffmpeg fails or ends early (truncated).
    Closing the generator early (``close()``, or dropping it) stops the ffmpeg process.
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be at least 1, got {chunk_size}")
    wanted = plan.frame_index
    if wanted.size == 0:
        return
    if np.any(np.diff(wanted) <= 0) or wanted[0] < 0:
        raise ValueError("plan.frame_index must be non-negative and strictly increasing")
    w, h = size
    frame_bytes = w * h * 3
    needed = int(wanted[-1]) + 1
    with tempfile.TemporaryFile() as errors:
        proc = subprocess.Popen(
            _decode_command(info, size, needed),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=errors,
        )
        assert proc.stdout is not None
        try:
            chunk = np.empty((min(chunk_size, wanted.size), h, w, 3), np.uint8)
            filled = 0
            taken = 0
            for source_index in range(needed):
                data = proc.stdout.read(frame_bytes)
                if len(data) < frame_bytes:
                    proc.wait()
                    raise _decode_failure(
                        info, errors, f"decoding ended after {source_index} of {needed} frames"
                    )
                if source_index != wanted[taken]:
                    continue
                chunk[filled] = np.frombuffer(data, np.uint8).reshape(h, w, 3)
                filled += 1
                taken += 1
                if filled == chunk.shape[0]:
                    yield chunk
                    chunk = np.empty((min(chunk_size, wanted.size - taken), h, w, 3), np.uint8)
                    filled = 0
            if proc.wait() != 0:
                raise _decode_failure(info, errors, f"ffmpeg exited with status {proc.returncode}")
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            proc.stdout.close()


def _decode_failure(info: VideoInfo, errors: BinaryIO, what: str) -> IngestError:
    errors.seek(0)
    lines = [line.strip() for line in errors.read().decode("utf-8", "replace").splitlines() if line.strip()]
    detail = f" ({' | '.join(lines[-_LAST_LINES:])})" if lines else ""
    return _fail(info.path, f"{what}, truncated or corrupt video{detail}")


def find_videos(paths: list[Path]) -> tuple[list[Path], list[tuple[Path, str]]]:
    """Videos under ``paths`` and the problems met on the way.

    A file given directly is taken whatever its name; folders are searched recursively (following
    symlinked folders, each real folder once, so loops end) for names ending in ``VIDEO_EXTENSIONS``
    (any case). Returns ``(videos, problems)``: videos sorted and de-duplicated by real path;
    problems are ``(path, reason)`` for missing paths, broken symlinks, symlink loops, unreadable folders.
    """
    videos: dict[str, Path] = {}
    problems: list[tuple[Path, str]] = []
    seen_dirs: set[str] = set()

    def add_file(path: Path) -> None:
        videos.setdefault(os.path.realpath(path), path)

    def walk(folder: Path) -> None:
        real = os.path.realpath(folder)
        if real in seen_dirs:
            return
        seen_dirs.add(real)
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError as exc:
            problems.append((folder, f"cannot list folder: {exc.strerror or type(exc).__name__}"))
            return
        for entry in entries:
            child = Path(entry.path)
            try:
                if entry.is_dir():
                    walk(child)
                    continue
                is_file = entry.is_file()
            except OSError as exc:
                is_file = False
                reason = exc.strerror or type(exc).__name__
            else:
                reason = "not a regular file"
            if child.suffix.lower() not in VIDEO_EXTENSIONS:
                continue
            if is_file:
                add_file(child)
            else:
                problems.append((child, _link_problem(child) or reason))

    for path in paths:
        if path.is_dir():
            walk(path)
        elif path.is_file():
            add_file(path)
        else:
            problems.append(
                (
                    path,
                    _link_problem(path)
                    or ("no such file or folder" if not path.exists() else "not a regular file"),
                )
            )
    return sorted(videos.values(), key=str), problems


def _link_problem(path: Path) -> str | None:
    """Why a symlink cannot be followed (``symlink loop``, ``broken symlink``); None otherwise."""
    if not path.is_symlink():
        return None
    try:
        path.resolve(strict=True)
    except RuntimeError:
        return "symlink loop"
    except OSError:
        return "broken symlink"
    return None


def file_sha256(path: Path) -> str:
    """Hex SHA-256 of the file's bytes, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    try:
        with path.open("rb") as f:
            while block := f.read(1 << 20):
                digest.update(block)
    except OSError as exc:
        raise _fail(path, f"cannot read: {exc.strerror or type(exc).__name__}") from None
    return digest.hexdigest()
