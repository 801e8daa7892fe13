"""What the pipeline asks the VLM, with validation and retries around every answer."""

import re
from collections import Counter
from collections.abc import Callable
from typing import TypeVar

import numpy as np

from dv4d.models.base import DynamicObjectNames, Rephrasing
from dv4d.models.errors import VlmOutputError
from dv4d.models.generator import Decoding, Request, TextGenerator
from dv4d.models.names_grammar import NamesGrammar, parse_dynamic_names

MAX_ATTEMPTS = 3
"""Generations tried before giving up on an answer that keeps failing validation."""
CAPTION_TOKENS = 48
"""Most new tokens of one object caption."""

DYNAMIC_PROMPT = (
    "These are frames from one video. List every object that moves or could move on its own "
    "(people, animals, vehicles, ...), each as a short lower-case noun phrase with at most one "
    'adjective, e.g. "red car". Answer only with JSON: {"dynamic": ["...", "..."]}. '
    'Answer {"dynamic": []} when nothing moves.'
)
OBJECT_PROMPT = (
    "Describe the highlighted object (the rest of the image is dimmed) in one short sentence: "
    "what it is, its colour and what it is doing."
)
SCENE_PROMPT = "These are frames from one video. Describe the scene and what happens in it in two sentences."
REPHRASE_PROMPT = (
    "Rewrite this description of a camera motion as one fluent sentence. Keep every number, unit "
    "and direction exactly as given and add no new facts:\n{text}"
)

_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")
_DIRECTIONS = (
    "left",
    "right",
    "up",
    "down",
    "forward",
    "backward",
    "clockwise",
    "counterclockwise",
    "static",
)

T = TypeVar("T")


def _with_retries(
    generator: TextGenerator,
    images: list[np.ndarray],
    prompt: str,
    max_new_tokens: int,
    check: Callable[[str], T],
    grammar: NamesGrammar | None = None,
) -> tuple[T, int]:
    problems = []
    for attempt in range(MAX_ATTEMPTS):
        answer = generator.generate(images, prompt, Decoding(max_new_tokens, attempt, grammar))
        try:
            return check(answer), attempt + 1
        except ValueError as exc:
            problems.append(f"attempt {attempt + 1}: {exc} (answer {answer[:80]!r})")
    raise VlmOutputError("the VLM gave no valid answer:\n  " + "\n  ".join(problems))


def _clean_text(answer: str) -> str:
    text = " ".join("".join(ch for ch in answer if ch.isprintable() or ch.isspace()).split())
    if not any(ch.isalnum() for ch in text):
        raise ValueError("empty answer")
    return text


def names_token_budget(grammar: NamesGrammar) -> int:
    """New tokens allowed for a names answer: the longest answer ``grammar`` accepts, one character per
    token, plus slack."""
    return grammar.max_names * (grammar.max_name_chars + 4) + 16


def dynamic_object_names(
    generator: TextGenerator, keyframes: list[np.ndarray], grammar: NamesGrammar
) -> DynamicObjectNames:
    """Names of the moving objects in ``keyframes``; raises ``VlmOutputError`` after the retries."""
    names, attempts = _with_retries(
        generator,
        keyframes,
        DYNAMIC_PROMPT,
        max_new_tokens=names_token_budget(grammar),
        check=lambda answer: parse_dynamic_names(answer, grammar),
        grammar=grammar,
    )
    return DynamicObjectNames(names, attempts)


def highlight(crop: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """``crop`` (H, W, 3) uint8 with pixels outside ``mask`` (H, W) bool dimmed to 30 %."""
    if crop.shape[:2] != mask.shape or crop.dtype != np.uint8 or mask.dtype != bool:
        raise ValueError(f"crop (H, W, 3) uint8 and mask (H, W) bool expected, got {crop.shape} {mask.shape}")
    out = crop.astype(np.float32)
    out[~mask] *= 0.3
    return out.astype(np.uint8)


def object_captions(generator: TextGenerator, objects: list[tuple[np.ndarray, np.ndarray]]) -> list[str]:
    """One sentence per (crop, mask) of ``objects``, in order, from batched generations.

    Every object is asked in one batch; only the answers that fail validation are asked again (up to
    ``MAX_ATTEMPTS`` generations each). Raises ``VlmOutputError`` naming the objects that never passed.
    """
    requests: list[Request] = [([highlight(crop, mask)], OBJECT_PROMPT) for crop, mask in objects]
    answers: list[str | None] = [None] * len(requests)
    problems: dict[int, list[str]] = {}
    pending = list(range(len(requests)))
    for attempt in range(MAX_ATTEMPTS):
        if not pending:
            break
        texts = generator.generate_batch([requests[i] for i in pending], Decoding(CAPTION_TOKENS, attempt))
        still = []
        for i, text in zip(pending, texts, strict=True):
            try:
                answers[i] = _clean_text(text)
            except ValueError as exc:
                problems.setdefault(i, []).append(f"attempt {attempt + 1}: {exc} (answer {text[:80]!r})")
                still.append(i)
        pending = still
    if pending:
        details = "\n  ".join(f"object {i}: {'; '.join(problems[i])}" for i in pending)
        raise VlmOutputError(f"the VLM gave no valid caption for {len(pending)} object(s):\n  {details}")
    return [a for a in answers if a is not None]


def scene_caption(generator: TextGenerator, keyframes: list[np.ndarray]) -> str:
    """Two sentences about the whole video from a few keyframes."""
    text, _ = _with_retries(generator, keyframes, SCENE_PROMPT, 96, _clean_text)
    return text


def contradiction(original: str, rephrased: str) -> str:
    """Why ``rephrased`` contradicts ``original`` (numbers or directions differ), or ``""``."""
    numbers = Counter(_NUMBER.findall(original))
    new_numbers = Counter(_NUMBER.findall(rephrased))
    if numbers != new_numbers:
        lost = sorted((numbers - new_numbers).elements())
        added = sorted((new_numbers - numbers).elements())
        return f"numbers changed (missing {lost}, added {added})"
    words = set(re.findall(r"[a-z]+", original.lower()))
    new_words = set(re.findall(r"[a-z]+", rephrased.lower()))
    changed = sorted((words ^ new_words) & set(_DIRECTIONS))
    return f"directions changed ({', '.join(changed)})" if changed else ""


def rephrase_camera(generator: TextGenerator, text: str) -> Rephrasing:
    """Let the VLM rephrase a trajectory caption; keep the original when it contradicts it."""
    answer = _clean_text_or_empty(
        generator.generate([], REPHRASE_PROMPT.format(text=text), Decoding(max_new_tokens=96, attempt=0))
    )
    if not answer:
        return Rephrasing(text, False, "empty answer")
    reason = contradiction(text, answer)
    return Rephrasing(text, False, reason) if reason else Rephrasing(answer, True, "")


def _clean_text_or_empty(answer: str) -> str:
    try:
        return _clean_text(answer)
    except ValueError:
        return ""
