"""Metric depth adapters: Depth Pro (depth + field of view) and Depth Anything V2 metric."""

from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from dv4d.models.base import DepthPrediction
from dv4d.models.hf_adapter import HfAdapter, check_frames, load_pretrained

MIN_FOV_DEG = 5.0
"""Smallest horizontal field of view accepted from Depth Pro's head; smaller values are clamped."""
MAX_FOV_DEG = 170.0
"""Largest horizontal field of view accepted from Depth Pro's head; larger values are clamped."""

_TINY_DINO = {"model_type": "dinov2", "hidden_size": 32, "num_attention_heads": 2, "mlp_ratio": 2}
"""DINOv2 backbone settings shared by both tiny depth networks."""


def _resize(maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    return F.interpolate(maps[:, None].float(), size=size, mode="bilinear", align_corners=False)[:, 0]


class _HfDepthAdapter(HfAdapter):
    """Depth networks: processor pixels of a frame batch, and the forward pass."""

    def _forward(self, frames: np.ndarray) -> Any:
        """Network output for ``frames`` (B, H, W, 3) uint8."""
        check_frames(frames)
        self._require_loaded("predict")
        inputs = self.processor(images=list(frames), return_tensors="pt")
        return self.model(pixel_values=inputs["pixel_values"].to(device=self.device, dtype=self.dtype))


class DepthProAdapter(_HfDepthAdapter):
    """Apple Depth Pro through ``transformers.DepthProForDepthEstimation`` (metric depth + FoV)."""

    model_name = "Depth Pro"

    def _tiny(self) -> tuple[Any, Any]:
        from transformers import DepthProConfig, DepthProForDepthEstimation, DepthProImageProcessor

        dino = {
            **_TINY_DINO,
            "num_hidden_layers": 2,
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

    def _full(self) -> tuple[Any, Any]:
        from transformers import DepthProConfig, DepthProForDepthEstimation, DepthProImageProcessor

        vit_large = {"model_type": "dinov2", "hidden_size": 1024, "num_hidden_layers": 24,
                     "num_attention_heads": 16, "patch_size": 16, "image_size": 384}  # fmt: skip
        config = DepthProConfig(
            use_fov_model=True,
            image_model_config=dict(vit_large),
            patch_model_config=dict(vit_large),
            fov_model_config=dict(vit_large),
        )
        return DepthProForDepthEstimation(config), DepthProImageProcessor()

    def _pretrained(self, path: Path, dtype: torch.dtype) -> tuple[Any, Any]:
        from transformers import DepthProForDepthEstimation, DepthProImageProcessor

        return load_pretrained(DepthProForDepthEstimation, DepthProImageProcessor, path, dtype)

    @torch.inference_mode()
    def predict(self, frames: np.ndarray) -> DepthPrediction:
        """Depth and focal for ``frames`` (B, H, W, 3) uint8; focal from the horizontal FoV."""
        height, width = frames.shape[1:3]
        out = self._forward(frames)
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
            **_TINY_DINO,
            "num_hidden_layers": 4,
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

    def _full(self) -> tuple[Any, Any]:
        from transformers import DepthAnythingConfig, DepthAnythingForDepthEstimation, DPTImageProcessor

        vit_small = {"model_type": "dinov2", "hidden_size": 384, "num_hidden_layers": 12,
                     "num_attention_heads": 6, "patch_size": 14, "image_size": 518,
                     "out_indices": [3, 6, 9, 12], "apply_layernorm": True,
                     "reshape_hidden_states": False}  # fmt: skip
        config = DepthAnythingConfig(
            backbone_config=vit_small,
            neck_hidden_sizes=[48, 96, 192, 384],
            fusion_hidden_size=64,
            head_hidden_size=32,
            reassemble_hidden_size=384,
            patch_size=14,
            depth_estimation_type="metric",
            max_depth=80,
        )
        processor = DPTImageProcessor(
            size={"height": 518, "width": 518},
            keep_aspect_ratio=True,
            ensure_multiple_of=14,
            do_pad=False,
            resample=3,
            image_mean=[0.485, 0.456, 0.406],
            image_std=[0.229, 0.224, 0.225],
        )
        return DepthAnythingForDepthEstimation(config), processor

    def _pretrained(self, path: Path, dtype: torch.dtype) -> tuple[Any, Any]:
        from transformers import AutoImageProcessor, DepthAnythingForDepthEstimation

        return load_pretrained(DepthAnythingForDepthEstimation, AutoImageProcessor, path, dtype)

    @torch.inference_mode()
    def predict(self, frames: np.ndarray) -> DepthPrediction:
        """Metric z-depth for ``frames`` (B, H, W, 3) uint8; this model gives no focal length."""
        height, width = frames.shape[1:3]
        out = self._forward(frames)
        depth = _resize(out.predicted_depth.float(), (height, width)).clamp_min(0.0)
        return DepthPrediction(
            depth=depth.cpu().numpy().astype(np.float32), focal_px=None, metric=self.weights is not None
        )
