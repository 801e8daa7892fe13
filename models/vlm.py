"""Vision-language model adapter: Qwen2.5-VL through ``transformers``."""

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from dv4d.models.generator import Decoding, Request
from dv4d.models.hf_adapter import HfAdapter, load_pretrained
from dv4d.models.names_grammar import ALPHABET, DONE, NamesGrammar
from dv4d.models.text_tokenizer import byte_tokenizer
from dv4d.models.tiny import TINY_LAYERS
from dv4d.models.weights import ResolvedWeights

MAX_IMAGE_PIXELS = 448 * 448
"""Each image is resized by the processor to at most this many pixels (bounds visual tokens)."""

_SPECIALS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
]
_TINY_CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for part in message['content'] %}{% if part['type'] == 'image' %}"
    "<|vision_start|><|image_pad|><|vision_end|>{% else %}{{ part['text'] }}{% endif %}{% endfor %}"
    "{% endif %}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def _random_qwen(text: dict[str, Any], vision: dict[str, Any], max_pixels: int) -> tuple[Any, Any]:
    """Qwen2.5-VL with the given tower sizes (``text`` may set a ``vocab_size`` larger than the
    tokenizer's), random weights, and a byte-level tokenizer built offline."""
    from transformers import (
        Qwen2_5_VLConfig,
        Qwen2_5_VLForConditionalGeneration,
        Qwen2_5_VLProcessor,
        Qwen2VLImageProcessor,
        Qwen2VLVideoProcessor,
    )

    tokenizer = byte_tokenizer(_SPECIALS, eos="<|im_end|>", pad="<|endoftext|>")
    ids = dict(zip(_SPECIALS, tokenizer.convert_tokens_to_ids(_SPECIALS), strict=True))
    special_ids = {
        "bos_token_id": ids["<|endoftext|>"],
        "eos_token_id": ids["<|im_end|>"],
        "pad_token_id": ids["<|endoftext|>"],
    }
    config = Qwen2_5_VLConfig(
        text_config={"vocab_size": len(tokenizer), **text, "tie_word_embeddings": True, **special_ids},
        vision_config={"patch_size": 14, "spatial_merge_size": 2, "temporal_patch_size": 2, **vision},
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        **special_ids,
    )
    processor = Qwen2_5_VLProcessor(
        image_processor=Qwen2VLImageProcessor(min_pixels=28 * 28, max_pixels=max_pixels),
        tokenizer=tokenizer,
        video_processor=Qwen2VLVideoProcessor(),
        chat_template=_TINY_CHAT_TEMPLATE,
    )
    model = Qwen2_5_VLForConditionalGeneration(config)
    model.generation_config.pad_token_id = special_ids["pad_token_id"]
    model.generation_config.eos_token_id = special_ids["eos_token_id"]
    return model, processor


def _tiny_qwen() -> tuple[Any, Any]:
    """Qwen2.5-VL with the real architecture at toy size."""
    text = {
        **TINY_LAYERS,
        "num_key_value_heads": 1,
        "max_position_embeddings": 4096,
        "rope_scaling": {"type": "mrope", "rope_type": "default", "mrope_section": [2, 3, 3]},
    }
    vision = {"depth": 2, "hidden_size": 32, "intermediate_size": 64, "num_heads": 2, "out_hidden_size": 32,
              "window_size": 56, "fullatt_block_indexes": [1]}  # fmt: skip
    return _random_qwen(text, vision, 56 * 56)


def _full_qwen() -> tuple[Any, Any]:
    """Qwen2.5-VL-3B-Instruct's architecture (3.75 B parameters) with random weights."""
    text = {
        "vocab_size": 151936,
        "hidden_size": 2048,
        "intermediate_size": 11008,
        "num_hidden_layers": 36,
        "num_attention_heads": 16,
        "num_key_value_heads": 2,
        "max_position_embeddings": 128000,
        "rms_norm_eps": 1e-6,
        "rope_scaling": {"type": "mrope", "rope_type": "default", "mrope_section": [16, 24, 24]},
    }
    vision = {"depth": 32, "hidden_size": 1280, "intermediate_size": 3420, "num_heads": 16,
              "out_hidden_size": 2048, "window_size": 112,
              "fullatt_block_indexes": [7, 15, 23, 31]}  # fmt: skip
    return _random_qwen(text, vision, MAX_IMAGE_PIXELS)


class QwenVlAdapter(HfAdapter):
    """Qwen2.5-VL (Alibaba) answering prompts about images; implements ``TextGenerator``."""

    model_name = "Qwen2.5-VL"

    def __init__(self, weights: ResolvedWeights | None, full_size: bool = False) -> None:
        super().__init__(weights, full_size)
        self._token_text: list[tuple[int, str]] | None = None

    def _tiny(self) -> tuple[Any, Any]:
        return _tiny_qwen()

    def _full(self) -> tuple[Any, Any]:
        return _full_qwen()

    def _pretrained(self, path: Path, dtype: torch.dtype) -> tuple[Any, Any]:
        from transformers import AutoProcessor, Qwen2_5_VLForConditionalGeneration

        return load_pretrained(
            Qwen2_5_VLForConditionalGeneration,
            AutoProcessor,
            path,
            dtype,
            min_pixels=28 * 28,
            max_pixels=MAX_IMAGE_PIXELS,
        )

    def _candidate_tokens(self) -> list[tuple[int, str]]:
        """(id, text) of every token made only of characters the names grammar can use."""
        if self._token_text is None:
            tokenizer = self.processor.tokenizer
            texts = tokenizer.batch_decode([[i] for i in range(len(tokenizer))])
            self._token_text = [(i, t) for i, t in enumerate(texts) if t and set(t) <= ALPHABET]
        return self._token_text

    def _grammar_fn(self, grammar: NamesGrammar, prompt_len: int) -> Callable[[int, torch.Tensor], list[int]]:
        """``prefix_allowed_tokens_fn`` for ``generate``: only tokens that keep the answer in ``grammar``."""
        candidates = self._candidate_tokens()
        eos_ids = self.model.generation_config.eos_token_id
        eos = [int(eos_ids)] if isinstance(eos_ids, int) else [int(i) for i in eos_ids]
        token_text = dict(candidates)

        def allowed(_batch: int, input_ids: torch.Tensor) -> list[int]:
            text = "".join(token_text.get(int(i), "") for i in input_ids[prompt_len:])
            state = grammar.run(text)
            if state is None or state == DONE:
                return eos
            ok = [i for i, piece in candidates if grammar.run(piece, state) is not None]
            return ok or eos

        return allowed

    def generate(self, images: list[np.ndarray], prompt: str, decoding: Decoding) -> str:
        """Answer ``prompt`` about ``images``; see ``TextGenerator.generate``."""
        return self.generate_batch([(images, prompt)], decoding)[0]

    @torch.inference_mode()
    def generate_batch(self, requests: list[Request], decoding: Decoding) -> list[str]:
        """Answer each (images, prompt) of ``requests`` in one batched ``generate``; see ``TextGenerator``."""
        self._require_loaded("generate")
        if not requests:
            return []
        texts, pil = [], []
        for images, prompt in requests:
            content: list[dict[str, str]] = [{"type": "image"} for _ in images]
            content.append({"type": "text", "text": prompt})
            texts.append(
                self.processor.apply_chat_template(
                    [{"role": "user", "content": content}], add_generation_prompt=True, tokenize=False
                )
            )
            pil += [Image.fromarray(image) for image in images]
        # Decoder-only batches pad on the left so every answer starts right after its prompt.
        self.processor.tokenizer.padding_side = "left"
        inputs = self.processor(text=texts, images=pil or None, return_tensors="pt", padding=True)
        inputs = inputs.to(self.device)
        if "pixel_values" in inputs:
            inputs["pixel_values"] = inputs["pixel_values"].to(self.dtype)
        prompt_len = inputs["input_ids"].shape[1]
        attempt = decoding.attempt
        options: dict[str, Any] = {"max_new_tokens": decoding.max_new_tokens, "do_sample": attempt > 0}
        if attempt > 0:
            options.update(temperature=0.7, top_p=0.9)
        if decoding.grammar is not None:
            options["prefix_allowed_tokens_fn"] = self._grammar_fn(decoding.grammar, prompt_len)
        vocab = self.model.get_output_embeddings().weight.shape[0]
        if vocab > len(self.processor.tokenizer):
            # Rows past the tokenizer (padding of the embedding matrix) decode to nothing: never pick them.
            options["suppress_tokens"] = list(range(len(self.processor.tokenizer), vocab))
        devices = [torch.device(self.device)] if self.device.startswith("cuda") else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(attempt)
            out = self.model.generate(**inputs, **options)
        answers = self.processor.tokenizer.batch_decode(out[:, prompt_len:], skip_special_tokens=True)
        return [str(text) for text in answers]
