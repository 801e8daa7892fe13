"""Memory benchmark: peak resident memory of ``dv4d annotate`` on a long generated video, and of a
dataset worker reading clips of the result.

The video shows a camera translating sideways (back and forth) in front of two textured planes at
different depths, so flow has parallax, keyframes keep coming and the geometry runs its full path.
Frames are generated in numpy and piped to ffmpeg (H.264), never all held in memory.
"""

import contextlib
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from dv4d.pipeline.errors import Dv4dError
from dv4d.pipeline.export import VideoWriter

GB = 1024**3
PAGE = os.sysconf("SC_PAGE_SIZE")


@dataclass(frozen=True)
class MemoryBenchConfig:
    """What ``dv4d bench memory`` generates and runs."""

    frames: int = 10_000
    """Frames of the generated video."""
    width: int = 1920
    """Width of the generated video in pixels."""
    height: int = 1080
    """Height of the generated video in pixels."""
    fps: float = 30.0
    """Frame rate of the generated video."""
    resolution: int = 512
    """``--resolution`` of the annotate run (long side of the working size)."""
    clip_len: int = 16
    """Frames per clip of the dataset worker measurement."""
    workdir: Path | None = None
    """Where the video and the outputs go; ``None``: a temporary folder, deleted afterwards."""

    def __post_init__(self) -> None:
        if self.frames < 2:
            raise Dv4dError(f"--frames must be at least 2, got {self.frames}")
        if self.width < 64 or self.height < 64 or self.width % 2 or self.height % 2:
            raise Dv4dError(f"--width and --height must be even and >= 64, got {self.width}x{self.height}")
        if not self.fps > 0:
            raise Dv4dError(f"--fps must be positive, got {self.fps}")
        if self.clip_len < 1 or self.clip_len > self.frames:
            raise Dv4dError(f"--clip-len must be 1..{self.frames}, got {self.clip_len}")


def _texture(rng: np.random.Generator, height: int, width: int, blob_px: int) -> np.ndarray:
    """(height, width, 3) uint8 smooth colour noise with features about ``blob_px`` wide."""
    small = rng.random((max(2, height // blob_px), max(2, width // blob_px), 3)).astype(np.float32)
    big = cv2.resize(small, (width, height), interpolation=cv2.INTER_CUBIC)
    fine = cv2.resize(
        rng.random((max(2, height // 4), max(2, width // 4), 3)).astype(np.float32),
        (width, height),
        interpolation=cv2.INTER_LINEAR,
    )
    return np.clip((0.75 * big + 0.25 * fine) * 255.0, 0, 255).astype(np.uint8)


def write_parallax_video(path: Path, cfg: MemoryBenchConfig, progress: Callable[[int], None]) -> None:
    """Encode ``cfg.frames`` frames: a camera moving sideways (a sine of amplitude a third of the width,
    period 10 s) before a far plane (moves half as much on screen) and a near plane with holes."""
    w, h = cfg.width, cfg.height
    amplitude = w // 3
    rng = np.random.default_rng(0)
    far = _texture(rng, h, w + amplitude + 2, max(8, w // 40))
    near = _texture(rng, h, w + 2 * amplitude + 2, max(8, w // 25))
    holes = _texture(rng, h, w + 2 * amplitude + 2, max(16, w // 12))[..., 0] > 128
    with VideoWriter(path, w, h, cfg.fps, crf=23) as writer:
        for start in range(0, cfg.frames, 32):
            count = min(32, cfg.frames - start)
            chunk = np.empty((count, h, w, 3), np.uint8)
            for k in range(count):
                shift = amplitude * (1.0 + math.sin(2 * math.pi * (start + k) / (10.0 * cfg.fps)))
                x_near, x_far = round(shift), round(shift / 2)
                frame = far[:, x_far : x_far + w]
                chunk[k] = np.where(holes[:, x_near : x_near + w, None], frame, near[:, x_near : x_near + w])
            writer.write(chunk)
            progress(count)


def _hwm_bytes(pid: int) -> int:
    """``VmHWM`` (the peak resident memory so far) of a live process, 0 when it is gone."""
    with contextlib.suppress(OSError), open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


def _tree_rss_bytes(root: int) -> int:
    """Summed resident memory of ``root`` and all its descendants (from ``/proc``)."""
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError, ValueError, IndexError), open(f"/proc/{entry}/stat") as f:
                parents[int(entry)] = int(f.read().rsplit(")", 1)[1].split()[1])
    tree, frontier = {root}, [root]
    while frontier:
        parent = frontier.pop()
        for pid, ppid in parents.items():
            if ppid == parent and pid not in tree:
                tree.add(pid)
                frontier.append(pid)
    total = 0
    for pid in tree:
        with contextlib.suppress(OSError, ValueError, IndexError), open(f"/proc/{pid}/statm") as f:
            total += int(f.read().split()[1]) * PAGE
    return total


@dataclass(frozen=True)
class AnnotateRun:
    """Outcome of the measured ``dv4d annotate`` child."""

    code: int
    """Exit code."""
    seconds: float
    """Wall time."""
    peak_rss: int
    """Peak resident memory of the annotate process itself (its ``VmHWM``), bytes."""
    peak_tree_rss: int
    """Peak of the summed resident memory of the process and its children (ffmpeg, Prefect's local
    server), sampled every ``SAMPLE_S``, bytes."""
    stderr_tail: str
    """Last lines of its error output."""


SAMPLE_S = 0.2
"""Sampling period of the memory of the annotate process tree, seconds."""


def _annotate(video: Path, out: Path, cfg: MemoryBenchConfig) -> AnnotateRun:
    """Run ``dv4d annotate`` (classical, CPU) in a child process and watch its memory."""
    dv4d = Path(sys.executable).with_name("dv4d")
    cmd = [str(dv4d), "annotate", str(video), "-o", str(out), "--preset", "classical", "--device", "cpu",
           "--resolution", str(cfg.resolution), "-q"]  # fmt: skip
    t0 = time.perf_counter()
    with tempfile.TemporaryFile() as errors:
        env = {"PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "300", **os.environ}
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=errors, env=env)
        peak = tree = 0
        while proc.poll() is None:
            peak = max(peak, _hwm_bytes(proc.pid))
            tree = max(tree, _tree_rss_bytes(proc.pid))
            time.sleep(SAMPLE_S)
        seconds = time.perf_counter() - t0
        errors.seek(0)
        tail = " | ".join(errors.read().decode(errors="replace").strip().splitlines()[-3:])
    return AnnotateRun(proc.returncode, seconds, peak, tree, tail)


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE


def dataset_worker_rss(root: str, clip_len: int) -> dict[str, Any]:
    """In a fresh process: read every clip of ``root`` through ``Dv4dDataset`` (all fields) and report
    the resident memory after the first clip and its peak over all clips (bytes)."""
    from dv4d.pipeline.dataset import Dv4dDataset

    dataset = Dv4dDataset(root, clip_len)
    if len(dataset) == 0:
        raise Dv4dError(f"no clip of {clip_len} frames in {root}")
    sample = dataset[0]
    clip_bytes = sum(v.numel() * v.element_size() for v in sample.values() if hasattr(v, "numel"))
    first = peak = _rss_bytes()
    t0 = time.perf_counter()
    for i in range(1, len(dataset)):
        dataset[i]
        peak = max(peak, _rss_bytes())
    return {
        "clips": len(dataset),
        "clip_bytes": clip_bytes,
        "rss_after_first_clip": first,
        "rss_peak": peak,
        "seconds": time.perf_counter() - t0,
    }


def _dataset_worker_in_child(root: Path, clip_len: int) -> dict[str, Any]:
    """``dataset_worker_rss`` in a fresh Python process (its memory is then the worker's alone)."""
    code = (
        "import json, sys\n"
        "from dv4d.pipeline.memory_bench import dataset_worker_rss\n"
        "print(json.dumps(dataset_worker_rss(sys.argv[1], int(sys.argv[2]))))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(root), str(clip_len)], capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        tail = " | ".join(done.stderr.strip().splitlines()[-3:])
        raise Dv4dError(f"the dataset worker measurement failed: {tail}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def run_memory_bench(cfg: MemoryBenchConfig, progress: Callable[[str, int, int], None]) -> dict[str, Any]:
    """Generate the video, annotate it in a child process, read it back as a dataset in another; the
    report (JSON-ready) has the peak RSS, the throughput and the dataset worker's memory growth.
    ``progress(step, done, total)`` reports the video generation."""
    folder = Path(tempfile.mkdtemp(prefix="dv4d-bench-memory-")) if cfg.workdir is None else cfg.workdir
    folder.mkdir(parents=True, exist_ok=True)
    try:
        working = cfg.resolution / max(cfg.width, cfg.height)
        need = cfg.frames * cfg.width * cfg.height * working**2 * (3 + 2 + 2) * 1.2 + 2 * GB
        free = shutil.disk_usage(folder).free
        if free < need:
            raise Dv4dError(f"{folder}: {free / GB:.1f} GB free, the run needs about {need / GB:.1f} GB")
        video = folder / "long.mp4"
        done = 0

        def generated(count: int) -> None:
            nonlocal done
            done += count
            progress("generate video", done, cfg.frames)

        t0 = time.perf_counter()
        write_parallax_video(video, cfg, generated)
        generate_s = time.perf_counter() - t0
        out = folder / "out"
        progress("annotate (child process)", 0, 1)
        run = _annotate(video, out, cfg)
        if run.code != 0:
            raise Dv4dError(f"dv4d annotate exited with {run.code}: {run.stderr_tail}")
        manifest = json.loads((out / video.stem / "manifest.json").read_text())
        progress("dataset worker (child process)", 0, 1)
        worker = _dataset_worker_in_child(out, cfg.clip_len)
        return {
            "benchmark": "memory",
            "config": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(cfg).items()},
            "frames": int(manifest["frames"]["count"]),
            "working_size": [int(manifest["frames"]["width"]), int(manifest["frames"]["height"])],
            "video_size": [cfg.width, cfg.height],
            "video_mb": round(video.stat().st_size / 1024**2, 1),
            "output_gb": round(sum(p.stat().st_size for p in (out / video.stem).iterdir()) / GB, 3),
            "generate_seconds": round(generate_s, 1),
            "seconds": round(run.seconds, 1),
            "frames_per_s": round(cfg.frames / run.seconds, 2),
            "peak_rss_gb": round(run.peak_rss / GB, 3),
            "peak_tree_rss_gb": round(run.peak_tree_rss / GB, 3),
            "stage_seconds": {k: v["seconds"] for k, v in manifest["components"].items()},
            "dataset_clips": worker["clips"],
            "dataset_clip_mb": round(worker["clip_bytes"] / 1024**2, 2),
            "dataset_rss_first_clip_gb": round(worker["rss_after_first_clip"] / GB, 3),
            "dataset_rss_peak_gb": round(worker["rss_peak"] / GB, 3),
            "dataset_rss_growth_mb": round(
                (worker["rss_peak"] - worker["rss_after_first_clip"]) / 1024**2, 1
            ),
            "cpu_count": os.cpu_count(),
        }
    finally:
        if cfg.workdir is None:
            shutil.rmtree(folder, ignore_errors=True)
