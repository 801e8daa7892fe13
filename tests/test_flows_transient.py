"""Transient faults are retried with backoff, bad input never: the classification and the annotate task
run in Prefect's in-process engine with a stand-in pipeline."""

import errno
import os
from pathlib import Path
from typing import Any

import pytest

import dv4d.flows.annotate as annotate
from dv4d.flows.transient import TransientFault, is_transient, is_transient_exception
from dv4d.pipeline.artifacts import VideoArtifacts
from dv4d.pipeline.config import AnnotateConfig
from dv4d.pipeline.errors import IngestError
from dv4d.pipeline.run import VideoResult


@pytest.mark.parametrize(
    ("type_name", "message"),
    [
        ("OutOfMemoryError", "CUDA out of memory. Tried to allocate 2.00 GiB"),
        ("RuntimeError", "CUDA error: out of memory"),
        ("OSError", f"[Errno {errno.EIO}] Input/output error"),
        ("OSError", f"[Errno {errno.ESTALE}] Stale file handle"),
        ("TimeoutError", "timed out"),
    ],
)
def test_transient_faults(type_name: str, message: str) -> None:
    assert is_transient(type_name, message)


@pytest.mark.parametrize(
    ("type_name", "message"),
    [
        ("IngestError", f"v.mp4: cannot read: [Errno {errno.EIO}] Input/output error"),
        ("GeometryError", "no usable correspondences"),
        ("ModelError", "CUDA out of memory"),
        ("OSError", f"[Errno {errno.ENOSPC}] No space left on device"),
        ("OSError", f"[Errno {errno.EACCES}] Permission denied"),
        ("OSError", "no errno at all"),
        ("RuntimeError", "shape mismatch"),
        ("ValueError", "CUDA out of memory"),
        ("MemoryError", ""),
    ],
)
def test_deterministic_failures(type_name: str, message: str) -> None:
    assert not is_transient(type_name, message)


def test_exceptions() -> None:
    assert is_transient_exception(TransientFault("x"))
    assert is_transient_exception(OSError(errno.EIO, os.strerror(errno.EIO)))
    assert not is_transient_exception(OSError(errno.ENOENT, os.strerror(errno.ENOENT)))
    assert not is_transient_exception(IngestError("[Errno 5] Input/output error"))


class FakePipeline:
    """Stands in for ``annotate_video``: fails with the given errors (type, message), then completes."""

    def __init__(self, errors: list[tuple[str, str]]) -> None:
        self.errors = errors
        self.calls = 0

    def __call__(self, video: Path, art: VideoArtifacts, cfg: AnnotateConfig, **_: Any) -> VideoResult:
        self.calls += 1
        if self.calls <= len(self.errors):
            type_name, message = self.errors[self.calls - 1]
            art.write_failed(
                {"status": "failed", "error": {"stage": "geometry", "type": type_name, "message": message}}
            )
            return VideoResult(video, art.name, "failed", 0, 0.0, message)
        return VideoResult(video, art.name, "complete", 10, 0.0)


def run_flow(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, errors: list[tuple[str, str]]
) -> tuple[dict, int]:
    fake = FakePipeline(errors)
    monkeypatch.setattr(annotate, "annotate_video", fake)
    fast = annotate.annotate_video_task.with_options(retry_delay_seconds=0, retry_jitter_factor=None)
    monkeypatch.setattr(annotate, "annotate_video_task", fast)
    [result] = annotate.annotate_flow(
        [str(tmp_path / "v.mp4")], ["v"], str(tmp_path / "out"), AnnotateConfig().to_json()
    )
    return result, fake.calls


def test_transient_fault_is_retried_until_it_passes(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    oom = ("OutOfMemoryError", "CUDA out of memory")
    result, calls = run_flow(monkeypatch, tmp_path, [oom, (("OSError", "[Errno 5] Input/output error"))])
    assert calls == 3 and result["status"] == "complete"


def test_bad_input_is_not_retried(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    result, calls = run_flow(monkeypatch, tmp_path, [("IngestError", "v.mp4: not a video")])
    assert calls == 1 and result["status"] == "failed" and result["error"] == "v.mp4: not a video"


def test_retries_are_bounded(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    oom = ("OutOfMemoryError", "CUDA out of memory")
    result, calls = run_flow(monkeypatch, tmp_path, [oom] * 10)
    assert calls == 1 + annotate.RETRIES
    assert result["status"] == "failed" and "CUDA out of memory" in result["error"]
