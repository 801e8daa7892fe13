"""Ingest: probing, working size, sampling, decoded frame content, rotation, VFR, bad inputs, discovery."""

import hashlib
import subprocess
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from badvideos import (
    FRAMES,
    Case,
    H,
    W,
    applicable_makers,
    ffmpeg,
    level_frames,
    write_frames,
    write_frames_vfr,
    write_testsrc,
)

from dv4d.pipeline.errors import IngestError
from dv4d.pipeline.ffmpeg import ffmpeg_executable
from dv4d.pipeline.ingest import (
    MIN_SIDE,
    SamplePlan,
    VideoInfo,
    display_name,
    file_sha256,
    find_videos,
    iter_frames,
    plan_sampling,
    probe,
    working_size,
)


def decode_all(
    info: VideoInfo, resolution: int = 512, fps: float | None = None, max_frames: int | None = None
) -> np.ndarray:
    """Run the whole ingest path and return every sampled frame (N, H, W, 3)."""
    size = working_size(info.width, info.height, resolution, info.path)
    chunks = list(iter_frames(info, plan_sampling(info, fps, max_frames), size, chunk_size=4))
    return np.concatenate(chunks) if chunks else np.empty((0, size[1], size[0], 3), np.uint8)


def levels_of(frames: np.ndarray) -> np.ndarray:
    """Frame numbers recovered from ``level_frames`` brightness (16 + 12 k)."""
    return np.round((frames.reshape(len(frames), -1).mean(axis=1) - 16) / 12).astype(int)


@pytest.mark.parametrize("make", applicable_makers(), ids=lambda m: m.__name__.strip("_"))
def test_corpus_case_is_accepted_or_rejected_in_one_line(
    make: Callable[[Path], Case], tmp_path: Path
) -> None:
    case = make(tmp_path)
    if case.expected == "error":
        with pytest.raises(IngestError) as err:
            decode_all(probe(case.path))
        message = str(err.value)
        assert "\n" not in message and "\r" not in message
        assert display_name(case.path) in message
        return
    info = probe(case.path)
    assert (info.width, info.height) == case.size
    assert info.num_frames == case.num_frames
    assert info.timestamps.shape == (info.num_frames,) and info.timestamps.dtype == np.float64
    assert info.timestamps[0] == 0.0 and np.all(np.diff(info.timestamps) > 0)
    frames = decode_all(info)
    w, h = working_size(info.width, info.height, 512)
    assert frames.shape == (case.num_frames, h, w, 3) and frames.dtype == np.uint8


@pytest.mark.parametrize(
    ("width", "height", "resolution", "expected"),
    [
        (64, 48, 512, (64, 48)),  # never upscaled
        (1920, 1080, 512, (512, 288)),
        (1080, 1920, 512, (288, 512)),
        (63, 47, 512, (62, 46)),  # odd source: rounded down to even
        (1000, 333, 512, (512, 170)),  # 170.5 rounded down
        (3840, 2160, 100, (100, 56)),  # 56.25 -> 56
        (1001, 1001, 501, (500, 500)),
    ],
)
def test_working_size(width: int, height: int, resolution: int, expected: tuple[int, int]) -> None:
    assert working_size(width, height, resolution) == expected


def test_working_size_rejects_too_thin_results_naming_the_file() -> None:
    with pytest.raises(IngestError, match=r"^clip\.mp4: 2000x40 video .* below the 16 px"):
        working_size(2000, 40, 512, Path("clip.mp4"))
    assert working_size(2000, 64, 512) == (512, MIN_SIDE)


def test_probe_and_decoded_content_match_frame_numbers(tmp_path: Path) -> None:
    n = 15
    info = probe(write_frames(tmp_path / "levels.mp4", level_frames(n), 10.0))
    assert info.num_frames == n and info.fps == pytest.approx(10.0) and info.codec == "h264"
    assert info.rotation == 0 and (info.width, info.height) == (W, H)
    np.testing.assert_allclose(info.timestamps, np.arange(n) / 10.0, atol=1e-6)
    assert info.duration_s == pytest.approx(1.5)
    size = working_size(info.width, info.height, 512)
    chunks = list(iter_frames(info, plan_sampling(info, None, None), size, chunk_size=4))
    assert [len(c) for c in chunks] == [4, 4, 4, 3]
    frames = np.concatenate(chunks)
    assert frames.dtype == np.uint8 and frames.shape == (n, H, W, 3)
    assert levels_of(frames).tolist() == list(range(n))
    assert np.abs(frames.astype(int) - level_frames(n).astype(int)).max() <= 2


def test_sampling_by_fps_and_max_frames_keeps_the_right_frames(tmp_path: Path) -> None:
    info = probe(write_frames(tmp_path / "levels30.mp4", level_frames(15), 30.0))
    assert info.fps == pytest.approx(30.0)
    plan = plan_sampling(info, 10.0, None)
    assert plan.frame_index.dtype == np.int64 and plan.frame_index.tolist() == [0, 3, 6, 9, 12]
    np.testing.assert_allclose(plan.timestamps, [0.0, 0.1, 0.2, 0.3, 0.4], atol=1e-6)
    assert levels_of(decode_all(info, fps=10.0)).tolist() == [0, 3, 6, 9, 12]
    assert levels_of(decode_all(info, fps=10.0, max_frames=2)).tolist() == [0, 3]
    assert levels_of(decode_all(info, max_frames=4)).tolist() == [0, 1, 2, 3]
    assert plan_sampling(info, 60.0, None).frame_index.tolist() == list(range(15))
    with pytest.raises(ValueError):
        plan_sampling(info, 0.0, None)
    with pytest.raises(ValueError):
        plan_sampling(info, None, 0)


def test_variable_frame_rate_timestamps_and_sampling(tmp_path: Path) -> None:
    times_ms = [0, 100, 200, 233, 267, 300, 500, 510]
    info = probe(write_frames_vfr(tmp_path / "vfr.mp4", level_frames(len(times_ms)), times_ms))
    np.testing.assert_allclose(info.timestamps, np.array(times_ms) / 1000, atol=1e-6)
    assert info.fps == pytest.approx(7 / 0.51)
    assert levels_of(decode_all(info)).tolist() == list(range(len(times_ms)))
    plan = plan_sampling(info, 5.0, None)  # 0.2 s slots: 0 | 0.2 .. 0.3 | 0.5 ..
    assert plan.frame_index.tolist() == [0, 2, 6]
    assert levels_of(decode_all(info, fps=5.0)).tolist() == [0, 2, 6]


@pytest.mark.parametrize(("display_rotation", "clockwise"), [(90, 270), (180, 180), (-90, 90)])
def test_rotation_metadata_is_applied(tmp_path: Path, display_rotation: int, clockwise: int) -> None:
    upright = write_testsrc(tmp_path / "upright.mp4")
    rotated = tmp_path / "rotated.mp4"
    ffmpeg("-display_rotation", str(display_rotation), "-i", upright, "-c", "copy", rotated)
    info = probe(rotated)
    assert info.rotation == clockwise
    assert (info.width, info.height) == ((H, W) if clockwise in (90, 270) else (W, H))
    frames = decode_all(info)
    reference = np.rot90(decode_all(probe(upright)), k=-clockwise // 90, axes=(1, 2))
    np.testing.assert_array_equal(frames, reference)
    # ffmpeg's own auto-rotation agrees (independent of our filter chain)
    cmd = [ffmpeg_executable(), "-v", "error", "-i", str(rotated), "-f", "rawvideo", "-pix_fmt", "rgb24", "-"]
    auto = np.frombuffer(subprocess.run(cmd, capture_output=True, check=True).stdout, np.uint8)
    np.testing.assert_array_equal(frames, auto.reshape(frames.shape))
    small = decode_all(info, resolution=32)
    assert small.shape[1:3] == ((32, 24) if clockwise in (90, 270) else (24, 32))


def test_plan_beyond_the_decodable_frames_is_an_error(tmp_path: Path) -> None:
    info = probe(write_testsrc(tmp_path / "six.mp4"))
    plan = SamplePlan(frame_index=np.array([2, FRAMES], np.int64), timestamps=np.array([0.2, 0.6]))
    with pytest.raises(IngestError, match=r"six\.mp4: decoding ended after 6 of 7 frames"):
        list(iter_frames(info, plan, (W, H)))


def test_stopping_early_ends_the_decoder(tmp_path: Path) -> None:
    info = probe(write_frames(tmp_path / "levels.mp4", level_frames(12), 10.0))
    frames = iter_frames(info, plan_sampling(info, None, None), (W, H), chunk_size=2)
    first = next(frames)
    frames.close()
    assert levels_of(first).tolist() == [0, 1]


def test_find_videos_recurses_sorts_dedups_and_reports_problems(tmp_path: Path) -> None:
    root = tmp_path / "in"
    (root / "b" / "deep").mkdir(parents=True)
    for rel in ["z.mp4", "a.MOV", "b/deep/c.Mkv", "b/readme.txt"]:
        (root / rel).write_bytes(b"x")
    (root / "b" / "loop").symlink_to("..")  # folder loop: must terminate
    (root / "alias.mp4").symlink_to("z.mp4")  # same file twice
    (root / "dangling.mp4").symlink_to("gone.mp4")
    explicit = tmp_path / "named_anything.bin"
    explicit.write_bytes(b"x")
    videos, problems = find_videos([root, root / "z.mp4", explicit, tmp_path / "missing.mp4"])
    assert videos == sorted(videos, key=str)
    # the folder walk meets alias.mp4 before z.mp4: the first name of a file wins
    assert [v.name for v in videos] == ["a.MOV", "alias.mp4", "c.Mkv", "named_anything.bin"]
    assert dict((p.name, r) for p, r in problems) == {
        "dangling.mp4": "broken symlink",
        "missing.mp4": "no such file or folder",
    }


def test_file_sha256(tmp_path: Path) -> None:
    data = bytes(range(256)) * 5000
    (p := tmp_path / "f.bin").write_bytes(data)
    assert file_sha256(p) == hashlib.sha256(data).hexdigest()
    with pytest.raises(IngestError, match=r"missing\.bin"):
        file_sha256(tmp_path / "missing.bin")


def test_error_for_a_name_with_a_newline_stays_on_one_line(tmp_path: Path) -> None:
    (bad := tmp_path / "two\nlines.mp4").write_text("not a video")
    with pytest.raises(IngestError) as err:
        probe(bad)
    assert "\n" not in str(err.value) and "two\\nlines.mp4: not a readable video" in str(err.value)


def test_truncated_file_is_caught_by_probe_before_decoding(tmp_path: Path) -> None:
    data = write_testsrc(tmp_path / "full.mp4", (W, H), 30, "-movflags", "+faststart").read_bytes()
    (cut := tmp_path / "cut.mp4").write_bytes(data[: len(data) * 2 // 3])
    with pytest.raises(IngestError, match=r"^.*cut\.mp4: truncated"):
        probe(cut)
