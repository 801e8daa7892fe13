"""Adapter protocol and the typed results every adapter returns.

Inputs are RGB ``uint8`` numpy frames ``(B, H, W, 3)`` at the working resolution. Every result
is a frozen dataclass whose docstring gives shapes, dtypes and units.
"""

from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch


class Adapter(Protocol):
    """One foundation model: construct cheaply, ``load`` once per process, then predict."""

    model_name: str
    """Human-readable architecture name, e.g. ``"Depth Pro"``."""
    weights_id: str
    """``"<hf-repo>@<revision>"``, a local path, or ``"random-init"`` for the smoke preset."""

    def load(self, device: str, dtype: torch.dtype) -> None:
        """Build the network, load weights (offline) and move it to ``device`` in ``dtype``."""
        ...


class DepthAdapter(Adapter, Protocol):
    """Metric depth model."""

    def predict(self, frames: np.ndarray) -> "DepthPrediction":
        """Depth for ``frames`` (B, H, W, 3) uint8."""
        ...


class DetectorAdapter(Adapter, Protocol):
    """Open-vocabulary detector."""

    def predict(self, frames: np.ndarray, names: list[str]) -> "Detections":
        """Boxes of ``names`` in ``frames`` (B, H, W, 3) uint8."""
        ...


class SegmenterAdapter(Adapter, Protocol):
    """Box-prompted segmenter."""

    def predict(self, frame: np.ndarray, boxes: np.ndarray) -> "Masks":
        """One mask per box (N, 4) xyxy in ``frame`` (H, W, 3) uint8."""
        ...


@dataclass(frozen=True)
class DepthPrediction:
    """Metric depth for a batch of frames.

    ``depth``: (B, H, W) float32, z-depth in metres at the input frames' resolution, 0 = invalid.
    ``focal_px``: (B,) float64 focal length in pixels of the input resolution (fx = fy), from the
    model's field-of-view head; ``None`` when the model has no field-of-view output.
    ``metric``: True only when a metric model with pretrained weights produced the depth
    (random-init smoke models give ``False``).
    """

    depth: np.ndarray
    focal_px: np.ndarray | None
    metric: bool


@dataclass(frozen=True)
class FrameDetections:
    """Open-vocabulary detections in one frame.

    ``boxes``: (N, 4) float32 ``x0, y0, x1, y1`` in pixels of the frame, clipped to the image.
    ``scores``: (N,) float32 in [0, 1]. ``labels``: N strings, each one of the queried names.
    """

    boxes: np.ndarray
    scores: np.ndarray
    labels: list[str]


@dataclass(frozen=True)
class Detections:
    """Detections for a batch of frames: ``frames[i]`` belongs to input frame ``i``."""

    frames: list[FrameDetections]


@dataclass(frozen=True)
class Masks:
    """Instance masks for the boxes of one frame.

    ``masks``: (N, H, W) bool at the frame's resolution, one per input box, same order.
    ``scores``: (N,) float32 predicted mask quality (SAM's IoU estimate).
    """

    masks: np.ndarray
    scores: np.ndarray


@dataclass(frozen=True)
class Rephrasing:
    """A VLM rephrasing of the trajectory camera caption.

    ``text``: the caption to store: the rephrasing when accepted, else the original text.
    ``accepted``: True when the rephrasing kept every number and direction of the original.
    ``reason``: why a rephrasing was rejected (empty when accepted).
    """

    text: str
    accepted: bool
    reason: str


@dataclass(frozen=True)
class DynamicObjectNames:
    """Names of the moving objects the VLM sees, parsed from JSON ``{"dynamic": [...]}``.

    ``names``: lower-case noun phrases, unique, in the VLM's order (may be empty).
    ``attempts``: how many generations it took to get output that passed validation (>= 1).
    """

    names: list[str]
    attempts: int
