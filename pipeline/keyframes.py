"""Keyframe selection from optical-flow magnitude with guaranteed coverage."""

from dataclasses import dataclass

import cv2
import numpy as np

from dv4d.pipeline.flow import dis_flow, to_gray


@dataclass(frozen=True)
class KeyframeConfig:
    """How keyframes are picked: a new one when the image has moved enough since the last one."""

    min_flow_fraction: float = 0.03
    """New keyframe when the median flow from the last keyframe exceeds this fraction of the long side."""
    min_gap: int = 1
    """Fewest frames between two keyframes (1 allows consecutive keyframes)."""
    max_gap: int = 8
    """Most frames between two keyframes; a keyframe is forced after this many (covers slow motion)."""
    long_side: int = 256
    """Flow is computed on frames downscaled to at most this long side (speed); thresholds are relative."""

    def __post_init__(self) -> None:
        if self.min_gap < 1 or self.max_gap < self.min_gap:
            raise ValueError(f"need 1 <= min_gap <= max_gap, got {self.min_gap}, {self.max_gap}")
        if self.min_flow_fraction <= 0:
            raise ValueError(f"min_flow_fraction must be positive, got {self.min_flow_fraction}")
        if self.long_side < 16:
            raise ValueError(f"long_side must be >= 16, got {self.long_side}")


def _small_gray(frame: np.ndarray, long_side: int) -> np.ndarray:
    gray = to_gray(np.asarray(frame))
    scale = long_side / max(gray.shape)
    if scale >= 1.0:
        return gray
    size = (max(8, round(gray.shape[1] * scale)), max(8, round(gray.shape[0] * scale)))
    return cv2.resize(gray, size, interpolation=cv2.INTER_AREA)


def select_keyframes(frames: np.ndarray, cfg: KeyframeConfig) -> np.ndarray:
    """(F,) bool keyframe flags for (F, H, W, 3) uint8 frames (a memmap is fine; read one frame at a time).

    The first and the last frame are always keyframes; consecutive keyframes are at most `max_gap`
    frames apart and at least `min_gap` (except before the forced last frame); in between, a keyframe
    is set when the median flow magnitude from the previous keyframe reaches `min_flow_fraction` of
    the image's long side.
    """
    num = len(frames)
    if num == 0:
        raise ValueError("no frames to select keyframes from")
    keep = np.zeros(num, bool)
    keep[0] = keep[-1] = True
    last = 0
    last_gray = _small_gray(frames[0], cfg.long_side)
    threshold = cfg.min_flow_fraction * max(last_gray.shape)
    for i in range(1, num - 1):
        gap = i - last
        if gap < cfg.min_gap:
            continue
        gray = _small_gray(frames[i], cfg.long_side)
        moved = float(np.median(np.linalg.norm(dis_flow(last_gray, gray, preset="medium"), axis=-1)))
        if gap >= cfg.max_gap or moved >= threshold:
            keep[i] = True
            last, last_gray = i, gray
    return keep
