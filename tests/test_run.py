"""``annotate_video`` on storage failures: a full disk, a file size limit, an unwritable output folder.

Each gives one line naming the path, a ``failed`` manifest (never in place of a ``complete`` result) and
nothing half-written; once the space is back, the same command resumes and completes.
"""

import errno
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from dv4d.flows.cli import EXIT_USAGE, main
from dv4d.pipeline import export
from dv4d.pipeline.artifacts import WORK_DIR, VideoArtifacts
from dv4d.pipeline.config import AnnotateConfig
from dv4d.pipeline.run import annotate_video
from dv4d.pipeline.synthetic import SceneConfig, render_scene, write_video

W, H, F = 96, 72, 12
CFG = AnnotateConfig(preset="classical", device="cpu")


@pytest.fixture(scope="module")
def video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A static camera (the geometry stage is quick) watching a moving box."""
    path = tmp_path_factory.mktemp("videos") / "clip.mp4"
    scene = render_scene(SceneConfig(width=W, height=H, num_frames=F, camera_motion="static", supersample=1))
    write_video(scene.frames, path, fps=10.0)
    return path


def artifacts(out: Path) -> VideoArtifacts:
    return VideoArtifacts(out, "clip", CFG.config_hash())


def dot_files(out: Path) -> list[Path]:
    return [p for p in out.rglob(".*") if p.is_file() and not p.name.startswith(".lock+")]


def failing_reserve(fail_at: int) -> object:
    """A stand-in for ``export.reserve`` whose ``fail_at``-th call finds the disk full."""
    calls = []
    real = export.reserve

    def reserve(fd: int, offset: int, nbytes: int) -> None:
        calls.append(nbytes)
        if len(calls) == fail_at:
            raise OSError(errno.ENOSPC, "No space left on device")
        real(fd, offset, nbytes)

    return reserve


def test_full_disk_mid_run_fails_with_the_path_then_resumes(
    video: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    art = artifacts(tmp_path)
    monkeypatch.setattr(export, "reserve", failing_reserve(2))  # 1: frames.npy, 2: depth.npy
    result = annotate_video(video, art, CFG)
    assert result.status == "failed"
    assert result.error is not None and "\n" not in result.error
    assert result.error.startswith(str(art.work(art.DEPTH)))
    assert "disk is full" in result.error and "[Errno 28]" in result.error
    manifest = art.read_final_manifest()
    assert manifest is not None and manifest["status"] == "failed"
    assert manifest["error"]["stage"] == "depth"
    assert [p.name for p in art.final_dir.iterdir()] == ["manifest.json"]
    assert dot_files(tmp_path) == []
    monkeypatch.undo()
    resumed = annotate_video(video, art, CFG)
    assert resumed.status == "complete", resumed.error
    log = sorted((tmp_path / "_logs").iterdir())[-1].read_text()
    assert "stage geometry: already done, skipped" in log  # resumed, not redone
    assert np.load(art.final(art.DEPTH)).shape == (F, H, W)
    assert sorted(p.name for p in (tmp_path / WORK_DIR).iterdir()) == [".lock+clip"]


def test_failed_rerun_keeps_a_complete_result(
    video: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    art = artifacts(tmp_path)
    assert annotate_video(video, art, CFG).status == "complete"
    before = {p.name: p.read_bytes() for p in art.final_dir.iterdir()}
    monkeypatch.setattr(export, "reserve", failing_reserve(1))
    result = annotate_video(video, art, CFG, overwrite=True)
    assert result.status == "failed" and result.error is not None
    assert result.error.startswith(str(art.work("frames.npy")))
    assert {p.name: p.read_bytes() for p in art.final_dir.iterdir()} == before


def test_file_size_limit_in_a_child_process(video: Path, tmp_path: Path) -> None:
    """Real EFBIG from the kernel: RLIMIT_FSIZE below the size of the decoded frames."""
    script = (
        "import json, resource, signal, sys\n"
        "from pathlib import Path\n"
        "from dv4d.pipeline.artifacts import VideoArtifacts\n"
        "from dv4d.pipeline.config import AnnotateConfig\n"
        "from dv4d.pipeline.run import annotate_video\n"
        "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, 100_000))\n"
        "cfg = AnnotateConfig(preset='classical', device='cpu')\n"
        "art = VideoArtifacts(Path(sys.argv[2]), 'clip', cfg.config_hash())\n"
        "r = annotate_video(Path(sys.argv[1]), art, cfg)\n"
        "print(json.dumps({'status': r.status, 'error': r.error}))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, str(video), str(tmp_path)], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    art = artifacts(tmp_path)
    assert result["status"] == "failed"
    assert result["error"].startswith(str(art.work("frames.npy"))) and "[Errno 27]" in result["error"]
    manifest = json.loads(art.final(art.MANIFEST).read_text())
    assert manifest["status"] == "failed" and manifest["error"]["stage"] == "ingest"
    assert dot_files(tmp_path) == []


def test_output_folder_that_cannot_be_created_is_a_usage_error(
    video: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    assert main(["annotate", str(video), "-o", str(blocker / "out"), "-q"]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert str(blocker / "out") in err and len(err.strip().splitlines()) == 1


def test_unusable_output_root_fails_the_video_without_raising(video: Path, tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    result = annotate_video(video, artifacts(blocker), CFG)
    assert result.status == "failed" and result.error is not None
    assert result.error.startswith(str(blocker)) and "[Errno 20]" in result.error
