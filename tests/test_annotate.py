"""End to end: synthetic videos (and broken files) through ``dv4d annotate``, outputs checked against
schema dv4d/1 and against the scene's ground truth."""

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from dv4d.flows.cli import EXIT_FAILED, EXIT_OK, EXIT_USAGE, main
from dv4d.pipeline.artifacts import SCHEMA, VideoArtifacts
from dv4d.pipeline.config import AnnotateConfig
from dv4d.pipeline.dataset import Dv4dDataset
from dv4d.pipeline.run import annotate_video
from dv4d.pipeline.synthetic import SceneConfig, SyntheticScene, render_scene, write_video

W, H, F = 160, 120, 16


@pytest.fixture(scope="module")
def scenes(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, SyntheticScene]]:
    folder = tmp_path_factory.mktemp("videos")
    rendered = {}
    for name, seed in (("orbit", 1), ("second", 2)):
        scene = render_scene(SceneConfig(width=W, height=H, num_frames=F, seed=seed))
        write_video(scene.frames, folder / f"{name}.mp4", fps=10.0)
        rendered[name] = scene
    (folder / "broken.mp4").write_bytes(b"this is not a video\n")
    return folder, rendered


@pytest.fixture(scope="module")
def annotated(
    scenes: tuple[Path, dict[str, SyntheticScene]], tmp_path_factory: pytest.TempPathFactory
) -> Path:
    folder, _ = scenes
    out = tmp_path_factory.mktemp("out")
    assert main(["annotate", str(folder), "-o", str(out), "--preset", "classical", "-q"]) == EXIT_FAILED
    return out


def tree_digest(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def test_outputs_follow_schema(annotated: Path, scenes: tuple[Path, dict[str, SyntheticScene]]) -> None:
    _, rendered = scenes
    for name in rendered:
        d = annotated / name
        manifest = json.loads((d / "manifest.json").read_text())
        assert manifest["schema"] == SCHEMA and manifest["status"] == "complete"
        assert manifest["frames"] == {"count": F, "width": W, "height": H}
        assert manifest["video"]["num_frames"] == F and len(manifest["video"]["sha256"]) == 64
        assert manifest["metric"] is False
        assert set(manifest["components"]) >= {"ingest", "geometry", "depth", "instances", "captions"}
        assert all(c["weights"] == "classical" for c in manifest["components"].values())
        assert manifest["config_hash"] == AnnotateConfig.from_json(manifest["config"]).config_hash()
        assert {"reproj_rmse_px", "static_fraction", "num_keyframes", "flags"} <= set(manifest["quality"])
        with np.load(d / "cameras.npz") as cams:
            assert cams["c2w"].shape == (F, 4, 4) and cams["c2w"].dtype == np.float64
            assert cams["K"].shape == (F, 3, 3) and cams["K"].dtype == np.float64
            assert cams["frame_index"].tolist() == list(range(F))
            np.testing.assert_allclose(cams["timestamps"], np.arange(F) / 10.0, atol=1e-3)
            assert cams["is_keyframe"].dtype == bool and cams["is_keyframe"][0]
            unposed = "unregistered_frames" in manifest["quality"]["flags"]
            assert (
                cams["posed"].dtype == bool and cams["posed"].shape == (F,) and cams["posed"].all() != unposed
            )
            np.testing.assert_allclose(cams["c2w"][0], np.eye(4), atol=1e-9)
            rot = cams["c2w"][:, :3, :3]
            np.testing.assert_allclose(
                rot @ rot.transpose(0, 2, 1), np.broadcast_to(np.eye(3), (F, 3, 3)), atol=1e-6
            )
        depth = np.load(d / "depth.npy", mmap_mode="r")
        assert depth.shape == (F, H, W) and depth.dtype == np.float16
        assert np.isfinite(depth).all() and (np.asarray(depth) >= 0).all()
        inst = np.load(d / "instances.npy", mmap_mode="r")
        assert inst.shape == (F, H, W) and inst.dtype == np.uint16
        records = json.loads((d / "instances.json").read_text())
        for r in records:
            assert set(r) == {"id", "label", "dynamic", "first_frame", "last_frame", "num_pixels", "caption"}
            assert r["num_pixels"] == int((np.asarray(inst) == r["id"]).sum())
        captions = json.loads((d / "captions.json").read_text())
        assert captions["scene"] is None and captions["objects"] == {}
        assert captions["camera"]["source"] == "trajectory" and captions["camera"]["text"]
        assert (d / "rgb.mp4").stat().st_size > 0 and (d / "points.ply").stat().st_size > 0


def test_geometry_matches_ground_truth(
    annotated: Path, scenes: tuple[Path, dict[str, SyntheticScene]]
) -> None:
    """Relative rotations of the recovered cameras match the rendered ones."""
    _, rendered = scenes
    scene = rendered["orbit"]
    with np.load(annotated / "orbit" / "cameras.npz") as cams:
        c2w = cams["c2w"]
    gt = np.linalg.inv(scene.c2w[0]) @ scene.c2w
    for i in range(1, F):
        r_err = gt[i, :3, :3].T @ c2w[i, :3, :3]
        angle = np.degrees(np.arccos(np.clip((np.trace(r_err) - 1) / 2, -1, 1)))
        assert angle < 1.0, f"frame {i}: rotation error {angle:.2f} deg"


def test_broken_video_fails_alone(annotated: Path) -> None:
    manifest = json.loads((annotated / "broken" / "manifest.json").read_text())
    assert manifest["status"] == "failed"
    assert manifest["error"]["stage"] == "probe" and "broken.mp4" in manifest["error"]["message"]
    assert [p.name for p in (annotated / "broken").iterdir()] == ["manifest.json"]
    assert list((annotated / "_logs").glob("broken-*.log"))


def test_rerun_skips_complete_videos_byte_identical(annotated: Path, scenes: tuple[Path, dict]) -> None:
    folder, rendered = scenes
    before = {name: tree_digest(annotated / name) for name in rendered}
    good = [str(folder / f"{name}.mp4") for name in rendered]
    assert main(["annotate", *good, "-o", str(annotated), "-q"]) == EXIT_OK
    assert {name: tree_digest(annotated / name) for name in rendered} == before


def test_dataset_loads_clips(annotated: Path) -> None:
    ds = Dv4dDataset(annotated, clip_len=8)
    assert len(ds) == 2 * (F // 8)
    assert [p.name for p in ds.skipped] == ["broken"]
    sample = ds[0]
    assert sample["rgb"].shape == (8, 3, H, W)
    assert sample["depth"].shape == (8, 1, H, W)


def test_resume_after_crash_equals_uninterrupted(
    scenes: tuple[Path, dict], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder, _ = scenes
    video = folder / "orbit.mp4"
    cfg = AnnotateConfig()
    clean = VideoArtifacts(tmp_path / "clean", "orbit", cfg.config_hash())
    assert annotate_video(video, clean, cfg).status == "complete"

    from dv4d.pipeline import stages

    def crash(*args: object, **kwargs: object) -> None:
        raise RuntimeError("simulated crash in the middle of a stage")

    art = VideoArtifacts(tmp_path / "resumed", "orbit", cfg.config_hash())
    monkeypatch.setattr(stages, "camera_caption", crash)
    failed = annotate_video(video, art, cfg)
    assert failed.status == "failed" and "simulated crash" in (failed.error or "")
    assert json.loads(art.final("manifest.json").read_text())["error"]["stage"] == "captions"
    assert art.stage_marker("geometry").exists()
    monkeypatch.undo()

    result = annotate_video(video, art, cfg)
    assert result.status == "complete"
    log = sorted((tmp_path / "resumed" / "_logs").glob("orbit-*.log"))[-1].read_text()
    assert "stage geometry: already done" in log
    for name in ("depth.npy", "instances.npy", "instances.json", "captions.json"):
        assert (art.final(name)).read_bytes() == clean.final(name).read_bytes(), name
    with np.load(art.final("cameras.npz")) as a, np.load(clean.final("cameras.npz")) as b:
        for key in a.files:
            np.testing.assert_array_equal(a[key], b[key])


def test_usage_errors_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["annotate", str(tmp_path), "-o", str(tmp_path / "out")]) == EXIT_USAGE
    assert "no video found" in capsys.readouterr().err
    assert main(["annotate", str(tmp_path / "missing.mp4"), "-o", str(tmp_path / "out")]) == EXIT_USAGE
    (tmp_path / "file").write_text("x")
    assert main(["annotate", str(tmp_path), "-o", str(tmp_path / "file" / "out")]) == EXIT_USAGE
    assert main(["annotate", str(tmp_path), "-o", str(tmp_path), "--fps", "0"]) == EXIT_USAGE
    with pytest.raises(SystemExit) as exc:
        main(["annotate", "--bogus"])
    assert exc.value.code == EXIT_USAGE


def test_smoke_preset_runs_models_and_labels_random_init(tmp_path: Path) -> None:
    scene = render_scene(SceneConfig(width=96, height=72, num_frames=6, seed=5))
    write_video(scene.frames, tmp_path / "clip.mp4", fps=10.0)
    out = tmp_path / "out"
    assert (
        main(["annotate", str(tmp_path / "clip.mp4"), "-o", str(out), "--preset", "smoke", "-q"]) == EXIT_OK
    )
    d = out / "clip"
    manifest = json.loads((d / "manifest.json").read_text())
    assert manifest["status"] == "complete" and manifest["metric"] is False
    for stage in ("depth_model", "depth", "objects", "captions"):
        assert "random-init" in manifest["components"][stage]["weights"], stage
    depth = np.load(d / "depth.npy")
    assert depth.shape == (6, 72, 96) and (depth > 0).mean() > 0.9
    records = json.loads((d / "instances.json").read_text())
    captions = json.loads((d / "captions.json").read_text())
    assert records and all(r["label"] and r["caption"] is not None for r in records)
    assert isinstance(captions["scene"], str)
    assert set(captions["objects"]) == {str(r["id"]) for r in records}


def test_default_preset_without_weights_is_a_clear_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "v.mp4").write_bytes(b"")
    code = main(["annotate", str(tmp_path), "-o", str(tmp_path / "out"), "--preset", "default",
                 "--weights-dir", str(tmp_path / "weights"), "--device", "cpu"])  # fmt: skip
    assert code == EXIT_USAGE
    err = capsys.readouterr().err
    assert "dv4d models download" in err and "DepthPro" in err
