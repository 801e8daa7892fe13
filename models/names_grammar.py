"""The JSON answer format for dynamic-object names, as a character-level automaton.

The VLM is asked for ``{"dynamic": ["name", ...]}``. ``NamesGrammar`` accepts exactly the
compact form ``{"dynamic": ["a", "b"]}`` (json.dumps spacing) and is used two ways: to constrain
decoding token by token (only continuations that keep the text a valid prefix are allowed), and
to say when an answer is complete. ``parse_dynamic_names`` validates any answer, constrained or not.
"""

import json
import re
from dataclasses import dataclass

PREFIX = '{"dynamic": ['
"""Fixed start of every answer."""
NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789 -")
"""Characters allowed inside a name while decoding is constrained."""
ALPHABET = NAME_CHARS | frozenset(PREFIX) | frozenset('"], }')
"""Every character that can appear in an answer; tokens with other characters are never allowed."""

State = tuple[str, int, int]
"""Automaton state: (phase, names so far, characters in the current name)."""

START: State = ("prefix", 0, 0)
DONE: State = ("done", 0, 0)


@dataclass(frozen=True)
class NamesGrammar:
    """Limits of a constrained answer."""

    max_names: int = 8
    """Most names in one answer."""
    max_name_chars: int = 32
    """Most characters in one name."""
    min_names: int = 0
    """Fewest names in one answer (0 lets the model say nothing moves)."""

    def step(self, state: State, char: str) -> State | None:
        """The state after reading ``char``, or None when ``char`` cannot come next."""
        phase, count, length = state
        if phase == "prefix":
            if char != PREFIX[length]:
                return None
            return ("open", 0, 0) if length + 1 == len(PREFIX) else ("prefix", 0, length + 1)
        if phase == "open":
            if char == "]" and self.min_names == 0:
                return ("close", 0, 0)
            return ("name", 0, 0) if char == '"' else None
        if phase == "name":
            if char == '"' and length > 0:
                return ("after", count + 1, 0)
            starts_ok = length > 0 or char not in " -"
            if char in NAME_CHARS and starts_ok and length < self.max_name_chars:
                return ("name", count, length + 1)
            return None
        if phase == "after":
            if char == "," and count < self.max_names:
                return ("comma", count, 0)
            return ("close", 0, 0) if char == "]" and count >= self.min_names else None
        if phase == "comma":
            return ("space", count, 0) if char == " " else None
        if phase == "space":
            return ("name", count, 0) if char == '"' else None
        if phase == "close":
            return DONE if char == "}" else None
        return None

    def run(self, text: str, state: State = START) -> State | None:
        """Feed ``text`` from ``state``; None when it leaves the grammar."""
        current: State | None = state
        for char in text:
            if current is None:
                return None
            current = self.step(current, char)
        return current


def parse_dynamic_names(text: str, grammar: NamesGrammar) -> list[str]:
    """Validate a VLM answer and return its names (lower-case, stripped, unique, in order).

    Accepts a JSON object ``{"dynamic": [str, ...]}``, optionally wrapped in a Markdown code
    fence or surrounded by prose, within the name count and length limits of ``grammar``.
    Raises ``ValueError`` saying what is wrong otherwise.
    """
    fenced = re.search(r"```(?:json)?\s*(.*?)```", text, flags=re.DOTALL)
    body = fenced.group(1) if fenced else text
    start, end = body.find("{"), body.rfind("}")
    if start < 0 or end < start:
        raise ValueError("no JSON object in the answer")
    try:
        data = json.loads(body[start : end + 1])
    except json.JSONDecodeError as exc:
        raise ValueError(f"invalid JSON: {exc.msg}") from exc
    if not isinstance(data, dict) or not isinstance(data.get("dynamic"), list):
        raise ValueError('expected an object with a list under "dynamic"')
    names: list[str] = []
    for item in data["dynamic"]:
        if not isinstance(item, str):
            raise ValueError(f"names must be strings, got {type(item).__name__}")
        name = " ".join(item.lower().split())
        if not name or len(name) > grammar.max_name_chars or not name.isprintable():
            raise ValueError(f"bad name {item!r}")
        if name not in names:
            names.append(name)
    if not grammar.min_names <= len(names) <= grammar.max_names:
        raise ValueError(f"{len(names)} names, expected {grammar.min_names} to {grammar.max_names}")
    return names
