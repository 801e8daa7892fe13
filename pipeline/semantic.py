"""Stages that use the foundation models of a preset (``dv4d.models.suite.ModelSuite``): metric depth,
named dynamic-object proposals, object and scene captions. Pure functions; the suite does the batching."""

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from dv4d.models.suite import ModelSuite
from dv4d.pipeline.captions import CameraCaption


def resolve_device(device: str) -> str:
    """``auto`` -> ``cuda`` when a GPU is visible, else ``cpu``; anything else unchanged."""
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def predict_depth(
    suite: ModelSuite, frames: np.ndarray, out: np.ndarray, chunk: int, advance: Callable[[int], None]
) -> tuple[float | None, bool]:
    """Fill ``out`` (F,H,W) with the model's metric depth, ``chunk`` frames at a time.

    Returns (median focal in pixels over all frames or ``None`` when the model has no FoV head,
    whether the depth is metric, i.e. came from pretrained weights).
    """
    focals: list[np.ndarray] = []
    metric = False
    for start in range(0, len(frames), chunk):
        batch = np.array(frames[start : start + chunk])  # writable copy for the model processors
        pred = suite.depth(batch)
        out[start : start + len(batch)] = pred.depth
        metric = pred.metric
        if pred.focal_px is not None:
            focals.append(pred.focal_px)
        advance(len(batch))
    focal = float(np.median(np.concatenate(focals))) if focals else None
    return focal, metric


@dataclass(frozen=True)
class Proposals:
    """Named object masks per frame from the detector + segmenter.

    ``names``: the moving-object names the VLM gave for the video.
    ``labels``: per frame, ``labels[f][k-1]`` is the name of proposal value ``k`` in that frame's map.
    """

    names: list[str]
    labels: list[list[str]]


def propose_objects(
    suite: ModelSuite,
    frames: np.ndarray,
    keyframes: np.ndarray,
    out: np.ndarray,
    chunk: int,
    advance: Callable[[int], None],
) -> Proposals:
    """The VLM names the moving objects on keyframes; the detector boxes them and SAM segments them in
    every frame. Writes per-frame proposal maps (values 1..N, 0 = none) into ``out`` (F,H,W) uint16."""
    key_images = [np.array(frames[i]) for i in np.flatnonzero(keyframes)]
    names = suite.dynamic_objects(key_images).names
    labels: list[list[str]] = []
    for start in range(0, len(frames), chunk):
        batch = np.array(frames[start : start + chunk])  # writable copy for the model processors
        detections = suite.detect(batch, names) if names else None
        for k, frame in enumerate(batch):
            proposal = np.zeros(frame.shape[:2], np.uint16)
            frame_labels: list[str] = []
            found = detections.frames[k] if detections is not None else None
            if found is not None and len(found.boxes):
                masks = suite.segment(frame, found.boxes).masks
                order = np.argsort(-found.scores)  # higher-scoring boxes win overlapping pixels
                for rank in order[::-1]:
                    frame_labels.append(found.labels[rank])
                    proposal[masks[rank]] = len(frame_labels)
            out[start + k] = proposal
            labels.append(frame_labels)
        advance(len(batch))
    return Proposals(names, labels)


def object_captions(
    suite: ModelSuite, frames: np.ndarray, instances: np.ndarray, ids: list[int]
) -> dict[int, str]:
    """One caption per instance, from the frame where it covers the most pixels (crop + mask)."""
    captions: dict[int, str] = {}
    for instance in ids:
        areas = [(int((np.asarray(instances[f]) == instance).sum()), f) for f in range(len(instances))]
        area, best = max(areas)
        if area == 0:
            continue
        mask = np.asarray(instances[best]) == instance
        ys, xs = np.nonzero(mask)
        y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
        crop = np.asarray(frames[best])[y0:y1, x0:x1]
        captions[instance] = suite.caption_object(crop, mask[y0:y1, x0:x1])
    return captions


def rephrased_camera(suite: ModelSuite, camera: CameraCaption) -> CameraCaption:
    """The VLM's rephrasing of the trajectory caption when it keeps every number and direction."""
    result = suite.rephrase_camera(camera.text)
    if not result.accepted:
        return camera
    return CameraCaption(text=result.text, source="trajectory+vlm", stats=camera.stats)
