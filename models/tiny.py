"""Shared helpers for the smoke preset's tiny random-initialised networks."""

from collections.abc import Callable
from typing import TypeVar

import torch

RANDOM_INIT = "random-init"
"""Weights id recorded for networks built from a tiny config with random weights."""

SEED = 0
"""Seed of every tiny network, so smoke outputs are reproducible."""

T = TypeVar("T")


def build_seeded(build: Callable[[], T]) -> T:
    """Run ``build`` under a fixed seed without disturbing the caller's global RNG state."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(SEED)
        return build()
