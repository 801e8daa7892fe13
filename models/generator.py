"""The text-generation interface the VLM helpers use (a real VLM adapter or a fake in tests)."""

from dataclasses import dataclass
from typing import Protocol

import numpy as np

from dv4d.models.names_grammar import NamesGrammar


@dataclass(frozen=True)
class Decoding:
    """How one answer is decoded."""

    max_new_tokens: int
    """At most this many generated tokens."""
    attempt: int
    """0 decodes greedily; later attempts sample with seed ``attempt`` so a retry can differ."""
    grammar: NamesGrammar | None = None
    """When given, decoding is constrained to the grammar's JSON form."""


Request = tuple[list[np.ndarray], str]
"""One question for the VLM: its images (each (H, W, 3) uint8, possibly none) and its prompt."""


class TextGenerator(Protocol):
    """Something that answers a prompt about zero or more RGB images."""

    def generate(self, images: list[np.ndarray], prompt: str, decoding: Decoding) -> str:
        """Answer ``prompt`` about ``images`` (each (H, W, 3) uint8), decoded as ``decoding`` says."""
        ...

    def generate_batch(self, requests: list[Request], decoding: Decoding) -> list[str]:
        """One answer per request, in order, decoded as ``decoding`` says (batched where possible)."""
        ...
