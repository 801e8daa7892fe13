"""Weights, loading and input checks shared by the adapters around ``transformers`` models."""

from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dv4d.models.tiny import RANDOM_INIT, RANDOM_INIT_FULL_SIZE, build_full_size, build_seeded
from dv4d.models.weights import ResolvedWeights


def check_frames(frames: np.ndarray) -> None:
    """Raise ``ValueError`` unless ``frames`` is a uint8 (B, H, W, 3) batch."""
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"frames must be uint8 (B, H, W, 3), got {frames.dtype} {frames.shape}")


def load_pretrained(
    model_class: Any, processor_class: Any, path: Path, dtype: torch.dtype, **processor_options: Any
) -> tuple[Any, Any]:
    """Network (in ``dtype``) and processor from the local folder ``path``: safetensors, no remote code."""
    model = model_class.from_pretrained(
        str(path), local_files_only=True, use_safetensors=True, trust_remote_code=False, dtype=dtype
    )
    processor = processor_class.from_pretrained(str(path), local_files_only=True, **processor_options)
    return model, processor


class HfAdapter(ABC):
    """One ``transformers`` network and its processor: pretrained, or random-init at toy size (smoke) or
    at the checkpoint's full size (benchmarks without the checkpoint)."""

    model_name = ""
    """Human name used in messages."""

    def __init__(self, weights: ResolvedWeights | None, full_size: bool = False) -> None:
        self.weights = weights
        """Pretrained checkpoint, or ``None`` for a random-init network."""
        self.full_size = full_size
        """Without ``weights``: build the checkpoint's architecture at full size instead of the tiny one."""
        random_id = RANDOM_INIT_FULL_SIZE if full_size else RANDOM_INIT
        self.weights_id = random_id if weights is None else weights.spec.weights_id
        """``repo_id@revision``, ``random-init`` or ``random-init-full-size``, recorded in manifests."""
        self.model: Any = None
        self.processor: Any = None
        self.device = "cpu"
        self.dtype = torch.float32

    @abstractmethod
    def _tiny(self) -> tuple[Any, Any]:
        """Tiny random-initialised network of the same architecture, and its processor."""

    @abstractmethod
    def _full(self) -> tuple[Any, Any]:
        """The pretrained checkpoint's architecture at full size with random weights, and its processor."""

    @abstractmethod
    def _pretrained(self, path: Path, dtype: torch.dtype) -> tuple[Any, Any]:
        """Pretrained network (in ``dtype``) and processor from a local folder."""

    def load(self, device: str, dtype: torch.dtype) -> None:
        """Build (smoke) or load (offline, safetensors) the network and move it to ``device``."""
        if self.weights is None and self.full_size:
            model, processor = build_full_size(self._full, device, dtype)
        elif self.weights is None:
            model, processor = build_seeded(self._tiny)
        else:
            model, processor = self._pretrained(self.weights.path, dtype)
        self.model = model.to(device=device, dtype=dtype).eval()
        self.processor = processor
        self.device, self.dtype = device, dtype

    def _require_loaded(self, call: str) -> None:
        """Raise ``RuntimeError`` when ``call`` runs before ``load()``."""
        if self.model is None:
            raise RuntimeError(f"{self.model_name}: call load() before {call}()")
