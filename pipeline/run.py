"""Annotate one video: run the stages in order, resume finished ones, publish atomically.

This module is Prefect-free; ``dv4d.flows`` wraps ``annotate_video`` in a task.
"""

import logging
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from dv4d.models.errors import ModelsError
from dv4d.pipeline import stages
from dv4d.pipeline.artifacts import SCHEMA, VideoArtifacts, read_json, storage_message, write_json
from dv4d.pipeline.config import AnnotateConfig
from dv4d.pipeline.errors import Dv4dError
from dv4d.pipeline.ingest import VideoInfo, file_sha256, probe
from dv4d.pipeline.version import DV4D_VERSION


class ProgressSink(Protocol):
    """Receives progress of one video: a stage starts (with its amount of work), work advances."""

    def start_stage(self, stage: str, total: int | None) -> None: ...

    def advance(self, amount: int = 1) -> None: ...


class NullProgress:
    """A ``ProgressSink`` that shows nothing."""

    def start_stage(self, stage: str, total: int | None) -> None:
        pass

    def advance(self, amount: int = 1) -> None:
        pass


@dataclass(frozen=True)
class VideoResult:
    """Outcome of one video in a batch."""

    video: Path
    """The input path."""
    name: str
    """Its folder name under the output root."""
    status: str
    """``complete``, ``failed`` or ``skipped`` (already complete with the same config and content)."""
    frames: int
    """Sampled frames written (0 when failed before ingest finished)."""
    seconds: float
    """Wall time spent on this video in this run."""
    error: str | None = None
    """One-line reason when failed."""


def is_done(art: VideoArtifacts, sha256: str) -> bool:
    """True when the video's folder holds a complete result for this content and config."""
    manifest = art.read_final_manifest()
    return (
        manifest is not None
        and manifest.get("status") == "complete"
        and manifest.get("config_hash") == art.config_hash
        and manifest.get("video", {}).get("sha256") == sha256
    )


def finished(art: VideoArtifacts, sha256: str) -> bool:
    """``is_done``, for the check before scheduling a video: when it is done and no other process works
    on it, also removes what a run killed after publishing left behind (work folder, trash)."""
    if not is_done(art, sha256):
        return False
    with art.lock(blocking=False) as free:
        if free:
            art.sweep()
            art.discard_work()
    return True


class StageRunner:
    """Runs named stages once: a stage whose marker exists in the work folder is skipped on resume."""

    def __init__(self, art: VideoArtifacts, progress: ProgressSink, log: logging.Logger) -> None:
        self.art = art
        self.progress = progress
        self.log = log
        self.components: dict[str, dict[str, Any]] = {}
        self.current = "setup"

    def run(self, stage: str, total: int | None, fn: Callable[[], dict[str, Any]]) -> None:
        """Run ``fn`` (which writes its outputs into the work folder and returns its component record)."""
        self.current = stage
        marker = self.art.stage_marker(stage)
        done = read_json(marker)
        self.progress.start_stage(stage, total)
        if isinstance(done, dict):
            self.log.info("stage %s: already done, skipped", stage)
            self.components[stage] = done
            self.progress.advance(total or 1)
            return
        t0 = time.perf_counter()
        record = fn()
        record["seconds"] = round(time.perf_counter() - t0, 3)
        write_json(marker, record)
        self.components[stage] = record
        self.log.info("stage %s: done in %.2f s", stage, record["seconds"])


@contextmanager
def video_logger(art: VideoArtifacts, stamp: str) -> Iterator[logging.Logger]:
    """A logger writing to ``OUT/_logs/<name>-<stamp>.log`` for the duration of one video."""
    art.logs_dir.mkdir(parents=True, exist_ok=True)
    log = logging.getLogger(f"dv4d.video.{art.name}.{stamp}")
    log.setLevel(logging.INFO)
    log.propagate = False
    handler = logging.FileHandler(art.log_file(stamp), encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    log.addHandler(handler)
    try:
        yield log
    finally:
        log.removeHandler(handler)
        handler.close()


def video_record(info: VideoInfo, sha256: str) -> dict[str, Any]:
    return {
        "path": str(info.path.absolute()),
        "sha256": sha256,
        "width": info.width,
        "height": info.height,
        "fps": info.fps,
        "num_frames": info.num_frames,
        "duration_s": info.duration_s,
    }


def annotate_video(
    video: Path,
    art: VideoArtifacts,
    cfg: AnnotateConfig,
    *,
    overwrite: bool = False,
    progress: ProgressSink | None = None,
    stamp: str | None = None,
) -> VideoResult:
    """Annotate one video into ``art.final_dir``. Never raises for a problem with the video itself or
    with the output storage: the failure is recorded in a ``failed`` manifest (when it can be written)
    and returned."""
    stamp = stamp or time.strftime("%Y%m%d-%H%M%S")
    t0 = time.perf_counter()
    try:
        with video_logger(art, stamp) as log, art.lock(lambda: log.info("waiting for another process")):
            return _annotate_locked(video, art, cfg, overwrite, progress or NullProgress(), log, t0)
    except OSError as exc:  # the log or the lock could not be created: the output folder is unusable
        return VideoResult(video, art.name, "failed", 0, time.perf_counter() - t0, storage_message(exc))


def _annotate_locked(
    video: Path,
    art: VideoArtifacts,
    cfg: AnnotateConfig,
    overwrite: bool,
    sink: ProgressSink,
    log: logging.Logger,
    t0: float,
) -> VideoResult:
    """The body of ``annotate_video``, run while holding the video's lock."""
    runner = StageRunner(art, sink, log)
    base: dict[str, Any] = {"video": {"path": str(video.absolute())}}
    try:
        art.sweep()
        runner.current = "probe"
        info = probe(video)
        sha256 = file_sha256(video)
        base["video"] = video_record(info, sha256)
        if not overwrite and is_done(art, sha256):
            log.info("already complete with config %s: skipped", art.config_hash[:12])
            art.discard_work()
            manifest = art.read_final_manifest() or {}
            return VideoResult(
                video, art.name, "skipped", int(manifest["frames"]["count"]), time.perf_counter() - t0
            )
        if overwrite:
            art.discard_work()
        frames = stages.run_all(runner, info, art, cfg, log)
        manifest = stages.complete_manifest(base, runner, art, cfg)
        write_json(art.staged(art.MANIFEST), manifest)
        art.publish()
        log.info("complete: %d frames in %.1f s", frames, time.perf_counter() - t0)
        return VideoResult(video, art.name, "complete", frames, time.perf_counter() - t0)
    except (Dv4dError, ModelsError, OSError, ValueError, RuntimeError, MemoryError) as exc:
        if isinstance(exc, OSError):
            message = storage_message(exc)
        else:
            message = " ".join(str(exc).split()) or type(exc).__name__
        log.error("failed in stage %s: %s\n%s", runner.current, message, traceback.format_exc())
        failed = {
            "schema": SCHEMA,
            "status": "failed",
            **base,
            "config": cfg.to_json(),
            "config_hash": art.config_hash,
            "components": runner.components,
            "error": {"stage": runner.current, "type": type(exc).__name__, "message": message},
            "dv4d_version": DV4D_VERSION,
        }
        try:
            if not art.write_failed(failed):
                log.info("the earlier complete result in %s is kept", art.final_dir)
        except OSError as write_exc:
            log.error("the failed manifest could not be written: %s", storage_message(write_exc))
        return VideoResult(video, art.name, "failed", 0, time.perf_counter() - t0, message)
