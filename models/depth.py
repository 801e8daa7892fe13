"""Metric depth adapters: Depth Pro (depth + field of view) and Depth Anything V2 metric."""

from abc import ABC, abstractmethod
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from dv4d.models.base import DepthPrediction
from dv4d.models.tiny import RANDOM_INIT, build_seeded
from dv4d.models.weights import ResolvedWeights

MIN_FOV_DEG = 5.0
"""Smallest horizontal field of view accepted from Depth Pro's head; smaller values are clamped."""
MAX_FOV_DEG = 170.0
"""Largest horizontal field of view accepted from Depth Pro's head; larger values are clamped."""


def _check_frames(frames: np.ndarray) -> None:
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"frames must be uint8 (B, H, W, 3), got {frames.dtype} {frames.shape}")


def _resize(maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    return F.interpolate(maps[:, None].float(), size=size, mode="bilinear", align_corners=False)[:, 0]


class _HfDepthAdapter(ABC):
    """Common loading of a transformers depth model and its image processor."""

    model_name = ""

    def __init__(self, weights: ResolvedWeights | None) -> None:
        self.weights = weights
        self.weights_id = RANDOM_INIT if weights is None else weights.spec.weights_id
        self.model: Any = None
        self.processor: Any = None
        self.device = "cpu"
        self.dtype = torch.float32

    @abstractmethod
    def _tiny(self) -> tuple[Any, Any]:
        """Tiny random-initialised network of the same architecture, and its processor."""

    @abstractmethod
    def _pretrained(self, path: str) -> tuple[Any, Any]:
        """Pretrained network and processor from a local folder."""

    def load(self, device: str, dtype: torch.dtype) -> None:
        """Build (smoke) or load (offline, safetensors) the network and move it to ``device``."""
        if self.weights is None:
            model, processor = build_seeded(self._tiny)
        else:
            model, processor = self._pretrained(str(self.weights.path))
        self.model = model.to(device=device, dtype=dtype).eval()
        self.processor = processor
        self.device, self.dtype = device, dtype

    def _pixels(self, frames: np.ndarray) -> torch.Tensor:
        _check_frames(frames)
        if self.model is None:
            raise RuntimeError(f"{self.model_name}: call load() before predict()")
        inputs = self.processor(images=list(frames), return_tensors="pt")
        return inputs["pixel_values"].to(device=self.device, dtype=self.dtype)


class DepthProAdapter(_HfDepthAdapter):
    """Apple Depth Pro through ``transformers.DepthProForDepthEstimation`` (metric depth + FoV)."""

    model_name = "Depth Pro"

    def _tiny(self) -> tuple[Any, Any]:
        from transformers import DepthProConfig, DepthProForDepthEstimation, DepthProImageProcessor

        dino = {
            "model_type": "dinov2",
            "hidden_size": 32,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "mlp_ratio": 2,
            "patch_size": 16,
            "image_size": 64,
        }
        config = DepthProConfig(
            patch_size=64,
            fusion_hidden_size=16,
            intermediate_hook_ids=[1, 0],
            intermediate_feature_dims=[16, 16],
            scaled_images_ratios=[0.5, 1.0],
            scaled_images_overlap_ratios=[0.0, 0.25],
            scaled_images_feature_dims=[16, 16],
            merge_padding_value=1,
            use_fov_model=True,
            image_model_config=dict(dino),
            patch_model_config=dict(dino),
            fov_model_config=dict(dino),
        )
        processor = DepthProImageProcessor(size={"height": 128, "width": 128})
        return DepthProForDepthEstimation(config), processor

    def _pretrained(self, path: str) -> tuple[Any, Any]:
        from transformers import DepthProForDepthEstimation, DepthProImageProcessor

        model = DepthProForDepthEstimation.from_pretrained(
            path, local_files_only=True, use_safetensors=True, trust_remote_code=False
        )
        return model, DepthProImageProcessor.from_pretrained(path, local_files_only=True)

    @torch.inference_mode()
    def predict(self, frames: np.ndarray) -> DepthPrediction:
        """Depth and focal for ``frames`` (B, H, W, 3) uint8; focal from the horizontal FoV."""
        height, width = frames.shape[1:3]
        out = self.model(pixel_values=self._pixels(frames))
        fov_deg = out.field_of_view.float().clamp(MIN_FOV_DEG, MAX_FOV_DEG)
        focal = 0.5 * width / torch.tan(0.5 * torch.deg2rad(fov_deg))
        # Depth Pro predicts canonical inverse depth; metric inverse depth = canonical * W / f.
        inverse = out.predicted_depth.float() * (width / focal)[:, None, None]
        depth = 1.0 / _resize(inverse, (height, width)).clamp(1e-4, 1e4)
        return DepthPrediction(
            depth=depth.cpu().numpy().astype(np.float32),
            focal_px=focal.cpu().numpy().astype(np.float64),
            metric=self.weights is not None,
        )


class DepthAnythingMetricAdapter(_HfDepthAdapter):
    """Depth Anything V2 metric through ``transformers.DepthAnythingForDepthEstimation`` (no FoV)."""

    model_name = "Depth Anything V2 metric"

    def _tiny(self) -> tuple[Any, Any]:
        from transformers import DepthAnythingConfig, DepthAnythingForDepthEstimation, DPTImageProcessor

        backbone = {
            "model_type": "dinov2",
            "hidden_size": 32,
            "num_hidden_layers": 4,
            "num_attention_heads": 2,
            "mlp_ratio": 2,
            "patch_size": 14,
            "image_size": 56,
            "out_indices": [1, 2, 3, 4],
            "apply_layernorm": True,
            "reshape_hidden_states": False,
        }
        config = DepthAnythingConfig(
            backbone_config=backbone,
            neck_hidden_sizes=[8, 16, 32, 32],
            fusion_hidden_size=16,
            head_hidden_size=8,
            reassemble_hidden_size=32,
            patch_size=14,
            depth_estimation_type="metric",
            max_depth=80,
        )
        processor = DPTImageProcessor(
            size={"height": 56, "width": 56},
            keep_aspect_ratio=True,
            ensure_multiple_of=14,
            do_pad=False,
        )
        return DepthAnythingForDepthEstimation(config), processor

    def _pretrained(self, path: str) -> tuple[Any, Any]:
        from transformers import AutoImageProcessor, DepthAnythingForDepthEstimation

        model = DepthAnythingForDepthEstimation.from_pretrained(
            path, local_files_only=True, use_safetensors=True, trust_remote_code=False
        )
        return model, AutoImageProcessor.from_pretrained(path, local_files_only=True)

    @torch.inference_mode()
    def predict(self, frames: np.ndarray) -> DepthPrediction:
        """Metric z-depth for ``frames`` (B, H, W, 3) uint8; this model gives no focal length."""
        height, width = frames.shape[1:3]
        out = self.model(pixel_values=self._pixels(frames))
        depth = _resize(out.predicted_depth.float(), (height, width)).clamp_min(0.0)
        return DepthPrediction(
            depth=depth.cpu().numpy().astype(np.float32), focal_px=None, metric=self.weights is not None
        )
