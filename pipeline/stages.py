"""The stage bodies of one video, in order. Each reads its inputs from the work folder and writes its
outputs there; ``run.StageRunner`` records which are done so a killed run resumes after the last one."""

import dataclasses
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from dv4d.models.suite import MAX_VLM_FRAMES, ModelSuite, shared_suite
from dv4d.pipeline.artifacts import SCHEMA, VideoArtifacts, atomic_path, read_json, write_json
from dv4d.pipeline.captions import camera_caption, captions_json
from dv4d.pipeline.config import AnnotateConfig
from dv4d.pipeline.depth import densify_depth
from dv4d.pipeline.export import (
    VideoWriter,
    as_rows,
    load_array,
    open_array,
    save_npy,
    save_npz,
    write_cameras,
    write_points,
)
from dv4d.pipeline.flow import dis_flow
from dv4d.pipeline.geometry import GeometryResult, estimate_geometry
from dv4d.pipeline.ingest import SamplePlan, VideoInfo, iter_frames, plan_sampling, working_size
from dv4d.pipeline.instances import InstanceTracker
from dv4d.pipeline.keyframes import select_keyframes
from dv4d.pipeline.motion import segment_motion
from dv4d.pipeline.priors import load_depth_prior, load_masks_prior, prior_file
from dv4d.pipeline.semantic import (
    object_captions,
    predict_depth,
    rephrased_camera,
    resolve_device,
)
from dv4d.pipeline.tracking import track_objects
from dv4d.pipeline.version import DV4D_VERSION

if TYPE_CHECKING:
    from dv4d.pipeline.run import StageRunner

FRAMES = "frames.npy"
PLAN = "plan.npz"
KEYFRAMES = "keyframes.npy"
GEOMETRY = "geometry.npz"
GEOMETRY_FLAGS = "geometry.json"
DEPTH_PRIOR = "depth_prior.npy"
DEPTH_PRIOR_JSON = "depth_prior.json"
PRIORS_JSON = "priors.json"
SCALE_JSON = "scale.json"
PROPOSALS = "proposals.npy"
PROPOSALS_JSON = "proposals.json"
INSTANCE_RECORDS = "instance_records.json"

CLASSICAL_CPU = {"weights": "classical", "device": "cpu"}


def intrinsics_prior(cfg: AnnotateConfig, info: VideoInfo, size: tuple[int, int]) -> np.ndarray | None:
    """``--intrinsics`` (source-video pixels, displayed orientation) as K at the working resolution."""
    if cfg.intrinsics is None:
        return None
    fx, fy, cx, cy = cfg.intrinsics
    sx, sy = size[0] / info.width, size[1] / info.height
    return np.array(
        [[fx * sx, 0.0, (cx + 0.5) * sx - 0.5], [0.0, fy * sy, (cy + 0.5) * sy - 0.5], [0.0, 0.0, 1.0]]
    )


def ingest(
    art: VideoArtifacts,
    info: VideoInfo,
    plan: SamplePlan,
    size: tuple[int, int],
    cfg: AnnotateConfig,
    advance: Callable[[int], None],
) -> dict[str, Any]:
    """Decode the sampled frames once, chunk by chunk: into ``frames.npy`` (read back by rows by the
    stages) and into ``rgb.mp4`` (encoded under a temporary name, renamed when complete)."""
    width, height = size
    num = len(plan.frame_index)
    frames = open_array(art.work(FRAMES), (num, height, width, 3), np.uint8)
    fps = num / max(float(plan.timestamps[-1] - plan.timestamps[0]), 1e-6) if num > 1 else info.fps
    written = 0
    with atomic_path(art.work(art.RGB)) as rgb, VideoWriter(rgb, width, height, fps) as writer:
        for chunk in iter_frames(info, plan, size, cfg.chunk_frames):
            frames[written : written + len(chunk)] = chunk
            writer.write(chunk)
            written += len(chunk)
            advance(len(chunk))
    frames.flush()
    save_npz(art.work(PLAN), frame_index=plan.frame_index, timestamps=plan.timestamps)
    return {"model": "ffmpeg", **CLASSICAL_CPU, "frames": written}


def save_geometry(art: VideoArtifacts, geo: GeometryResult) -> None:
    save_npz(
        art.work(GEOMETRY),
        c2w=geo.c2w,
        K=geo.K,
        is_keyframe=geo.is_keyframe,
        posed=geo.posed,
        points=geo.points,
        colors=geo.colors,
    )
    write_json(
        art.work(GEOMETRY_FLAGS),
        {"reproj_rmse_px": geo.reproj_rmse_px, "static_fraction": geo.static_fraction, "flags": geo.flags},
    )


def load_geometry(art: VideoArtifacts) -> GeometryResult:
    arrays = np.load(art.work(GEOMETRY))
    extra = read_json(art.work(GEOMETRY_FLAGS))
    return GeometryResult(
        c2w=arrays["c2w"],
        K=arrays["K"],
        is_keyframe=arrays["is_keyframe"],
        points=arrays["points"],
        colors=arrays["colors"],
        reproj_rmse_px=float(extra["reproj_rmse_px"]),
        static_fraction=float(extra["static_fraction"]),
        flags=list(extra["flags"]),
        posed=arrays["posed"],
    )


def link_into(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
    """Hard-link a finished work file into the staging folder (idempotent on resume)."""
    if os.path.lexists(dst):
        os.unlink(dst)
    os.link(src, dst)


def metric_scale(frames: np.ndarray, geo: GeometryResult, model_depth: np.ndarray) -> float | None:
    """Robust scale taking the geometry's units to the depth model's: per keyframe the median ratio of
    model depth to densified depth, then the median of those within 3 MADs. ``None`` when unobservable."""
    ratios = []
    for i in np.flatnonzero(geo.is_keyframe):
        ours = densify_depth(frames, geo, int(i))
        theirs = np.asarray(model_depth[i], dtype=np.float32)
        valid = (ours > 0) & (theirs > 0)
        if valid.sum() >= 100:
            ratios.append(float(np.median(theirs[valid] / ours[valid])))
    if not ratios:
        return None
    r = np.array(ratios)
    mad = np.median(np.abs(r - np.median(r))) + 1e-12
    return float(np.median(r[np.abs(r - np.median(r)) <= 3 * mad]))


def scaled(geo: GeometryResult, scale: float) -> GeometryResult:
    """The geometry with lengths multiplied by ``scale`` (camera centres and points)."""
    c2w = geo.c2w.copy()
    c2w[:, :3, 3] *= scale
    return dataclasses.replace(geo, c2w=c2w, points=geo.points * scale)


def model_record(suite: ModelSuite, *roles: str) -> dict[str, Any]:
    """Component record of a model-backed stage: the suite's description of the roles it used."""
    comps = suite.components()
    first = comps[roles[0]]
    return {
        "model": "+".join(str(comps[r]["model"]) for r in roles),
        "weights": "+".join(str(comps[r]["weights"]) for r in roles),
        "device": first["device"],
        "dtype": first["dtype"],
    }


def prior_record(folder: Path | None, found: Path | None) -> str | None:
    """Manifest entry of a folder prior: the file used, a note when this video has none, or ``None``."""
    if folder is None:
        return None
    return str(found.resolve()) if found is not None else f"no {folder.resolve()}/<stem>.npy for this video"


def run_all(
    runner: "StageRunner", info: VideoInfo, art: VideoArtifacts, cfg: AnnotateConfig, log: logging.Logger
) -> int:
    """Run every stage of one video; returns the number of sampled frames."""
    size = working_size(info.width, info.height, cfg.resolution, source=info.path)
    plan = plan_sampling(info, cfg.fps, cfg.max_frames)
    num = len(plan.frame_index)
    shape = (num, size[1], size[0])
    log.info("video %s: %dx%d, %d frames -> %d sampled at %dx%d", info.path, info.width, info.height,
             info.num_frames, num, size[0], size[1])  # fmt: skip
    suite = shared_suite(cfg.preset, resolve_device(cfg.device), cfg.weights_dir, cfg.random_init_missing)
    runner.run("ingest", num, lambda: ingest(art, info, plan, size, cfg, runner.progress.advance))
    frames = as_rows(load_array(art.work(FRAMES)))

    def keyframes() -> dict[str, Any]:
        save_npy(art.work(KEYFRAMES), select_keyframes(frames, cfg.keyframes))
        return {"model": "flow-parallax", **CLASSICAL_CPU}

    runner.run("keyframes", None, keyframes)
    is_keyframe = np.load(art.work(KEYFRAMES))

    depth_file = prior_file(cfg.depth_dir, info.path)
    masks_file = prior_file(cfg.masks_dir, info.path)
    write_json(art.work(PRIORS_JSON), {
        "intrinsics": list(cfg.intrinsics) if cfg.intrinsics else None,
        "depth": prior_record(cfg.depth_dir, depth_file),
        "masks": prior_record(cfg.masks_dir, masks_file),
    })  # fmt: skip
    has_depth = depth_file is not None or suite.has("depth")
    has_objects = masks_file is not None or suite.has("detector")

    if depth_file is not None:

        def depth_prior() -> dict[str, Any]:
            out = open_array(art.work(DEPTH_PRIOR), shape, np.float16)
            out[:] = load_depth_prior(depth_file, info, plan, size)
            out.flush()
            runner.progress.advance(num)
            write_json(art.work(DEPTH_PRIOR_JSON), {"focal_px": None, "metric": True})
            return {"model": "user-depth-prior", "weights": str(depth_file), "device": "cpu"}

        runner.run("depth_prior", num, depth_prior)
    elif suite.has("depth"):

        def depth_model() -> dict[str, Any]:
            out = open_array(art.work(DEPTH_PRIOR), shape, np.float16)
            focal, metric = predict_depth(
                suite, frames, as_rows(out), cfg.chunk_frames, runner.progress.advance
            )
            out.flush()
            write_json(art.work(DEPTH_PRIOR_JSON), {"focal_px": focal, "metric": metric})
            return model_record(suite, "depth")

        runner.run("depth_model", num, depth_model)
    model_info = read_json(art.work(DEPTH_PRIOR_JSON)) if has_depth else None

    def geometry() -> dict[str, Any]:
        def tick(done: int, total: int) -> None:
            runner.progress.advance(1)

        K_prior = intrinsics_prior(cfg, info, size)
        if K_prior is None and model_info is not None and model_info["metric"] and model_info["focal_px"]:
            f = float(model_info["focal_px"])
            K_prior = np.array([[f, 0, (size[0] - 1) / 2], [0, f, (size[1] - 1) / 2], [0, 0, 1]])
        geo = estimate_geometry(frames, is_keyframe, K_prior, cfg.geometry, tick)
        scale = metric_scale(frames, geo, as_rows(load_array(art.work(DEPTH_PRIOR)))) if model_info else None
        if model_info and scale is None:
            geo.flags.append("scale_unobserved")
        save_geometry(art, scaled(geo, scale or 1.0))
        write_json(art.work(SCALE_JSON), {"scale": scale})
        return {"model": "incremental-sfm", **CLASSICAL_CPU}

    runner.run("geometry", None, geometry)
    geo = load_geometry(art)

    def depth() -> dict[str, Any]:
        if model_info is not None:
            link_into(art.work(DEPTH_PRIOR), art.work(art.DEPTH))
            runner.progress.advance(num)
            return dict(runner.components["depth_prior"]) if depth_file else model_record(suite, "depth")
        out = open_array(art.work(art.DEPTH), shape, np.float16)
        for i in range(num):
            out[i] = densify_depth(frames, geo, i)
            runner.progress.advance(1)
        out.flush()
        return {"model": "flow-triangulation", **CLASSICAL_CPU}

    runner.run("depth", num, depth)

    if masks_file is not None:

        def masks_prior() -> dict[str, Any]:
            out = open_array(art.work(PROPOSALS), shape, np.uint16)
            masks, labels = load_masks_prior(masks_file, info, plan, size)
            out[:] = masks
            out.flush()
            runner.progress.advance(num)
            write_json(art.work(PROPOSALS_JSON), {"names": [], "labels": labels})
            return {"model": "user-masks-prior", "weights": str(masks_file), "device": "cpu"}

        runner.run("objects", num, masks_prior)
    elif suite.has("detector"):

        def objects() -> dict[str, Any]:
            ids = open_array(art.work(art.INSTANCES), shape, np.uint16)
            depth_all = as_rows(load_array(art.work(art.DEPTH)))
            found_motion = segment_motion(frames, depth_all, geo.K, geo.c2w, cfg.motion)
            motion = ((m.mask, m.step_flow) for m in found_motion)
            names, found = track_objects(suite, frames, geo.is_keyframe, motion, as_rows(ids), cfg.tracking,
                                         advance=runner.progress.advance)  # fmt: skip
            ids.flush()
            write_json(art.work(PROPOSALS_JSON), {"names": names})
            write_json(art.work(INSTANCE_RECORDS), [r.to_json() for r in found])
            return model_record(suite, "vlm", "detector", "segmenter")

        runner.run("objects", num, objects)

    def instances() -> dict[str, Any]:
        depth_all = as_rows(load_array(art.work(art.DEPTH)))
        proposals = load_array(art.work(PROPOSALS)) if has_objects else None
        labels = read_json(art.work(PROPOSALS_JSON))["labels"] if proposals is not None else None
        ids = open_array(art.work(art.INSTANCES), shape, np.uint16)
        tracker = InstanceTracker(cfg.tracker)
        prev_flow: np.ndarray | None = None
        if proposals is not None and labels is not None:
            for i in range(num):
                names = {k + 1: name for k, name in enumerate(labels[i])}
                ids[i] = tracker.update(i, np.asarray(proposals[i]), prev_flow, labels=names)
                prev_flow = dis_flow(frames[i], frames[i + 1]) if i + 1 < num else None
                runner.progress.advance(1)
        else:
            for i, found in enumerate(segment_motion(frames, depth_all, geo.K, geo.c2w, cfg.motion)):
                ids[i] = tracker.update(i, found.mask, prev_flow)
                prev_flow = found.step_flow
                runner.progress.advance(1)
        lookup = tracker.finish()
        for i in range(num):
            ids[i] = lookup[ids[i]]
        ids.flush()
        write_json(art.work(INSTANCE_RECORDS), [r.to_json() for r in tracker.records()])
        if proposals is not None:
            return {"model": "proposal-tracking", **CLASSICAL_CPU}
        return {"model": "flow-residual-motion", **CLASSICAL_CPU}

    if masks_file is not None or not suite.has("detector"):  # the model path tracked its instances above
        runner.run("instances", num, instances)

    def captions() -> dict[str, Any]:
        timestamps = np.load(art.work(PLAN))["timestamps"]
        metric = bool(model_info and model_info["metric"])
        camera = camera_caption(geo.c2w, timestamps, metric=metric, cfg=cfg.captions)
        records = read_json(art.work(INSTANCE_RECORDS))
        if not suite.has("vlm"):
            write_json(art.work(art.INSTANCES_JSON), records)
            write_json(art.work(art.CAPTIONS), captions_json(None, camera, {}))
            return {"model": "trajectory", **CLASSICAL_CPU}
        keyframes = np.flatnonzero(geo.is_keyframe)
        if len(keyframes) > MAX_VLM_FRAMES:  # the scene caption uses this many, spread over the video
            keyframes = keyframes[np.linspace(0, len(keyframes) - 1, MAX_VLM_FRAMES).round().astype(int)]
        keys = [frames[i] for i in keyframes]
        objects = object_captions(
            suite, frames, as_rows(load_array(art.work(art.INSTANCES))), [r["id"] for r in records]
        )
        for r in records:
            r["caption"] = objects.get(r["id"])
        write_json(art.work(art.INSTANCES_JSON), records)
        scene = suite.caption_scene(keys)
        write_json(art.work(art.CAPTIONS), captions_json(scene, rephrased_camera(suite, camera), objects))
        return model_record(suite, "vlm")

    runner.run("captions", 1, captions)

    def export() -> dict[str, Any]:
        art.staging_dir.mkdir(parents=True, exist_ok=True)
        sampled = np.load(art.work(PLAN))
        write_cameras(art.staged(art.CAMERAS), geo.c2w, geo.K, sampled["frame_index"], sampled["timestamps"],
                      geo.is_keyframe, geo.posed)  # fmt: skip
        write_points(art.staged(art.POINTS), geo.points, geo.colors)
        for name in (art.DEPTH, art.INSTANCES, art.INSTANCES_JSON, art.CAPTIONS, art.RGB):
            link_into(art.work(name), art.staged(name))
        return {"model": "open3d", **CLASSICAL_CPU}

    runner.run("export", 1, export)
    return num


def complete_manifest(
    base: dict[str, Any], runner: "StageRunner", art: VideoArtifacts, cfg: AnnotateConfig
) -> dict[str, Any]:
    """The ``complete`` manifest of a finished video (written last, into the staging folder)."""
    frames = load_array(art.work(FRAMES))
    geo_extra = read_json(art.work(GEOMETRY_FLAGS))
    is_keyframe = np.load(art.work(KEYFRAMES))
    return {
        "schema": SCHEMA,
        "status": "complete",
        **base,
        "frames": {
            "count": int(frames.shape[0]),
            "width": int(frames.shape[2]),
            "height": int(frames.shape[1]),
        },
        "config": cfg.to_json(),
        "config_hash": art.config_hash,
        "components": runner.components,
        "priors": read_json(art.work(PRIORS_JSON)),
        "metric": bool((read_json(art.work(DEPTH_PRIOR_JSON)) or {}).get("metric", False)),
        "quality": {
            "reproj_rmse_px": geo_extra["reproj_rmse_px"],
            "static_fraction": geo_extra["static_fraction"],
            "num_keyframes": int(is_keyframe.sum()),
            "flags": geo_extra["flags"],
        },
        "dv4d_version": DV4D_VERSION,
    }
