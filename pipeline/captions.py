"""Camera-motion caption computed from the recovered trajectory, and the ``captions.json`` document.

Axes are the camera's own (OpenCV: x right, y down, z forward). Each step between consecutive frames is
expressed in the camera frame at the start of the step and the steps are summed, so "forward" means the
way the camera was looking while it moved (a curved dolly that pans still counts as forward):

- dolly = forward (+z) / back, truck = right (+x) / left, pedestal = up (-y) / down;
- pan = yaw about the camera's up axis (positive = turning left), tilt = pitch about the right axis
  (positive = up), roll about the forward axis (positive = clockwise seen from behind the camera, i.e. the
  right side goes down).

Only movements at or above the thresholds of ``CaptionConfig`` are named; when none is, the camera is
"static camera". Numbers in the text are exactly those of ``stats`` (rounded).
"""

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np


@dataclass(frozen=True)
class CaptionConfig:
    """What is big enough to be named in the camera caption."""

    min_translation: float = 0.05
    """Net movement along one axis (metres, or the reconstruction's unit when not metric) to name it."""
    min_axis_fraction: float = 0.3
    """A translation axis is named only when it carries at least this fraction of the largest one."""
    min_rotation_deg: float = 3.0
    """Net pan, tilt or roll in degrees to name it."""

    def __post_init__(self) -> None:
        if self.min_translation <= 0 or self.min_rotation_deg <= 0 or not 0 <= self.min_axis_fraction <= 1:
            raise ValueError("caption thresholds must be positive (min_axis_fraction in [0, 1])")


@dataclass(frozen=True)
class CameraCaption:
    """The camera-motion caption of one video."""

    text: str
    """E.g. "dolly forward 1.8 m at 0.6 m/s, pan left 35°", or "static camera"."""
    source: str
    """Where it comes from: ``"trajectory"`` (computed from the poses)."""
    stats: dict[str, float | str]
    """``unit`` ("m" or "units"), ``duration_s``, ``path_length``, ``mean_speed`` (unit/s), ``forward``,
    ``right``, ``up`` (summed camera-frame steps, unit), ``pan_deg`` (+ left), ``tilt_deg`` (+ up),
    ``roll_deg`` (+ clockwise from behind)."""


def _fmt(value: float) -> str:
    return f"{value:.2f}".rstrip("0").rstrip(".")


def _stats(c2w: np.ndarray, timestamps: np.ndarray, unit: str) -> dict[str, float | str]:
    R, pos = c2w[:, :3, :3], c2w[:, :3, 3]
    steps = np.einsum("fji,fj->fi", R[:-1], pos[1:] - pos[:-1])  # R_k^T (p_{k+1} - p_k)
    rotvecs = [cv2.Rodrigues(R[k].T @ R[k + 1])[0].ravel() for k in range(len(c2w) - 1)]
    omega = np.sum(rotvecs, axis=0) if rotvecs else np.zeros(3)
    move = steps.sum(axis=0) if len(steps) else np.zeros(3)
    path = float(np.linalg.norm(steps, axis=1).sum())
    duration = float(timestamps[-1] - timestamps[0])
    return {
        "unit": unit,
        "duration_s": duration,
        "path_length": path,
        "mean_speed": path / duration if duration > 0 else 0.0,
        "forward": float(move[2]),
        "right": float(move[0]),
        "up": float(-move[1]),
        "pan_deg": float(np.degrees(-omega[1])),
        "tilt_deg": float(np.degrees(omega[0])),
        "roll_deg": float(np.degrees(omega[2])),
    }


def camera_caption(
    c2w: np.ndarray, timestamps: np.ndarray, metric: bool, cfg: CaptionConfig | None = None
) -> CameraCaption:
    """Caption the camera motion of a trajectory: ``c2w`` (F,4,4) camera-to-world, ``timestamps`` (F,)
    seconds, ``metric`` whether translations are metres. See the module docstring for axes and terms."""
    cfg = cfg or CaptionConfig()
    if c2w.ndim != 3 or c2w.shape[1:] != (4, 4) or len(c2w) < 1 or not np.isfinite(c2w).all():
        raise ValueError(f"c2w must be a finite (F,4,4) array with F >= 1, got shape {c2w.shape}")
    if timestamps.shape != (len(c2w),) or not np.isfinite(timestamps).all():
        raise ValueError(f"timestamps must be a finite ({len(c2w)},) array, got shape {timestamps.shape}")
    if np.any(np.diff(timestamps) < 0):
        raise ValueError("timestamps must not decrease")
    unit = "m" if metric else "units"
    stats = _stats(c2w.astype(np.float64), timestamps.astype(np.float64), unit)

    axes = [("forward", "dolly forward", "dolly back"), ("right", "truck right", "truck left"),
            ("up", "pedestal up", "pedestal down")]  # fmt: skip
    largest = max(abs(float(stats[key])) for key, _, _ in axes)
    moves = sorted(
        (
            (abs(float(stats[key])), pos if float(stats[key]) > 0 else neg)
            for key, pos, neg in axes
            if abs(float(stats[key])) >= max(cfg.min_translation, cfg.min_axis_fraction * largest)
        ),
        reverse=True,
    )
    parts = []
    if moves:
        text = " and ".join(f"{name} {_fmt(amount)} {unit}" for amount, name in moves)
        if float(stats["duration_s"]) > 0:
            text += f" at {_fmt(float(stats['mean_speed']))} {unit}/s"
        parts.append(text)
    for key, pos, neg in (("pan_deg", "pan left", "pan right"), ("tilt_deg", "tilt up", "tilt down"),
                          ("roll_deg", "roll clockwise", "roll counter-clockwise")):  # fmt: skip
        angle = float(stats[key])
        if abs(angle) >= cfg.min_rotation_deg:
            parts.append(f"{pos if angle > 0 else neg} {abs(angle):.0f}°")
    return CameraCaption(", ".join(parts) or "static camera", "trajectory", stats)


def captions_json(scene: str | None, camera: CameraCaption, objects: Mapping[int, str]) -> dict[str, Any]:
    """The ``captions.json`` document: ``{scene, camera: {text, source, stats}, objects: {id: text}}``
    (object ids as strings, JSON keys)."""
    return {
        "scene": scene,
        "camera": {"text": camera.text, "source": camera.source, "stats": dict(camera.stats)},
        "objects": {str(k): v for k, v in sorted(objects.items())},
    }
