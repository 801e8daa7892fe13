"""The ``annotate`` Prefect flow: one task per video, each calling the Prefect-free pipeline.

The same flow runs in-process for ``dv4d annotate`` and on workers for ``dv4d submit`` (a deployment
references it by module path, ``dv4d.flows.annotate.annotate_flow``, so every node runs its installed
dv4d). Videos of one flow run are annotated one after the other, so a flow run occupies one GPU.
"""

import threading
from pathlib import Path
from typing import Any

from prefect import flow, task
from prefect.cache_policies import NO_CACHE
from prefect.tasks import exponential_backoff

from dv4d.flows.transient import TransientFault, is_transient, retry_if_transient
from dv4d.pipeline.artifacts import VideoArtifacts
from dv4d.pipeline.config import AnnotateConfig
from dv4d.pipeline.run import NullProgress, ProgressSink, annotate_video

FLOW_NAME = "dv4d-annotate"
RETRIES = 3
"""Retries of a video after a transient fault (see ``dv4d.flows.transient``)."""
RETRY_BACKOFF_S = 10.0
"""First retry delay in seconds; doubled for each further retry (10, 20, 40 s), +-50 % jitter."""

_local = threading.local()


def set_progress(sink: ProgressSink | None) -> None:
    """Show the progress of tasks run in this process on ``sink`` (the terminal of a local run)."""
    _local.sink = sink


def _progress() -> ProgressSink:
    sink = getattr(_local, "sink", None)
    return sink if sink is not None else NullProgress()


@task(
    name="annotate-video",
    task_run_name="annotate {name}",
    retries=RETRIES,
    retry_delay_seconds=exponential_backoff(RETRY_BACKOFF_S),
    retry_jitter_factor=0.5,
    retry_condition_fn=retry_if_transient,
    cache_policy=NO_CACHE,
)
def annotate_video_task(
    video: str, out: str, name: str, config: dict[str, Any], overwrite: bool
) -> dict[str, Any]:
    """Annotate one video; raises ``TransientFault`` (retried) when it failed for a transient reason."""
    cfg = AnnotateConfig.from_json(config)
    art = VideoArtifacts(Path(out), name, cfg.config_hash())
    result = annotate_video(Path(video), art, cfg, overwrite=overwrite, progress=_progress())
    if result.status == "failed":
        error = (art.read_final_manifest() or {}).get("error", {})
        if is_transient(str(error.get("type", "")), str(error.get("message", ""))):
            raise TransientFault(f"{result.video}: {result.error}")
    return {
        "video": str(result.video),
        "name": result.name,
        "status": result.status,
        "frames": result.frames,
        "seconds": result.seconds,
        "error": result.error,
    }


@flow(name=FLOW_NAME, log_prints=False)
def annotate_flow(
    videos: list[str], names: list[str], out: str, config: dict[str, Any], overwrite: bool = False
) -> list[dict[str, Any]]:
    """Annotate ``videos`` (with their output folder ``names``) into ``out``, one after the other.

    A video whose task still fails after its retries is reported as ``failed`` and the others go on.
    """
    results = []
    for video, name in zip(videos, names, strict=True):
        state = annotate_video_task(video, out, name, config, overwrite, return_state=True)
        if state.is_completed():
            results.append(state.result())
            continue
        results.append(
            {
                "video": video,
                "name": name,
                "status": "failed",
                "frames": 0,
                "seconds": 0.0,
                "error": state.message or state.name,
            }
        )
    return results
