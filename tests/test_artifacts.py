import errno
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dv4d.pipeline.artifacts import (
    VideoArtifacts,
    assign_names,
    atomic_path,
    safe_stem,
    storage_message,
    write_json,
)
from dv4d.pipeline.config import AnnotateConfig, parse_intrinsics
from dv4d.pipeline.errors import Dv4dError


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("clip.mp4", "clip"),
        ("my clip.mov", "my clip"),
        ("...mp4", "video"),
        (".hidden.mp4", "hidden"),
        ("_work.mp4", "video__work"),
        ("a/b.mp4", "b"),
    ],
)
def test_safe_stem_stays_inside_output(name: str, expected: str) -> None:
    assert safe_stem(Path(name)) == expected


def test_safe_stem_non_utf8_bytes() -> None:
    stem = safe_stem(Path(os.fsdecode(b"caf\xe9.mp4")))
    assert "/" not in stem and stem.startswith("caf") and stem.isprintable()


def test_assign_names_collisions_get_hash_suffix(tmp_path: Path) -> None:
    a, b = tmp_path / "x" / "clip.mp4", tmp_path / "y" / "clip.mp4"
    names = assign_names([a, b], tmp_path / "out")
    assert names[a] == "clip"
    assert names[b].startswith("clip-") and len(names[b]) == len("clip-") + 8
    assert assign_names([a, b], tmp_path / "out") == names  # stable


def test_assign_names_respects_other_source_in_output(tmp_path: Path) -> None:
    out = tmp_path / "out"
    write_json(out / "clip" / "manifest.json", {"video": {"path": str(tmp_path / "other" / "clip.mp4")}})
    mine = tmp_path / "clip.mp4"
    assert assign_names([mine], out)[mine] != "clip"


def test_atomic_path_leaves_nothing_on_error(tmp_path: Path) -> None:
    target = tmp_path / "f.json"
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("partial")
        raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_publish_and_failed_replace_folder(tmp_path: Path) -> None:
    art = VideoArtifacts(tmp_path, "v", "0" * 64)
    assert art.write_failed({"status": "failed", "n": 1})
    assert art.write_failed({"status": "failed", "n": 2})  # a failed folder is replaced
    assert art.read_final_manifest() == {"status": "failed", "n": 2}
    art.staging_dir.mkdir(parents=True)
    (art.staged("depth.npy")).write_bytes(b"x")
    write_json(art.staged(art.MANIFEST), {"status": "complete"})
    art.publish()
    assert json.loads(art.final(art.MANIFEST).read_text())["status"] == "complete"
    assert sorted(p.name for p in art.final_dir.iterdir()) == ["depth.npy", "manifest.json"]
    assert not art.work_dir.exists()
    assert not art.write_failed({"status": "failed"})  # a failed rerun never destroys a complete result
    assert art.read_final_manifest() == {"status": "complete"}
    assert sorted(p.name for p in (tmp_path / "_work").iterdir()) == []


def test_atomic_files_get_umask_permissions_and_name_the_path(tmp_path: Path) -> None:
    write_json(tmp_path / "a.json", {"x": 1})
    umask = os.umask(0)
    os.umask(umask)
    assert (tmp_path / "a.json").stat().st_mode & 0o777 == 0o666 & ~umask
    with pytest.raises(OSError) as info, atomic_path(tmp_path / "b.bin"):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    assert info.value.filename == str(tmp_path / "b.bin")
    message = storage_message(info.value)
    assert message.startswith(str(tmp_path / "b.bin")) and "disk is full" in message
    assert "[Errno 28]" in message and "\n" not in message


def test_sweep_removes_what_a_killed_run_left(tmp_path: Path) -> None:
    art = VideoArtifacts(tmp_path, "v", "0" * 64)
    other = VideoArtifacts(tmp_path, "v-2", "0" * 64)
    art.staging_dir.mkdir(parents=True)
    (art.work_dir / "frames.npy").write_bytes(b"x")
    (art.work_dir / ".frames.abc.tmp.npy").write_bytes(b"x")
    (art.staging_dir / ".manifest.abc.tmp.json").write_bytes(b"x")
    for prefix in (".trash+v+", ".failed+v+", ".trash+v-2+"):
        (tmp_path / "_work" / f"{prefix}abc" / "old").mkdir(parents=True)
    art.sweep()
    assert [p.name for p in art.work_dir.iterdir()] == ["final", "frames.npy"]
    assert list(art.staging_dir.iterdir()) == []
    left = sorted(p.name for p in (tmp_path / "_work").iterdir())
    assert left == [".trash+v-2+abc", art.work_dir.name]
    other.sweep()
    art.discard_work()
    assert sorted(p.name for p in (tmp_path / "_work").iterdir()) == []


def test_lock_serialises_processes_on_one_video(tmp_path: Path) -> None:
    art = VideoArtifacts(tmp_path, "v", "0" * 64)
    script = (
        "import sys, time; from pathlib import Path; from dv4d.pipeline.artifacts import VideoArtifacts\n"
        "art = VideoArtifacts(Path(sys.argv[1]), 'v', '0' * 64)\n"
        "with art.lock(lambda: print('waiting', flush=True)):\n"
        "    print('got it', flush=True)\n"
    )
    with art.lock():
        proc = subprocess.Popen(
            [sys.executable, "-c", script, str(tmp_path)], stdout=subprocess.PIPE, text=True
        )
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "waiting"
        time.sleep(0.2)
        assert proc.poll() is None
    out, _ = proc.communicate(timeout=30)
    assert out.strip() == "got it"


def test_config_hash_ignores_device_but_not_resolution() -> None:
    base = AnnotateConfig()
    assert base.config_hash() == AnnotateConfig(device="cpu").config_hash()
    assert base.config_hash() != AnnotateConfig(resolution=256).config_hash()


def test_config_json_round_trip(tmp_path: Path) -> None:
    cfg = AnnotateConfig(preset="smoke", fps=5.0, intrinsics=(100.0, 100.0, 50.0, 40.0), depth_dir=tmp_path)
    assert AnnotateConfig.from_json(json.loads(json.dumps(cfg.to_json()))) == cfg


@pytest.mark.parametrize(
    "kwargs",
    [{"preset": "nope"}, {"fps": 0.0}, {"max_frames": 0}, {"resolution": 8}, {"intrinsics": (0, 1, 1, 1)}],
)
def test_config_rejects_bad_values(kwargs: dict) -> None:
    with pytest.raises(Dv4dError):
        AnnotateConfig(**kwargs)


def test_parse_intrinsics() -> None:
    assert parse_intrinsics("500,500,320,240") == (500.0, 500.0, 320.0, 240.0)
    for bad in ("500,500,320", "a,b,c,d"):
        with pytest.raises(Dv4dError):
            parse_intrinsics(bad)
