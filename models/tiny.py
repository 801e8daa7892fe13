"""Shared helpers for random-initialised networks: the smoke preset's tiny ones, and full-size ones for
benchmarks on machines without the checkpoints."""

from collections.abc import Callable
from typing import TypeVar

import torch

RANDOM_INIT = "random-init"
"""Weights id recorded for networks built from a tiny config with random weights."""
RANDOM_INIT_FULL_SIZE = "random-init-full-size"
"""Weights id of a network with the pretrained checkpoint's architecture and size but random weights
(``dv4d bench models`` without the checkpoint: real cost, meaningless outputs)."""

SEED = 0
"""Seed of every tiny network, so smoke outputs are reproducible."""

TINY_LAYERS = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2}
"""Width, depth and heads of the tiny text/vision transformers (``transformers`` config keys)."""

T = TypeVar("T")


def build_seeded(build: Callable[[], T]) -> T:
    """Run ``build`` under a fixed seed without disturbing the caller's global RNG state."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(SEED)
        return build()


def build_full_size(build: Callable[[], T], device: str, dtype: torch.dtype) -> T:
    """``build_seeded`` with parameters created directly on ``device`` in ``dtype`` (a full-size network
    never exists in float32 on the host first)."""
    before = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            return build_seeded(build)
    finally:
        torch.set_default_dtype(before)
