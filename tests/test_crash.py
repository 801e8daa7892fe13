"""Crash safety of ``dv4d annotate``: ``kill -9`` at random points, then rerun; the outputs must equal
those of an uninterrupted run, and no observer may ever see a ``complete`` manifest over partial files.

Each kill lands at a randomly chosen event of the run (a video's work folder appearing, a stage
marker appearing, the video's folder being published) plus a random delay, so kills fall inside
stages, between stages and around the publishing rename. The main process is killed first (as the
OOM killer or ``kill -9`` would do) and its orphaned children (ffmpeg, Prefect's local server) a
moment later.
"""

import contextlib
import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from dv4d.pipeline.artifacts import WORK_DIR, VideoArtifacts
from dv4d.pipeline.ingest import file_sha256
from dv4d.pipeline.run import finished
from dv4d.pipeline.synthetic import SceneConfig, render_scene, write_video

pytestmark = pytest.mark.slow

W, H, F = 96, 72, 16
VIDEOS = {"first": 1, "second": 2}
STAGES = ("ingest", "keyframes", "geometry", "depth", "instances", "captions", "export")
EVENTS = [(v, e) for v in VIDEOS for e in ("start", *STAGES, "publish")]
"""Where a kill can be aimed, in the order a run reaches them."""
KILLS = 5
ARRAY_FILES = (
    VideoArtifacts.CAMERAS,
    VideoArtifacts.DEPTH,
    VideoArtifacts.INSTANCES,
    VideoArtifacts.INSTANCES_JSON,
    VideoArtifacts.CAPTIONS,
    VideoArtifacts.RGB,
    VideoArtifacts.POINTS,
)
FINAL_FILES = {*ARRAY_FILES, VideoArtifacts.MANIFEST}
DV4D = Path(sys.executable).with_name("dv4d")
# --intrinsics skips the focal search, the slowest part of the classical geometry on a tiny clip.
ARGS = ["--preset", "classical", "--intrinsics", f"{0.9 * W},{0.9 * W},{(W - 1) / 2},{(H - 1) / 2}", "-q"]

CHILD_ENV = {**os.environ, "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "300"}
"""Prefect's local server can take long to start on a loaded machine (default limit 20 s)."""


@pytest.fixture(scope="module")
def videos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("videos")
    for name, seed in VIDEOS.items():
        scene = render_scene(SceneConfig(width=W, height=H, num_frames=F, seed=seed, supersample=1))
        write_video(scene.frames, folder / f"{name}.mp4", fps=10.0)
    return folder


def annotate(videos: Path, out: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [str(DV4D), "annotate", str(videos), "-o", str(out), *ARGS],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
        env=CHILD_ENV,
    )


def digests(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def deterministic(manifest: dict[str, Any]) -> dict[str, Any]:
    """The manifest without wall times (``components.*.seconds``)."""
    out = json.loads(json.dumps(manifest))
    for record in out["components"].values():
        record.pop("seconds")
    return out


@pytest.fixture(scope="module")
def reference(videos: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("reference")
    proc = annotate(videos, out)
    _, err = proc.communicate(timeout=900)
    assert proc.returncode == 0, err.decode()
    return out


class Watcher(threading.Thread):
    """Polls the output folder; records every moment a ``complete`` manifest sat over files that are
    missing, extra or different from the reference run's."""

    def __init__(self, out: Path, reference: Path) -> None:
        super().__init__(daemon=True)
        self.out, self.stop = out, threading.Event()
        self.expected = {v: digests(reference / v) for v in VIDEOS}
        self.violations: list[str] = []
        self.checks = 0

    def run(self) -> None:
        while not self.stop.is_set():
            for video in VIDEOS:
                folder = self.out / video
                try:
                    manifest = json.loads((folder / VideoArtifacts.MANIFEST).read_text())
                except (FileNotFoundError, NotADirectoryError):
                    continue
                except json.JSONDecodeError:
                    self.violations.append(f"{video}: manifest.json is not valid JSON")
                    continue
                if manifest.get("status") != "complete":
                    continue
                seen = digests(folder)
                self.checks += 1
                if set(seen) != FINAL_FILES:
                    self.violations.append(f"{video}: complete manifest over files {sorted(seen)}")
                bad = [n for n in ARRAY_FILES if seen.get(n) != self.expected[video][n]]
                if bad:
                    self.violations.append(f"{video}: complete manifest over partial/different {bad}")
            time.sleep(0.02)


def event_reached(out: Path, video: str, event: str) -> bool:
    """Whether the run got to ``event`` of ``video`` (or past it: the video is published)."""
    if (out / video / VideoArtifacts.MANIFEST).exists():
        return True
    work = list((out / WORK_DIR).glob(f"{video}-*"))
    if event == "start":
        return bool(work)
    return any((w / f"{event}.done.json").exists() for w in work)


def kill_at(proc: subprocess.Popen[bytes], out: Path, video: str, event: str, delay: float) -> bool:
    """SIGKILL ``proc`` ``delay`` s after ``event``; then its orphans. False if it finished first."""
    while not event_reached(out, video, event):
        if proc.poll() is not None:
            return False
        time.sleep(0.01)
    time.sleep(delay)
    if proc.poll() is not None:
        return False
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    time.sleep(0.3)  # orphans (ffmpeg finishing its file, the Prefect server) live on for a moment
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    return True


def test_kill_9_at_random_points_then_resume(videos: Path, reference: Path, tmp_path: Path) -> None:
    rng = random.Random(6)
    out = tmp_path / "out"
    watcher = Watcher(out, reference)
    watcher.start()
    targets = sorted(rng.sample(range(len(EVENTS)), KILLS))
    killed = []
    try:
        for target in targets:
            video, event = EVENTS[target]
            delay = rng.uniform(0.0, 1.5)
            if kill_at(annotate(videos, out), out, video, event, delay):
                killed.append((video, event, round(delay, 2)))
        proc = annotate(videos, out)
        _, err = proc.communicate(timeout=900)
        assert proc.returncode == 0, err.decode()
    finally:
        watcher.stop.set()
        watcher.join()
    assert len(killed) >= 3, f"too few kills landed: {killed}"
    assert watcher.violations == [], killed
    assert watcher.checks > 0
    for video in VIDEOS:
        assert digests(out / video).keys() == FINAL_FILES
        for name in ARRAY_FILES:
            assert (out / video / name).read_bytes() == (reference / video / name).read_bytes(), (video, name)
        for name in (VideoArtifacts.DEPTH, VideoArtifacts.INSTANCES):
            a, b = np.load(out / video / name), np.load(reference / video / name)
            np.testing.assert_array_equal(a, b)
        ours = json.loads((out / video / VideoArtifacts.MANIFEST).read_text())
        theirs = json.loads((reference / video / VideoArtifacts.MANIFEST).read_text())
        assert ours["status"] == "complete"
        assert deterministic(ours) == deterministic(theirs)
    # A run killed right after publishing leaves its work folder; ``finished`` (the skip check before
    # scheduling) removes it. Then nothing is left but the per-video lock files.
    config_hash = json.loads((out / "first" / VideoArtifacts.MANIFEST).read_text())["config_hash"]
    for video in VIDEOS:
        assert finished(VideoArtifacts(out, video, config_hash), file_sha256(videos / f"{video}.mp4"))
    leftovers = sorted(p.name for p in (out / WORK_DIR).iterdir())
    assert leftovers == sorted(f".lock+{v}" for v in VIDEOS), (leftovers, killed)


def test_rerun_after_completion_leaves_folders_untouched(
    videos: Path, reference: Path, tmp_path: Path
) -> None:
    before = {v: digests(reference / v) for v in VIDEOS}
    proc = annotate(videos, reference)
    _, err = proc.communicate(timeout=900)
    assert proc.returncode == 0, err.decode()
    assert {v: digests(reference / v) for v in VIDEOS} == before
