"""The text-generation interface the VLM helpers use (a real VLM adapter or a fake in tests)."""

from typing import Protocol

import numpy as np

from dv4d.models.names_grammar import NamesGrammar


class TextGenerator(Protocol):
    """Something that answers a prompt about zero or more RGB images."""

    def generate(
        self,
        images: list[np.ndarray],
        prompt: str,
        *,
        max_new_tokens: int,
        attempt: int,
        grammar: NamesGrammar | None = None,
    ) -> str:
        """Answer ``prompt`` about ``images`` (each (H, W, 3) uint8).

        ``attempt`` 0 decodes greedily; later attempts sample with seed ``attempt`` so a retry
        can give a different answer. ``grammar``, when given, constrains decoding to its JSON form.
        """
        ...
