"""``ModelSuite``: every model a preset uses, behind the calls the pipeline makes per video.

The pipeline never touches model internals: it builds one suite per worker process
(``shared_suite``), and calls ``depth``, ``dynamic_objects``, ``detect``, ``segment``,
``caption_object``, ``caption_scene`` and ``rephrase_camera``. Weights are resolved when the
suite is built (one error lists every missing checkpoint); each network is loaded on first use
and kept for the life of the process.
"""

import time
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dv4d.models import registry, vlm_tasks
from dv4d.models.base import (
    DepthAdapter,
    DepthPrediction,
    Detections,
    DetectorAdapter,
    DynamicObjectNames,
    Masks,
    Rephrasing,
    SegmenterAdapter,
)
from dv4d.models.errors import ModelsError
from dv4d.models.generator import TextGenerator
from dv4d.models.presets import get_preset
from dv4d.models.weights import resolve_all

MAX_VLM_FRAMES = 4
"""Most keyframes shown to the VLM in one prompt (evenly spaced over those given)."""


def _check_device(device: str) -> None:
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ModelsError(f"device '{device}' requested but CUDA is not available on this machine")
    if not (device == "cpu" or device.startswith("cuda")):
        raise ModelsError(f"device must be 'cpu' or 'cuda[:N]', got '{device}'")


def _spread(frames: list[np.ndarray], count: int) -> list[np.ndarray]:
    if len(frames) <= count:
        return list(frames)
    picks = np.linspace(0, len(frames) - 1, count).round().astype(int)
    return [frames[i] for i in picks]


class ModelSuite:
    """The models of one preset on one device; cheap to build, loads networks on first use."""

    def __init__(
        self,
        preset: str,
        device: str = "cpu",
        weights_dir: Path | None = None,
        batch_size: int | None = None,
    ) -> None:
        """Resolve the preset's checkpoints (raises ``MissingWeightsError`` listing all missing).

        ``batch_size``: frames per forward pass for depth and detection (default 8); bounds
        accelerator memory on long videos (Depth Pro peaked at 10 GB for 4 frames in bf16 on an H100).
        """
        _check_device(device)
        self.preset = get_preset(preset)
        self.device = device
        self.dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
        self.batch_size = batch_size or 8
        wanted = {c.role: c.weights for c in self.preset.models if c.weights is not None}
        resolved = resolve_all(wanted, weights_dir, preset)
        self._adapters: dict[str, Any] = {
            c.role: registry.create(c.model, resolved.get(c.role)) for c in self.preset.models
        }
        self._loaded: set[str] = set()
        self._seconds: dict[str, float] = dict.fromkeys(self._adapters, 0.0)

    @property
    def roles(self) -> tuple[str, ...]:
        """Roles this preset fills (empty for ``classical``)."""
        return tuple(self._adapters)

    def has(self, role: str) -> bool:
        """Whether the preset has a model for ``role``."""
        return role in self._adapters

    def _use(self, role: str) -> Any:
        if role not in self._adapters:
            raise ModelsError(
                f"preset '{self.preset.name}' has no {role} model"
                + (" (classical uses no learned models)" if not self._adapters else "")
            )
        adapter = self._adapters[role]
        if role not in self._loaded:
            start = time.perf_counter()
            adapter.load(self.device, self.dtype)
            self._seconds[role] += time.perf_counter() - start
            self._loaded.add(role)
        return adapter

    def _timed(self, role: str, start: float) -> None:
        if self.device.startswith("cuda"):
            torch.cuda.synchronize(self.device)
        self._seconds[role] += time.perf_counter() - start

    def depth(self, frames: np.ndarray) -> DepthPrediction:
        """Metric depth (and focal where the model gives it) for ``frames`` (B, H, W, 3) uint8."""
        if len(frames) == 0:
            raise ValueError("depth() needs at least one frame")
        adapter: DepthAdapter = self._use("depth")
        start = time.perf_counter()
        parts = [
            adapter.predict(frames[i : i + self.batch_size]) for i in range(0, len(frames), self.batch_size)
        ]
        self._timed("depth", start)
        focals = [p.focal_px for p in parts if p.focal_px is not None]
        return DepthPrediction(
            depth=np.concatenate([p.depth for p in parts]),
            focal_px=np.concatenate(focals) if len(focals) == len(parts) else None,
            metric=parts[0].metric,
        )

    def dynamic_objects(self, keyframes: list[np.ndarray]) -> DynamicObjectNames:
        """Names of the moving objects, from at most ``MAX_VLM_FRAMES`` of ``keyframes``."""
        adapter: TextGenerator = self._use("vlm")
        start = time.perf_counter()
        names = vlm_tasks.dynamic_object_names(
            adapter, _spread(keyframes, MAX_VLM_FRAMES), self.preset.names_grammar
        )
        self._timed("vlm", start)
        return names

    def detect(self, frames: np.ndarray, names: list[str]) -> Detections:
        """Boxes of ``names`` in every frame of ``frames`` (B, H, W, 3) uint8."""
        adapter: DetectorAdapter = self._use("detector")
        start = time.perf_counter()
        per_frame = []
        for i in range(0, len(frames), self.batch_size):
            per_frame += adapter.predict(frames[i : i + self.batch_size], names).frames
        self._timed("detector", start)
        return Detections(per_frame)

    def segment(self, frame: np.ndarray, boxes: np.ndarray) -> Masks:
        """One mask per box (N, 4) xyxy pixels in ``frame`` (H, W, 3) uint8."""
        adapter: SegmenterAdapter = self._use("segmenter")
        start = time.perf_counter()
        masks = adapter.predict(frame, boxes)
        self._timed("segmenter", start)
        return masks

    def caption_object(self, crop: np.ndarray, mask: np.ndarray) -> str:
        """One sentence about the object under ``mask`` (H, W) bool in ``crop`` (H, W, 3) uint8."""
        adapter: TextGenerator = self._use("vlm")
        start = time.perf_counter()
        text = vlm_tasks.object_caption(adapter, crop, mask)
        self._timed("vlm", start)
        return text

    def caption_scene(self, keyframes: list[np.ndarray]) -> str:
        """A short description of the video from at most ``MAX_VLM_FRAMES`` keyframes."""
        adapter: TextGenerator = self._use("vlm")
        start = time.perf_counter()
        text = vlm_tasks.scene_caption(adapter, _spread(keyframes, MAX_VLM_FRAMES))
        self._timed("vlm", start)
        return text

    def rephrase_camera(self, text: str) -> Rephrasing:
        """VLM rephrasing of a trajectory caption, kept only if every number and direction survives."""
        adapter: TextGenerator = self._use("vlm")
        start = time.perf_counter()
        result = vlm_tasks.rephrase_camera(adapter, text)
        self._timed("vlm", start)
        return result

    def components(self) -> dict[str, dict[str, str | float]]:
        """What ran, per role: model, weights id, device, dtype and seconds (load + inference).

        Empty for ``classical``. Weights are ``repo@revision`` for pretrained checkpoints and
        ``random-init`` for the smoke preset's tiny networks.
        """
        return {
            role: {
                "model": adapter.model_name,
                "weights": adapter.weights_id,
                "device": self.device,
                "dtype": str(self.dtype).removeprefix("torch."),
                "seconds": round(self._seconds[role], 3),
            }
            for role, adapter in self._adapters.items()
        }


@lru_cache(maxsize=4)
def shared_suite(preset: str, device: str, weights_dir: Path | None) -> ModelSuite:
    """One ``ModelSuite`` per (preset, device, weights_dir) per process, so each model loads once."""
    return ModelSuite(preset, device, weights_dir)
