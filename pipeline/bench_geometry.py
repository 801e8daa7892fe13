"""``dv4d bench geometry``: camera recovery of dv4d classical mode beside COLMAP, against ground truth.

Each scene is a video with exact ground truth: rendered by ``dv4d.pipeline.synthetic`` (textured room,
moving camera, one independently moving box) or read from a folder of videos with ground-truth ``.npz``
files. Both methods see the same decoded frames:

- COLMAP (pycolmap): SIFT extraction, sequential matching, incremental mapping, one shared
  ``SIMPLE_PINHOLE`` camera with unknown focal, a fixed thread count. Timed from extraction to the end
  of mapping (writing the frames as images is not counted).
- dv4d classical mode end to end (``annotate_video``: ingest, keyframes, geometry, depth, instances,
  captions, export), timed as a whole. Its camera recovery alone (the ingest, keyframes and geometry
  stages: video to every frame's pose, the focal and the sparse points, what COLMAP's timer covers) is
  timed by the stages themselves (the manifest's components); both speeds are compared with COLMAP's.

Metrics (``dv4d.pipeline.metrics``) on the frames each method posed: ATE RMSE after Sim(3) alignment as
a percentage of the ground-truth trajectory length, frame-to-frame RPE, focal error; for dv4d also depth
AbsRel / delta<1.25 after median scaling and the IoU of its dynamic instances with the true moving-object
mask (COLMAP gives neither).
"""

import math
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from dv4d.pipeline.artifacts import VideoArtifacts, read_json
from dv4d.pipeline.config import AnnotateConfig
from dv4d.pipeline.errors import Dv4dError
from dv4d.pipeline.export import load_array
from dv4d.pipeline.ingest import iter_frames, plan_sampling, probe
from dv4d.pipeline.metrics import ate_rmse, depth_errors, mask_iou, rpe, trajectory_length
from dv4d.pipeline.run import annotate_video
from dv4d.pipeline.synthetic import SceneConfig, render_scene, write_video

METHODS = ("colmap", "dv4d")
CAMERA_STAGES = ("ingest", "keyframes", "geometry")
"""The dv4d stages that turn the video into poses, focal and sparse points."""


@dataclass(frozen=True)
class BenchConfig:
    """What ``run_benchmark`` renders and how it runs the two methods."""

    scenes: int = 3
    """Synthetic scenes rendered (seeds ``seed, seed + 1, ...``); unused with ``videos``."""
    seed: int = 0
    """Seed of the first synthetic scene."""
    frames: int = 90
    """Frames per synthetic scene."""
    width: int = 320
    """Width of the synthetic scenes, pixels."""
    height: int = 240
    """Height of the synthetic scenes, pixels."""
    camera_motion: str = "orbit"
    """Camera path of the synthetic scenes (see ``SceneConfig.camera_motion``)."""
    colmap_threads: int = 2
    """Threads COLMAP may use for extraction, matching and mapping."""
    colmap_overlap: int = 10
    """Sequential matching: each image is matched to this many following ones (COLMAP's default 10; with
    its quadratic overlap also to those 2, 4, 8, ... frames ahead)."""
    videos: Path | None = None
    """Folder of ``<name>.mp4`` videos, each with a ``<name>.npz`` ground truth (see ``load_ground_truth``);
    replaces the synthetic scenes."""

    def __post_init__(self) -> None:
        if self.videos is None and (self.scenes < 1 or self.frames < 2):
            raise Dv4dError(f"need at least 1 scene of 2 frames, got {self.scenes} of {self.frames}")
        if self.width < 16 or self.height < 16:
            raise Dv4dError(f"scenes must be at least 16x16 pixels, got {self.width}x{self.height}")
        if self.colmap_threads < 1 or self.colmap_overlap < 1:
            raise Dv4dError(
                f"COLMAP threads and overlap must be >= 1, got {self.colmap_threads}, {self.colmap_overlap}"
            )


@dataclass(frozen=True)
class GroundTruth:
    """Ground truth of one video of F frames of H x W pixels."""

    c2w: np.ndarray
    """(F, 4, 4) float64 camera-to-world poses (OpenCV axes), metres."""
    focal_px: float
    """True focal length, pixels."""
    depth: np.ndarray | None
    """(F, H, W) float32 z-depth in metres (0 = invalid), or None."""
    dynamic: np.ndarray | None
    """(F, H, W) bool moving-object pixels, or None."""


@dataclass(frozen=True)
class Scene:
    """One benchmark video and its ground truth."""

    name: str
    """Short name (the video's stem)."""
    video: Path
    """The video file both methods read."""
    truth: GroundTruth
    """Its ground truth."""


@dataclass(frozen=True)
class Estimate:
    """What one method recovered from one video of F frames (H x W)."""

    c2w: np.ndarray
    """(F, 4, 4) float64 camera-to-world poses; NaN for frames the method did not pose."""
    focal_px: float
    """Estimated focal length, pixels (NaN when nothing was reconstructed)."""
    seconds: float
    """Timed wall seconds (see the module docstring for what each method's timer covers)."""
    camera_seconds: float | None = None
    """dv4d only: seconds of its camera recovery (ingest + keyframes + geometry stages, from the
    manifest's components); None: the whole run recovers cameras only (COLMAP)."""
    depth: np.ndarray | None = None
    """(F, H, W) float32 depth in the method's units (dv4d only)."""
    dynamic: np.ndarray | None = None
    """(F, H, W) bool pixels of dynamic instances (dv4d only)."""
    instances: int | None = None
    """Number of instance ids written (dv4d only)."""


@dataclass(frozen=True)
class MethodScore:
    """Accuracy and speed of one method on one scene (NaN / None where not measurable)."""

    frames: int
    """Frames in the video."""
    frames_posed: int
    """Frames the method gave a pose."""
    seconds: float
    """Timed wall seconds."""
    fps: float
    """frames / seconds."""
    ate_pct: float
    """ATE RMSE after Sim(3) alignment over the posed frames, percent of the true trajectory length."""
    rpe_rot_deg: float
    """RMS rotation error of consecutive posed-frame pairs, degrees."""
    rpe_trans_m: float
    """RMS translation error of consecutive posed-frame pairs after the Sim(3) scale, metres."""
    focal_err_pct: float
    """|f_est - f_true| / f_true, percent."""
    camera_fps: float
    """frames / seconds of camera recovery (for COLMAP its whole run; for dv4d the ingest, keyframes
    and geometry stages)."""
    depth_absrel: float | None = None
    """dv4d: depth AbsRel after median scaling, over pixels valid in both."""
    depth_delta1: float | None = None
    """dv4d: fraction of those pixels with max(d/gt, gt/d) < 1.25."""
    depth_coverage: float | None = None
    """dv4d: fraction of ground-truth pixels that have a depth."""
    mask_iou: float | None = None
    """dv4d: IoU of the dynamic-instance pixels with the true moving-object mask over all frames."""
    instances: int | None = None
    """dv4d: instance ids written."""


@dataclass(frozen=True)
class SceneScore:
    """Both methods on one scene."""

    name: str
    """Scene name."""
    colmap: MethodScore
    """COLMAP's figures."""
    dv4d: MethodScore
    """dv4d classical mode's figures."""


def load_ground_truth(path: Path) -> GroundTruth:
    """Read a ground-truth ``.npz``: ``c2w`` (F,4,4) camera-to-world, ``K`` (3,3) or (F,3,3) pixels, and
    optionally ``depth`` (F,H,W) z-depth in metres and ``dynamic`` (F,H,W) bool."""
    with np.load(path) as data:
        if "c2w" not in data or "K" not in data:
            raise Dv4dError(f"{path}: ground truth needs arrays 'c2w' and 'K', has {sorted(data.files)}")
        c2w = np.asarray(data["c2w"], np.float64)
        K = np.asarray(data["K"], np.float64)
        depth = np.asarray(data["depth"], np.float32) if "depth" in data else None
        dynamic = np.asarray(data["dynamic"], bool) if "dynamic" in data else None
    if c2w.ndim != 3 or c2w.shape[1:] != (4, 4) or K.shape[-2:] != (3, 3):
        raise Dv4dError(f"{path}: c2w must be (F,4,4) and K (3,3) or (F,3,3), got {c2w.shape}, {K.shape}")
    K0 = K if K.ndim == 2 else K[0]
    return GroundTruth(c2w=c2w, focal_px=float(K0[0, 0]), depth=depth, dynamic=dynamic)


def render_scenes(cfg: BenchConfig, folder: Path) -> list[Scene]:
    """Render ``cfg.scenes`` synthetic scenes into ``folder`` as ``scene<seed>.mp4`` (+ ``.npz`` truth)."""
    folder.mkdir(parents=True, exist_ok=True)
    scenes = []
    for seed in range(cfg.seed, cfg.seed + cfg.scenes):
        scene_cfg = SceneConfig(
            width=cfg.width,
            height=cfg.height,
            num_frames=cfg.frames,
            seed=seed,
            camera_motion=cfg.camera_motion,
        )
        rendered = render_scene(scene_cfg)
        video = folder / f"scene{seed}.mp4"
        write_video(rendered.frames, video, scene_cfg.fps)
        np.savez(video.with_suffix(".npz"), c2w=rendered.c2w, K=rendered.K, depth=rendered.depth,
                 dynamic=rendered.dynamic)  # fmt: skip
        truth = GroundTruth(rendered.c2w, float(rendered.K[0, 0]), rendered.depth, rendered.dynamic)
        scenes.append(Scene(video.stem, video, truth))
    return scenes


def find_scenes(folder: Path) -> list[Scene]:
    """Every ``<name>.mp4`` in ``folder`` that has a ``<name>.npz`` ground truth beside it."""
    if not folder.is_dir():
        raise Dv4dError(f"{folder}: not a folder")
    scenes = [
        Scene(video.stem, video, load_ground_truth(video.with_suffix(".npz")))
        for video in sorted(folder.glob("*.mp4"))
        if video.with_suffix(".npz").is_file()
    ]
    if not scenes:
        raise Dv4dError(f"{folder}: no <name>.mp4 with a <name>.npz ground truth beside it")
    return scenes


def decode_frames(video: Path) -> np.ndarray:
    """(F, H, W, 3) uint8 RGB: every frame of the video at its own size."""
    info = probe(video)
    chunks = list(iter_frames(info, plan_sampling(info, None, None), (info.width, info.height)))
    return np.concatenate(chunks)


def _c2w_from_cam_from_world(matrix: np.ndarray) -> np.ndarray:
    pose = np.eye(4)
    pose[:3, :] = matrix
    return np.linalg.inv(pose)


def run_colmap(frames: np.ndarray, work: Path, threads: int, overlap: int = 10) -> Estimate:
    """COLMAP on (F,H,W,3) frames (written to ``work/images`` first, untimed); the largest model wins."""
    import pycolmap

    images = work / "images"
    images.mkdir(parents=True, exist_ok=True)
    names = [f"{i:05d}.png" for i in range(len(frames))]
    for name, frame in zip(names, frames, strict=True):
        cv2.imwrite(str(images / name), cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    database = work / "database.db"
    database.unlink(missing_ok=True)
    sparse = work / "sparse"
    sparse.mkdir(exist_ok=True)

    extraction = pycolmap.FeatureExtractionOptions()
    extraction.num_threads = threads
    extraction.use_gpu = False
    reader = pycolmap.ImageReaderOptions()
    reader.camera_model = "SIMPLE_PINHOLE"
    matching = pycolmap.FeatureMatchingOptions()
    matching.num_threads = threads
    matching.use_gpu = False
    pairing = pycolmap.SequentialPairingOptions()
    pairing.num_threads = threads
    pairing.overlap = overlap
    mapping = pycolmap.IncrementalPipelineOptions()
    mapping.num_threads = threads
    mapping.random_seed = 0

    log_level = pycolmap.logging.minloglevel
    pycolmap.logging.minloglevel = int(pycolmap.logging.ERROR)
    t0 = time.perf_counter()
    pycolmap.extract_features(database, images, camera_mode=pycolmap.CameraMode.SINGLE, reader_options=reader,
                              extraction_options=extraction, device=pycolmap.Device.cpu)  # fmt: skip
    pycolmap.match_sequential(database, matching_options=matching, pairing_options=pairing,
                              device=pycolmap.Device.cpu)  # fmt: skip
    models = pycolmap.incremental_mapping(database, images, sparse, options=mapping)
    seconds = time.perf_counter() - t0
    pycolmap.logging.minloglevel = log_level

    c2w = np.full((len(frames), 4, 4), np.nan)
    if not models:
        return Estimate(c2w=c2w, focal_px=float("nan"), seconds=seconds)
    model = max(models.values(), key=lambda m: m.num_reg_images())
    index = {name: i for i, name in enumerate(names)}
    for image in model.images.values():
        if image.has_pose:
            c2w[index[image.name]] = _c2w_from_cam_from_world(image.cam_from_world().matrix())
    focal = float(next(iter(model.cameras.values())).params[0])
    return Estimate(c2w=c2w, focal_px=focal, seconds=seconds)


def run_dv4d(video: Path, out: Path) -> Estimate:
    """dv4d classical mode on ``video`` into ``out`` (CPU), read back from its output folder."""
    cfg = AnnotateConfig(preset="classical", device="cpu")
    art = VideoArtifacts(out, video.stem, cfg.config_hash())
    t0 = time.perf_counter()
    result = annotate_video(video, art, cfg, overwrite=True)
    seconds = time.perf_counter() - t0
    if result.status != "complete":
        raise Dv4dError(f"dv4d failed on {video}: {result.error}")
    manifest = read_json(art.final(art.MANIFEST))
    cameras = np.load(art.final(art.CAMERAS))
    records = read_json(art.final(art.INSTANCES_JSON))
    dynamic_ids = [r["id"] for r in records if r["dynamic"]]
    instances = np.asarray(load_array(art.final(art.INSTANCES)))
    return Estimate(
        c2w=np.asarray(cameras["c2w"], np.float64),
        focal_px=float(cameras["K"][0, 0, 0]),
        seconds=seconds,
        camera_seconds=sum(float(manifest["components"][stage]["seconds"]) for stage in CAMERA_STAGES),
        depth=np.asarray(load_array(art.final(art.DEPTH)), np.float32),
        dynamic=np.isin(instances, dynamic_ids),
        instances=len(records),
    )


def score(estimate: Estimate, truth: GroundTruth) -> MethodScore:
    """Compare one method's estimate with the ground truth (pose metrics over the posed frames)."""
    frames = len(truth.c2w)
    posed = np.isfinite(estimate.c2w).all(axis=(1, 2))
    count = int(posed.sum())
    nan = float("nan")
    camera_seconds = estimate.seconds if estimate.camera_seconds is None else estimate.camera_seconds
    ate = rot = trans = nan
    if count >= 3:
        gt = truth.c2w[posed]
        ate = 100.0 * ate_rmse(estimate.c2w[posed], gt) / max(trajectory_length(gt), 1e-12)
        rot, trans = rpe(estimate.c2w[posed], gt)
    depth_absrel = depth_delta1 = depth_coverage = iou = None
    if estimate.depth is not None and truth.depth is not None:
        depth_absrel, depth_delta1, depth_coverage = depth_errors(estimate.depth, truth.depth)
    if estimate.dynamic is not None and truth.dynamic is not None:
        iou = mask_iou(estimate.dynamic, truth.dynamic)
    return MethodScore(
        frames=frames,
        frames_posed=count,
        seconds=estimate.seconds,
        fps=frames / estimate.seconds if estimate.seconds > 0 else nan,
        camera_fps=frames / camera_seconds if camera_seconds > 0 else nan,
        ate_pct=ate,
        rpe_rot_deg=rot,
        rpe_trans_m=trans,
        focal_err_pct=100.0 * abs(estimate.focal_px - truth.focal_px) / truth.focal_px,
        depth_absrel=depth_absrel,
        depth_delta1=depth_delta1,
        depth_coverage=depth_coverage,
        mask_iou=iou,
        instances=estimate.instances,
    )


def run_benchmark(
    cfg: BenchConfig, work: Path, on_scene: Callable[[SceneScore], None] | None = None
) -> list[SceneScore]:
    """Render (or find) the scenes under ``work`` and run both methods on each, one after the other."""
    scenes = find_scenes(cfg.videos) if cfg.videos is not None else render_scenes(cfg, work / "videos")
    results = []
    for scene in scenes:
        frames = decode_frames(scene.video)
        if len(frames) != len(scene.truth.c2w):
            raise Dv4dError(
                f"{scene.video}: {len(frames)} frames but {len(scene.truth.c2w)} ground-truth poses"
            )
        colmap_dir = work / "colmap" / scene.name
        shutil.rmtree(colmap_dir, ignore_errors=True)
        colmap = score(run_colmap(frames, colmap_dir, cfg.colmap_threads, cfg.colmap_overlap), scene.truth)
        dv4d = score(run_dv4d(scene.video, work / "dv4d"), scene.truth)
        results.append(SceneScore(scene.name, colmap, dv4d))
        if on_scene is not None:
            on_scene(results[-1])
    return results


def _mean(values: list[float | int | None]) -> float | None:
    finite = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    return sum(finite) / len(finite) if finite else None


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b is not None and b > 0 else None


def _finite(value: Any) -> Any:
    """JSON-safe: NaN and infinities become None, recursively."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def summary(cfg: BenchConfig, results: list[SceneScore]) -> dict[str, Any]:
    """The JSON object of the benchmark: config, per-scene figures, means per method, ratios, targets.

    Ratios: ``ate_dv4d_over_colmap`` (mean ATE %, lower is better for dv4d), ``fps_dv4d_over_colmap``
    (mean frames/s, dv4d end to end) and ``camera_fps_dv4d_over_colmap`` (mean frames/s of camera
    recovery). ``targets`` tests the issue's goals on the means."""
    means = {
        method: {
            key: _mean([getattr(getattr(r, method), key) for r in results])
            for key in asdict(getattr(results[0], method))
        }
        for method in METHODS
    }
    ate_ratio = _ratio(means["dv4d"]["ate_pct"], means["colmap"]["ate_pct"])
    fps_ratio = _ratio(means["dv4d"]["fps"], means["colmap"]["fps"])
    camera_fps_ratio = _ratio(means["dv4d"]["camera_fps"], means["colmap"]["camera_fps"])
    dv4d = means["dv4d"]
    all_posed = all(r.dv4d.frames_posed == r.dv4d.frames for r in results)
    targets = {
        "ate_no_worse_than_colmap": ate_ratio is not None and ate_ratio <= 1.0,
        "all_frames_posed": all_posed,
        "focal_err_le_1pct": dv4d["focal_err_pct"] is not None and dv4d["focal_err_pct"] <= 1.0,
        "camera_fps_ge_2x_colmap": camera_fps_ratio is not None and camera_fps_ratio >= 2.0,
        "end_to_end_fps_ge_2x_colmap": fps_ratio is not None and fps_ratio >= 2.0,
        "depth_absrel_le_0.05": dv4d["depth_absrel"] is not None and dv4d["depth_absrel"] <= 0.05,
        "mask_iou_ge_0.6": dv4d["mask_iou"] is not None and dv4d["mask_iou"] >= 0.6,
    }
    config = {k: str(v) if isinstance(v, Path) else v for k, v in asdict(cfg).items()}
    return _finite({
        "benchmark": "geometry",
        "config": config,
        "cpu_count": os.cpu_count(),
        "scenes": [{"name": r.name, "colmap": asdict(r.colmap), "dv4d": asdict(r.dv4d)} for r in results],
        "mean": means,
        "ratios": {
            "ate_dv4d_over_colmap": ate_ratio,
            "fps_dv4d_over_colmap": fps_ratio,
            "camera_fps_dv4d_over_colmap": camera_fps_ratio,
        },
        "targets": targets,
    })  # fmt: skip
