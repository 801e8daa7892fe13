"""Box-prompted segmentation adapter: SAM through the ``segment-anything`` package."""

from functools import partial
from typing import Any

import numpy as np
import torch

from dv4d.models.base import Masks
from dv4d.models.tiny import RANDOM_INIT, RANDOM_INIT_FULL_SIZE, build_full_size, build_seeded
from dv4d.models.weights import ResolvedWeights

SAM_VARIANT = "vit_b"
"""``segment_anything.sam_model_registry`` key of the pretrained checkpoint (ViT-B, 91M parameters)."""


def _tiny_sam() -> Any:
    """SAM with the real module layout (ViT encoder, prompt encoder, two-way decoder), tiny sizes."""
    from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

    image_size, patch, dim = 64, 16, 32
    return Sam(
        image_encoder=ImageEncoderViT(
            depth=2,
            embed_dim=dim,
            img_size=image_size,
            mlp_ratio=2,
            norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
            num_heads=2,
            patch_size=patch,
            qkv_bias=True,
            use_rel_pos=True,
            global_attn_indexes=(1,),
            window_size=2,
            out_chans=dim,
        ),
        prompt_encoder=PromptEncoder(
            embed_dim=dim,
            image_embedding_size=(image_size // patch, image_size // patch),
            input_image_size=(image_size, image_size),
            mask_in_chans=8,
        ),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=3,
            transformer=TwoWayTransformer(depth=2, embedding_dim=dim, mlp_dim=64, num_heads=2),
            transformer_dim=dim,
            iou_head_depth=3,
            iou_head_hidden_dim=dim,
        ),
    )


class SamAdapter:
    """Segment Anything (Meta): one mask per box prompt."""

    model_name = "SAM ViT-B"

    def __init__(self, weights: ResolvedWeights | None, full_size: bool = False) -> None:
        self.weights = weights
        self.full_size = full_size
        """Without ``weights``: random-init ViT-B at full size instead of the tiny network."""
        random_id = RANDOM_INIT_FULL_SIZE if full_size else RANDOM_INIT
        self.weights_id = random_id if weights is None else weights.spec.weights_id
        self.predictor: Any = None
        self.device = "cpu"
        self.dtype = torch.float32

    def load(self, device: str, dtype: torch.dtype) -> None:
        """Build (smoke) or load SAM; the checkpoint is read with ``torch.load(weights_only=True)``.

        The network stays float32; on CUDA a lower ``dtype`` runs it under autocast.
        """
        from segment_anything import SamPredictor, sam_model_registry

        if self.weights is None and self.full_size:
            sam = build_full_size(
                partial(sam_model_registry[SAM_VARIANT], checkpoint=None), device, torch.float32
            )
        elif self.weights is None:
            sam = build_seeded(_tiny_sam)
        else:
            sam = sam_model_registry[SAM_VARIANT](checkpoint=None)
            (checkpoint,) = sorted(self.weights.path.glob("**/sam_vit_b_*.pth"))
            sam.load_state_dict(torch.load(checkpoint, map_location="cpu", weights_only=True))
        self.predictor = SamPredictor(sam.to(device).eval())
        self.device, self.dtype = device, dtype

    @torch.inference_mode()
    def predict(self, frame: np.ndarray, boxes: np.ndarray) -> Masks:
        """Masks for ``boxes`` (N, 4) xyxy pixels in ``frame`` (H, W, 3) uint8."""
        if frame.ndim != 3 or frame.shape[-1] != 3 or frame.dtype != np.uint8:
            raise ValueError(f"frame must be uint8 (H, W, 3), got {frame.dtype} {frame.shape}")
        boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
        height, width = frame.shape[:2]
        if len(boxes) == 0:
            return Masks(np.zeros((0, height, width), bool), np.zeros(0, np.float32))
        if self.predictor is None:
            raise RuntimeError("SAM: call load() before predict()")
        autocast = self.device.startswith("cuda") and self.dtype != torch.float32
        with torch.autocast("cuda", dtype=self.dtype, enabled=autocast):
            self.predictor.set_image(frame)
            prompts = self.predictor.transform.apply_boxes_torch(
                torch.as_tensor(boxes, device=self.device), (height, width)
            )
            masks, scores, _ = self.predictor.predict_torch(
                point_coords=None, point_labels=None, boxes=prompts, multimask_output=False
            )
        return Masks(masks[:, 0].cpu().numpy().astype(bool), scores[:, 0].float().cpu().numpy())
