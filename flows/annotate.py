"""The ``annotate`` Prefect flow: one task per video, each calling the Prefect-free pipeline."""

import threading
from pathlib import Path
from typing import Any

from prefect import flow, task

from dv4d.pipeline.artifacts import VideoArtifacts
from dv4d.pipeline.config import AnnotateConfig
from dv4d.pipeline.run import NullProgress, ProgressSink, annotate_video

_local = threading.local()


def set_progress(sink: ProgressSink | None) -> None:
    """Show the progress of tasks run in this process on ``sink`` (the terminal of a local run)."""
    _local.sink = sink


def _progress() -> ProgressSink:
    sink = getattr(_local, "sink", None)
    return sink if sink is not None else NullProgress()


@task(name="annotate-video", task_run_name="annotate {name}")
def annotate_video_task(
    video: str, out: str, name: str, config: dict[str, Any], overwrite: bool
) -> dict[str, Any]:
    cfg = AnnotateConfig.from_json(config)
    art = VideoArtifacts(Path(out), name, cfg.config_hash())
    result = annotate_video(Path(video), art, cfg, overwrite=overwrite, progress=_progress())
    return {
        "video": str(result.video),
        "name": result.name,
        "status": result.status,
        "frames": result.frames,
        "seconds": result.seconds,
        "error": result.error,
    }


@flow(name="dv4d-annotate", log_prints=False)
def annotate_flow(
    videos: list[str], names: list[str], out: str, config: dict[str, Any], overwrite: bool = False
) -> list[dict[str, Any]]:
    """Annotate ``videos`` (with their output folder ``names``) into ``out``, one after the other."""
    return [annotate_video_task(v, out, n, config, overwrite) for v, n in zip(videos, names, strict=True)]
