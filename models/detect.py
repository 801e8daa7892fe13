"""Open-vocabulary detector adapter: OWLv2 through ``transformers.Owlv2ForObjectDetection``."""

from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from dv4d.models.base import Detections, FrameDetections
from dv4d.models.hf_adapter import HfAdapter, check_frames, load_pretrained
from dv4d.models.text_tokenizer import byte_tokenizer
from dv4d.models.tiny import TINY_LAYERS
from dv4d.models.weights import ResolvedWeights


class Owlv2Adapter(HfAdapter):
    """OWLv2 (Google): text queries -> boxes, per frame."""

    model_name = "OWLv2"

    def __init__(
        self,
        weights: ResolvedWeights | None,
        full_size: bool = False,
        threshold: float = 0.2,
        max_per_frame: int = 20,
    ) -> None:
        super().__init__(weights, full_size)
        self.threshold = threshold
        """Minimum detection score kept."""
        self.max_per_frame = max_per_frame
        """At most this many boxes per frame, highest scores first."""

    def _random(
        self, text: dict[str, Any], vision: dict[str, Any], projection: int, side: int
    ) -> tuple[Any, Any]:
        """OWLv2 with the given tower sizes (``text`` may set a ``vocab_size`` larger than the tokenizer's),
        random weights, and a byte-level tokenizer built offline."""
        from transformers import Owlv2Config, Owlv2ForObjectDetection, Owlv2ImageProcessor, Owlv2Processor

        # CLIP-style text pooling takes the token with the highest id as end-of-text: eos goes last.
        tokenizer = byte_tokenizer(
            ["<|startoftext|>", "<|endoftext|>"],
            eos="<|endoftext|>",
            pad="!",
            wrap=("<|startoftext|>", "<|endoftext|>"),
        )
        config = Owlv2Config(
            text_config={
                "vocab_size": len(tokenizer),
                **text,
                "max_position_embeddings": 16,
                "eos_token_id": tokenizer.eos_token_id,
                "bos_token_id": tokenizer.convert_tokens_to_ids("<|startoftext|>"),
                "pad_token_id": tokenizer.pad_token_id,
            },
            vision_config={**vision, "image_size": side, "patch_size": 16},
            projection_dim=projection,
            initializer_factor=0.02,
        )
        image_processor = Owlv2ImageProcessor(size={"height": side, "width": side})
        processor = Owlv2Processor(image_processor=image_processor, tokenizer=tokenizer)
        return Owlv2ForObjectDetection(config), processor

    def _tiny(self) -> tuple[Any, Any]:
        return self._random(dict(TINY_LAYERS), dict(TINY_LAYERS), 32, 64)

    def _full(self) -> tuple[Any, Any]:
        # owlv2-base-patch16: CLIP B/16 towers (text 512 x 12, vision 768 x 12) at 960 px.
        text = {
            "hidden_size": 512,
            "intermediate_size": 2048,
            "num_hidden_layers": 12,
            "num_attention_heads": 8,
        }
        vision = {
            "hidden_size": 768,
            "intermediate_size": 3072,
            "num_hidden_layers": 12,
            "num_attention_heads": 12,
        }
        return self._random({**text, "vocab_size": 49408}, vision, 512, 960)

    def _pretrained(self, path: Path, dtype: torch.dtype) -> tuple[Any, Any]:
        from transformers import Owlv2ForObjectDetection, Owlv2Processor

        return load_pretrained(Owlv2ForObjectDetection, Owlv2Processor, path, dtype)

    def _squares(self, frames: np.ndarray) -> list[np.ndarray]:
        """Frames padded to a square with black at the bottom/right (what OWLv2's processor does) and,
        when bigger than the network input, shrunk to it by area averaging: the processor's own
        anti-aliased downscaling is a wide Gaussian blur that costs more than a small network."""
        side = max(frames.shape[1:3])
        size = self.processor.image_processor.size
        target = int(size["height"])
        squares = []
        for frame in frames:
            square = np.zeros((side, side, 3), np.uint8)
            square[: frame.shape[0], : frame.shape[1]] = frame
            if side > target:
                square = cv2.resize(square, (target, int(size["width"])), interpolation=cv2.INTER_AREA)
            squares.append(square)
        return squares

    @torch.inference_mode()
    def predict(self, frames: np.ndarray, names: list[str]) -> Detections:
        """Boxes of ``names`` in each of ``frames`` (B, H, W, 3) uint8; empty when ``names`` is."""
        check_frames(frames)
        self._require_loaded("predict")
        if not names:
            empty = FrameDetections(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), [])
            return Detections([empty for _ in frames])
        height, width = frames.shape[1:3]
        queries = [list(names) for _ in frames]
        # The text tower has 16 positions: longer queries are cut (the VLM may name things verbosely).
        inputs = self.processor(
            text=queries,
            images=self._squares(frames),
            return_tensors="pt",
            padding=True,
            truncation=True,
            max_length=self.model.config.text_config.max_position_embeddings,
        )
        inputs = {k: v.to(self.device) for k, v in inputs.items()}
        inputs["pixel_values"] = inputs["pixel_values"].to(self.dtype)
        outputs = self.model(**inputs)
        # OWLv2 pads images to a square at the bottom/right: boxes are relative to that square.
        side = max(height, width)
        results = self.processor.post_process_grounded_object_detection(
            outputs, threshold=self.threshold, target_sizes=[(side, side)] * len(frames), text_labels=queries
        )
        per_frame = []
        for result in results:
            scores = result["scores"].float().cpu().numpy()
            order = np.argsort(-scores, kind="stable")[: self.max_per_frame]
            boxes = result["boxes"].float().cpu().numpy()[order]
            boxes[:, [0, 2]] = boxes[:, [0, 2]].clip(0, width - 1)
            boxes[:, [1, 3]] = boxes[:, [1, 3]].clip(0, height - 1)
            labels = result["labels"].cpu().numpy()[order]
            # Boxes squashed to nothing by clipping (outside the unpadded image) are dropped.
            keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
            per_frame.append(
                FrameDetections(
                    boxes[keep].astype(np.float32),
                    scores[order][keep].astype(np.float32),
                    [names[int(i)] for i in labels[keep]],
                )
            )
        return Detections(per_frame)
