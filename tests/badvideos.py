"""A corpus of broken and unusual video inputs, each written into a given folder on demand.

``make_all(folder)`` writes every case that applies on this machine and returns their ``Case`` records;
``expected`` says whether ingest must accept the file (``"ok"``) or reject it with a one-line
``IngestError`` naming the file (``"error"``). Videos are tiny (64x48 px, a few frames) so the whole
corpus takes a second or two. ``write_frames`` and ``write_frames_vfr`` write known numpy frames.
"""

import os
import socket
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Literal

import av
import imageio_ffmpeg
import numpy as np

W, H = 64, 48
"""Size of the ordinary test videos."""
FRAMES = 6
"""Frame count of the ordinary test videos."""


@dataclass(frozen=True)
class Case:
    """One input of the corpus."""

    name: str
    """Short identifier of the case (valid as a pytest id)."""
    path: Path
    """What to hand to ingest."""
    expected: Literal["ok", "error"]
    """``ok``: ingest must accept it; ``error``: a one-line ``IngestError`` naming the file."""
    size: tuple[int, int] | None = None
    """For ``ok`` cases: display size (width, height) after rotation."""
    num_frames: int | None = None
    """For ``ok`` cases: number of frames."""


def ffmpeg(*args: str | Path) -> None:
    """Run the imageio-ffmpeg binary quietly with ``args``; raise on failure."""
    cmd = [imageio_ffmpeg.get_ffmpeg_exe(), "-nostdin", "-v", "error", "-y", *map(str, args)]
    subprocess.run(cmd, check=True, capture_output=True)


def write_testsrc(path: Path, size: tuple[int, int] = (W, H), frames: int = FRAMES, *extra: str) -> Path:
    """Write lavfi ``testsrc`` (asymmetric pattern) at 10 fps as H.264 (``extra``: more output options)."""
    pix = [] if "-pix_fmt" in extra else ["-pix_fmt", "yuv420p"]
    lavfi = f"testsrc=size={size[0]}x{size[1]}:rate=10"
    ffmpeg("-f", "lavfi", "-i", lavfi, "-frames:v", str(frames), "-c:v", "libx264", *pix, *extra, path)
    return path


def write_frames(path: Path, frames: np.ndarray, fps: float = 10.0, *extra: str) -> Path:
    """Encode (N, H, W, 3) uint8 RGB ``frames`` near-losslessly as H.264 through a pipe to ffmpeg."""
    _, h, w, _ = frames.shape
    cmd = [
        imageio_ffmpeg.get_ffmpeg_exe(),
        "-nostdin",
        "-v",
        "error",
        "-y",
        "-f",
        "rawvideo",
        "-pix_fmt",
        "rgb24",
    ]
    cmd += [
        "-s",
        f"{w}x{h}",
        "-r",
        str(fps),
        "-i",
        "pipe:",
        "-c:v",
        "libx264",
        "-qp",
        "0",
        "-pix_fmt",
        "yuv444p",
    ]
    subprocess.run([*cmd, *extra, str(path)], input=np.ascontiguousarray(frames).tobytes(), check=True)
    return path


def write_frames_vfr(path: Path, frames: np.ndarray, times_ms: list[int]) -> Path:
    """Encode ``frames`` with PyAV as H.264 with the given presentation times in milliseconds (VFR)."""
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=30)
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuv444p"
        stream.time_base = Fraction(1, 1000)
        stream.codec_context.time_base = Fraction(1, 1000)
        stream.options = {"qp": "0"}
        for image, t in zip(frames, times_ms, strict=True):
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts = t
            frame.time_base = Fraction(1, 1000)
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    return path


def level_frames(n: int, size: tuple[int, int] = (W, H)) -> np.ndarray:
    """(n, H, W, 3) uniform grey frames whose level encodes the frame number: ``16 + 12 * k``."""
    levels = 16 + 12 * np.arange(n)
    return np.broadcast_to(levels[:, None, None, None], (n, size[1], size[0], 3)).astype(np.uint8)


def _empty(d: Path) -> Case:
    (p := d / "empty.mp4").write_bytes(b"")
    return Case("empty", p, "error")


def _text(d: Path) -> Case:
    (p := d / "notes.mp4").write_text("this is not a video\n" * 20)
    return Case("text_renamed", p, "error")


def _truncated(d: Path) -> Case:
    data = write_testsrc(d / "full.mp4").read_bytes()
    (p := d / "truncated.mp4").write_bytes(data[: len(data) // 2])
    (d / "full.mp4").unlink()
    return Case("truncated", p, "error")


def _truncated_faststart(d: Path) -> Case:
    data = write_testsrc(d / "full_fs.mp4", (W, H), 30, "-movflags", "+faststart").read_bytes()
    (p := d / "truncated_faststart.mp4").write_bytes(data[: len(data) * 2 // 3])
    (d / "full_fs.mp4").unlink()
    return Case("truncated_faststart", p, "error")


def _one_pixel(d: Path) -> Case:
    p = d / "one_pixel.mkv"
    ffmpeg("-f", "lavfi", "-i", "color=c=red:size=1x1:rate=10", "-frames:v", "3", "-c:v", "png", p)
    return Case("one_by_one", p, "error")


def _one_wide(d: Path) -> Case:
    p = d / "one_wide.mkv"
    ffmpeg("-f", "lavfi", "-i", "testsrc=size=1x48:rate=10", "-frames:v", "3", "-c:v", "png", p)
    return Case("one_pixel_wide", p, "error")


def _single_frame(d: Path) -> Case:
    return Case("single_frame", write_testsrc(d / "single.mp4", (W, H), 1), "ok", (W, H), 1)


def _audio_only(d: Path) -> Case:
    p = d / "audio_only.mp4"
    ffmpeg("-f", "lavfi", "-i", "sine=frequency=440:duration=0.5", "-c:a", "aac", p)
    return Case("audio_only", p, "error")


def _zero_frames(d: Path) -> Case:
    p = write_testsrc(d / "zero_frames.mp4", (W, H), 0)
    return Case("zero_duration", p, "error")


def _corrupt_mid(d: Path) -> Case:
    p = write_testsrc(d / "corrupt_mid.mp4", (W, H), 30, "-g", "5")
    data = bytearray(p.read_bytes())
    start = data.find(b"mdat") + 4
    end = data.find(b"moov") if data.find(b"moov") > start else len(data)
    middle = (start + end) // 2
    data[middle : middle + 400] = np.random.default_rng(0).integers(0, 256, 400, dtype=np.uint8).tobytes()
    p.write_bytes(bytes(data))
    return Case("corrupt_packets", p, "error")


def _rotated(d: Path) -> Case:
    src = write_testsrc(d / "upright.mp4")
    p = d / "phone_rotated.mp4"
    ffmpeg("-display_rotation", "90", "-i", src, "-c", "copy", p)
    src.unlink()
    return Case("rotated_phone", p, "ok", (H, W), FRAMES)


def _vfr(d: Path) -> Case:
    times = [0, 100, 200, 233, 267, 300, 500]
    return Case(
        "vfr", write_frames_vfr(d / "vfr.mp4", level_frames(len(times)), times), "ok", (W, H), len(times)
    )


def _ten_bit(d: Path) -> Case:
    return Case(
        "ten_bit",
        write_testsrc(d / "ten_bit.mp4", (W, H), FRAMES, "-pix_fmt", "yuv420p10le"),
        "ok",
        (W, H),
        FRAMES,
    )


def _gray(d: Path) -> Case:
    return Case(
        "grayscale", write_testsrc(d / "gray.mp4", (W, H), FRAMES, "-pix_fmt", "gray"), "ok", (W, H), FRAMES
    )


def _odd(d: Path) -> Case:
    return Case(
        "odd_size",
        write_testsrc(d / "odd.mp4", (63, 47), FRAMES, "-pix_fmt", "yuv444p"),
        "ok",
        (63, 47),
        FRAMES,
    )


def _space_name(d: Path) -> Case:
    return Case("space_in_name", write_testsrc(d / "my holiday clip.mp4"), "ok", (W, H), FRAMES)


def _non_utf8_name(d: Path) -> Case:
    p = Path(os.fsdecode(os.fsencode(d) + b"/clip_\xff\xfe_bytes.mp4"))
    return Case("non_utf8_name", write_testsrc(p), "ok", (W, H), FRAMES)


def _newline_name(d: Path) -> Case:
    return Case("newline_in_name", write_testsrc(d / "two\nlines.mp4"), "ok", (W, H), FRAMES)


def _dots_name(d: Path) -> Case:
    return Case("dots_in_name", write_testsrc(d / "..clip..mp4"), "ok", (W, H), FRAMES)


def _colon_dash_name(d: Path) -> Case:
    return Case("protocol_like_name", write_testsrc(d / "-i file:clip.mp4"), "ok", (W, H), FRAMES)


def _symlink_loop(d: Path) -> Case:
    a, b = d / "loop_a.mp4", d / "loop_b.mp4"
    a.symlink_to(b.name)
    b.symlink_to(a.name)
    return Case("symlink_loop", a, "error")


def _broken_symlink(d: Path) -> Case:
    (p := d / "dangling.mp4").symlink_to("does_not_exist.mp4")
    return Case("broken_symlink", p, "error")


def _directory_named_video(d: Path) -> Case:
    (p := d / "folder.mp4").mkdir()
    return Case("directory_named_mp4", p, "error")


def _socket_named_video(d: Path) -> Case:
    p = d / "socket.mp4"
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(p))
    return Case("socket_named_mp4", p, "error")


def _unreadable(d: Path) -> Case:
    p = write_testsrc(d / "unreadable.mp4")
    p.chmod(0)
    return Case("unreadable", p, "error")


def _y4m_header(path: Path, width: int, height: int) -> Path:
    """A raw YUV4MPEG2 file whose header claims ``width`` x ``height`` followed by a scrap of frame data."""
    path.write_bytes(f"YUV4MPEG2 W{width} H{height} F10:1 Ip A1:1 C420jpeg\nFRAME\n".encode() + bytes(1000))
    return path


def _huge_header(d: Path) -> Case:
    return Case("absurd_width", _y4m_header(d / "wide.y4m", 20000, 16), "error")


def _huge_area_header(d: Path) -> Case:
    return Case("absurd_area", _y4m_header(d / "huge.y4m", 40000, 30000), "error")


MAKERS: list[Callable[[Path], Case]] = [
    _empty, _text, _truncated, _truncated_faststart, _one_pixel, _one_wide, _single_frame, _audio_only,
    _zero_frames, _corrupt_mid, _rotated, _vfr, _ten_bit, _gray, _odd, _space_name, _non_utf8_name,
    _newline_name, _dots_name, _colon_dash_name, _symlink_loop, _broken_symlink, _directory_named_video,
    _socket_named_video, _unreadable, _huge_header, _huge_area_header,
]  # fmt: skip
"""Every case writer; ``make_all`` leaves out ``_unreadable`` when running as root (root reads anything)."""


def applicable_makers() -> list[Callable[[Path], Case]]:
    """The case writers that mean something for this user (no permission case for root)."""
    return [m for m in MAKERS if not (m is _unreadable and os.geteuid() == 0)]


def make_all(folder: Path) -> list[Case]:
    """Write every applicable case into ``folder`` (created if missing) and return their records."""
    folder.mkdir(parents=True, exist_ok=True)
    return [make(folder) for make in applicable_makers()]
