"""Shared helpers for the smoke preset's tiny random-initialised networks."""

from collections.abc import Callable
from typing import TypeVar

import torch

RANDOM_INIT = "random-init"
"""Weights id recorded for networks built from a tiny config with random weights."""

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
