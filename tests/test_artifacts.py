import json
import os
from pathlib import Path

import pytest

from dv4d.pipeline.artifacts import VideoArtifacts, assign_names, atomic_path, safe_stem, write_json
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
    art.staging_dir.mkdir(parents=True)
    write_json(art.staged(art.MANIFEST), {"status": "complete"})
    art.publish()
    assert json.loads(art.final(art.MANIFEST).read_text())["status"] == "complete"
    assert not art.work_dir.exists()
    art.write_failed({"status": "failed"})
    assert [p.name for p in art.final_dir.iterdir()] == ["manifest.json"]
    assert art.read_final_manifest() == {"status": "failed"}


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
