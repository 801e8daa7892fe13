"""User priors (--depth-dir, --masks-dir) against a rendered scene's ground truth."""

import json
from pathlib import Path

import numpy as np
import pytest

from dv4d.pipeline.artifacts import VideoArtifacts
from dv4d.pipeline.config import AnnotateConfig
from dv4d.pipeline.errors import Dv4dError
from dv4d.pipeline.ingest import plan_sampling, probe
from dv4d.pipeline.priors import load_depth_prior, load_masks_prior
from dv4d.pipeline.run import annotate_video
from dv4d.pipeline.synthetic import SceneConfig, SyntheticScene, render_scene, write_video

W, H, F = 160, 120, 16


@pytest.fixture(scope="module")
def scene_dir(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, SyntheticScene]:
    folder = tmp_path_factory.mktemp("prior")
    scene = render_scene(SceneConfig(width=W, height=H, num_frames=F, seed=7))
    write_video(scene.frames, folder / "clip.mp4", fps=10.0)
    rng = np.random.default_rng(0)
    (folder / "depth").mkdir()
    (folder / "masks").mkdir()
    noisy = scene.depth * rng.uniform(0.9, 1.1, size=scene.depth.shape)  # 10% multiplicative noise
    np.save(folder / "depth" / "clip.npy", noisy[:, ::2, ::2].astype(np.float32))  # half size: resized
    np.save(folder / "masks" / "clip.npy", scene.instance_ids.astype(np.int32) * 7)  # arbitrary id values
    return folder, scene


def test_depth_prior_makes_geometry_metric(scene_dir: tuple[Path, SyntheticScene], tmp_path: Path) -> None:
    folder, scene = scene_dir
    cfg = AnnotateConfig(depth_dir=folder / "depth", masks_dir=folder / "masks")
    art = VideoArtifacts(tmp_path, "clip", cfg.config_hash())
    result = annotate_video(folder / "clip.mp4", art, cfg)
    assert result.status == "complete", result.error
    manifest = json.loads(art.final("manifest.json").read_text())
    assert manifest["metric"] is True
    assert manifest["priors"]["depth"].endswith("clip.npy") and manifest["priors"]["masks"].endswith(
        "clip.npy"
    )
    with np.load(art.final("cameras.npz")) as cams:
        ours = cams["c2w"][:, :3, 3]
    gt = (np.linalg.inv(scene.c2w[0]) @ scene.c2w)[:, :3, 3]
    scale_error = np.linalg.norm(ours[-1]) / np.linalg.norm(gt[-1]) - 1
    assert abs(scale_error) < 0.05, f"metric scale off by {scale_error:.1%}"
    inst = np.load(art.final("instances.npy"))
    truth = scene.instance_ids > 0
    iou = (truth & (inst > 0)).sum() / (truth | (inst > 0)).sum()
    assert iou > 0.9


def test_video_without_prior_file_says_so(scene_dir: tuple[Path, SyntheticScene], tmp_path: Path) -> None:
    folder, _ = scene_dir
    empty = tmp_path / "none"
    empty.mkdir()
    cfg = AnnotateConfig(depth_dir=empty)
    art = VideoArtifacts(tmp_path / "out", "clip", cfg.config_hash())
    assert annotate_video(folder / "clip.mp4", art, cfg).status == "complete"
    manifest = json.loads(art.final("manifest.json").read_text())
    assert manifest["metric"] is False and "no " in manifest["priors"]["depth"]


def test_bad_prior_shapes_are_clear_errors(scene_dir: tuple[Path, SyntheticScene], tmp_path: Path) -> None:
    folder, _ = scene_dir
    info = probe(folder / "clip.mp4")
    plan = plan_sampling(info, None, None)
    np.save(tmp_path / "short.npy", np.ones((F - 1, H, W), np.float32))
    np.save(tmp_path / "aspect.npy", np.ones((F, H, H), np.float32))
    np.save(tmp_path / "float_ids.npy", np.ones((F, H, W), np.float32))
    with pytest.raises(Dv4dError, match="frames"):
        load_depth_prior(tmp_path / "short.npy", info, plan, (W, H))
    with pytest.raises(Dv4dError, match="aspect"):
        load_depth_prior(tmp_path / "aspect.npy", info, plan, (W, H))
    with pytest.raises(Dv4dError, match="integer"):
        load_masks_prior(tmp_path / "float_ids.npy", info, plan, (W, H))
