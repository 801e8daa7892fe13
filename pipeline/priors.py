"""User-given priors: ``--depth-dir`` and ``--masks-dir`` arrays, converted to the sampled frames at the
working resolution (DESIGN.md, Conventions)."""

from pathlib import Path

import cv2
import numpy as np

from dv4d.pipeline.errors import Dv4dError
from dv4d.pipeline.ingest import SamplePlan, VideoInfo


def prior_file(folder: Path | None, video: Path) -> Path | None:
    """``folder/<video-stem>.npy`` when the folder was given and holds one, else ``None``."""
    if folder is None:
        return None
    path = folder / f"{video.stem}.npy"
    return path if path.is_file() else None


def _open_prior(path: Path, info: VideoInfo, what: str) -> np.ndarray:
    try:
        array = np.load(path, mmap_mode="r")
    except (OSError, ValueError) as exc:
        raise Dv4dError(f"{what} prior {path} is not a readable .npy array: {exc}") from None
    if array.ndim != 3:
        raise Dv4dError(f"{what} prior {path} must be (N,h,w), got shape {array.shape}")
    if array.shape[0] != info.num_frames:
        raise Dv4dError(
            f"{what} prior {path} has {array.shape[0]} frames, the video has {info.num_frames} source frames"
        )
    h, w = array.shape[1:]
    if abs(w / h - info.width / info.height) > 0.02 * info.width / info.height:
        raise Dv4dError(
            f"{what} prior {path} is {w}x{h}, not the video's aspect ({info.width}x{info.height})"
        )
    return array


def load_depth_prior(path: Path, info: VideoInfo, plan: SamplePlan, size: tuple[int, int]) -> np.ndarray:
    """(F,H,W) float32 metres for the sampled frames; non-finite or negative values become 0 (invalid).

    Resized with nearest-neighbour so invalid pixels never blend into valid ones."""
    array = _open_prior(path, info, "depth")
    out = np.empty((len(plan.frame_index), size[1], size[0]), np.float32)
    for k, index in enumerate(plan.frame_index):
        depth = np.asarray(array[index], dtype=np.float32)
        depth = np.where(np.isfinite(depth) & (depth > 0), depth, 0.0).astype(np.float32)
        out[k] = cv2.resize(depth, size, interpolation=cv2.INTER_NEAREST)
    return out


def load_masks_prior(
    path: Path, info: VideoInfo, plan: SamplePlan, size: tuple[int, int]
) -> tuple[np.ndarray, list[list[str]]]:
    """Per sampled frame, the user's instance ids renumbered 1..K (0 = background) at the working size,
    as (F,H,W) uint16, with the label ``object`` for each of the K values of each frame."""
    array = _open_prior(path, info, "masks")
    if not np.issubdtype(array.dtype, np.integer):
        raise Dv4dError(f"masks prior {path} must hold integer ids, got {array.dtype}")
    out = np.zeros((len(plan.frame_index), size[1], size[0]), np.uint16)
    labels: list[list[str]] = []
    for k, index in enumerate(plan.frame_index):
        ids = cv2.resize(np.asarray(array[index], dtype=np.int32), size, interpolation=cv2.INTER_NEAREST)
        values = np.unique(ids[ids != 0])
        lookup = np.searchsorted(values, ids)
        out[k] = np.where(ids != 0, lookup + 1, 0)
        labels.append(["object"] * len(values))
    return out, labels
