"""``ModelSuite``: every model a preset uses, behind the calls the pipeline makes per video.

The pipeline never touches model internals: it builds one suite per worker process
(``shared_suite``), and calls ``depth``, ``dynamic_objects``, ``detect``, ``segment``,
``caption_objects``, ``caption_scene`` and ``rephrase_camera`` (benchmarks also ``load`` and
``generate``). Weights are resolved when the suite is built (one error lists every missing
checkpoint); each network is loaded on first use and kept for the life of the process. Every call
runs on the preset's CPU thread count (one thread for the smoke preset's tiny networks) and its time,
synchronised on CUDA, is added to its role's seconds.
"""

import time
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dv4d.models import registry, vlm_tasks
from dv4d.models.base import (
    DepthPrediction,
    Detections,
    DynamicObjectNames,
    Masks,
    Rephrasing,
)
from dv4d.models.errors import ModelsError
from dv4d.models.generator import Decoding, Request
from dv4d.models.presets import get_preset
from dv4d.models.weights import find_weights, resolve_all

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
        full_size_if_missing: bool = False,
    ) -> None:
        """Resolve the preset's checkpoints (raises ``MissingWeightsError`` listing all missing).

        ``batch_size``: frames per forward pass for depth and detection, objects per VLM caption batch
        (default 8); bounds accelerator memory on long videos (Depth Pro peaked at 10 GB for 4 frames
        in bf16 on an H100). ``full_size_if_missing``: for benchmarks only, a missing checkpoint gives
        its architecture at full size with random weights (``random-init-full-size``) instead of the
        error.
        """
        _check_device(device)
        self.preset = get_preset(preset)
        self.device = device
        self.dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
        self.batch_size = batch_size or 8
        wanted = {c.role: c.weights for c in self.preset.models if c.weights is not None}
        if full_size_if_missing:
            found = {role: find_weights(spec, weights_dir) for role, spec in wanted.items()}
            resolved = {role: weights for role, weights in found.items() if weights is not None}
        else:
            resolved = resolve_all(wanted, weights_dir, preset)
        self._adapters: dict[str, Any] = {
            c.role: registry.create(c.model, resolved.get(c.role), c.weights is not None)
            for c in self.preset.models
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

    @contextmanager
    def _threads(self) -> Iterator[None]:
        """Run the body on the preset's CPU thread count (``Preset.cpu_threads``), then restore it."""
        threads = self.preset.cpu_threads
        if threads is None or self.device != "cpu":
            yield
            return
        before = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            yield
        finally:
            torch.set_num_threads(before)

    @contextmanager
    def _running(self, role: str) -> Iterator[Any]:
        """The loaded adapter of ``role``; the body's time (synchronised on CUDA) counts to the role."""
        with self._threads():
            adapter = self._use(role)
            start = time.perf_counter()
            yield adapter
            if self.device.startswith("cuda"):
                torch.cuda.synchronize(self.device)
            self._seconds[role] += time.perf_counter() - start

    def load(self, *roles: str) -> None:
        """Load the networks of ``roles`` (default: all of the preset's) now instead of on first use."""
        for role in roles or self.roles:
            with self._threads():
                self._use(role)

    def depth(self, frames: np.ndarray) -> DepthPrediction:
        """Metric depth (and focal where the model gives it) for ``frames`` (B, H, W, 3) uint8."""
        if len(frames) == 0:
            raise ValueError("depth() needs at least one frame")
        with self._running("depth") as adapter:
            step = self.batch_size
            parts: list[DepthPrediction] = [
                adapter.predict(frames[i : i + step]) for i in range(0, len(frames), step)
            ]
        focals = [p.focal_px for p in parts if p.focal_px is not None]
        return DepthPrediction(
            depth=np.concatenate([p.depth for p in parts]),
            focal_px=np.concatenate(focals) if len(focals) == len(parts) else None,
            metric=parts[0].metric,
        )

    def dynamic_objects(self, keyframes: list[np.ndarray]) -> DynamicObjectNames:
        """Names of the moving objects, from at most ``MAX_VLM_FRAMES`` of ``keyframes``."""
        with self._running("vlm") as adapter:
            return vlm_tasks.dynamic_object_names(
                adapter, _spread(keyframes, MAX_VLM_FRAMES), self.preset.names_grammar
            )

    def detect(self, frames: np.ndarray, names: list[str]) -> Detections:
        """Boxes of ``names`` in every frame of ``frames`` (B, H, W, 3) uint8."""
        per_frame = []
        with self._running("detector") as adapter:
            for i in range(0, len(frames), self.batch_size):
                per_frame += adapter.predict(frames[i : i + self.batch_size], names).frames
        return Detections(per_frame)

    def segment(self, frame: np.ndarray, boxes: np.ndarray) -> Masks:
        """One mask per box (N, 4) xyxy pixels in ``frame`` (H, W, 3) uint8."""
        with self._running("segmenter") as adapter:
            masks: Masks = adapter.predict(frame, boxes)
        return masks

    def caption_objects(self, objects: list[tuple[np.ndarray, np.ndarray]]) -> list[str]:
        """One sentence per (crop (H, W, 3) uint8, mask (H, W) bool) of ``objects``, in order.

        Batched ``batch_size`` objects per generation (bounds accelerator memory)."""
        texts: list[str] = []
        with self._running("vlm") as adapter:
            for i in range(0, len(objects), self.batch_size):
                texts += vlm_tasks.object_captions(adapter, objects[i : i + self.batch_size])
        return texts

    def generate(self, requests: list[Request], decoding: Decoding) -> list[str]:
        """The VLM's raw answers to ``requests`` in one batch, without validation or retries (what
        benchmarks time: the cost of one pass of the captioning or naming tasks)."""
        with self._running("vlm") as adapter:
            answers: list[str] = adapter.generate_batch(requests, decoding)
        return answers

    def caption_scene(self, keyframes: list[np.ndarray]) -> str:
        """A short description of the video from at most ``MAX_VLM_FRAMES`` keyframes."""
        with self._running("vlm") as adapter:
            return vlm_tasks.scene_caption(adapter, _spread(keyframes, MAX_VLM_FRAMES))

    def rephrase_camera(self, text: str) -> Rephrasing:
        """VLM rephrasing of a trajectory caption, kept only if every number and direction survives."""
        with self._running("vlm") as adapter:
            return vlm_tasks.rephrase_camera(adapter, text)

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
def shared_suite(
    preset: str, device: str, weights_dir: Path | None, full_size_if_missing: bool = False
) -> ModelSuite:
    """One ``ModelSuite`` per (preset, device, weights_dir, full_size_if_missing) per process, so each
    model loads once."""
    return ModelSuite(preset, device, weights_dir, full_size_if_missing=full_size_if_missing)
