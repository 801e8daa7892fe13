"""Stages that use the foundation models of a preset (``dv4d.models.suite.ModelSuite``): metric depth,
object captions, the camera-caption rephrasing (object tracking is in ``dv4d.pipeline.tracking``). Pure
functions; the suite does the batching."""

from collections.abc import Callable

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


def object_captions(
    suite: ModelSuite, frames: np.ndarray, instances: np.ndarray, ids: list[int]
) -> dict[int, str]:
    """One caption per instance of ``ids`` that has pixels, from the frame where it covers the most pixels
    (crop of its box + mask). ``instances`` (F,H,W) integer ids are read once, frame by frame; the VLM
    captions the objects in batches."""
    if not ids:
        return {}
    wanted = np.array(ids, dtype=np.int64)
    best_area = np.zeros(len(wanted), np.int64)
    best_frame = np.zeros(len(wanted), np.int64)
    for f in range(len(instances)):
        counts = np.bincount(np.asarray(instances[f]).ravel(), minlength=int(wanted.max()) + 1)[wanted]
        better = counts > best_area
        best_area[better], best_frame[better] = counts[better], f
    objects: list[tuple[np.ndarray, np.ndarray]] = []
    for instance, area, best in zip(ids, best_area, best_frame, strict=True):
        if area == 0:
            continue
        mask = np.asarray(instances[int(best)]) == instance
        ys, xs = np.nonzero(mask)
        y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
        objects.append((np.asarray(frames[int(best)])[y0:y1, x0:x1], mask[y0:y1, x0:x1]))
    present = [i for i, area in zip(ids, best_area, strict=True) if area > 0]
    return dict(zip(present, suite.caption_objects(objects), strict=True))


def rephrased_camera(suite: ModelSuite, camera: CameraCaption) -> CameraCaption:
    """The VLM's rephrasing of the trajectory caption when it keeps every number and direction."""
    result = suite.rephrase_camera(camera.text)
    if not result.accepted:
        return camera
    return CameraCaption(text=result.text, source="trajectory+vlm", stats=camera.stats)
