"""VLM answer handling: JSON grammar, validation, retries, camera-caption rephrasing."""

import numpy as np
import pytest
import torch

from dv4d.models.errors import VlmOutputError
from dv4d.models.generator import Decoding, Request
from dv4d.models.names_grammar import DONE, START, NamesGrammar, parse_dynamic_names
from dv4d.models.vlm import QwenVlAdapter
from dv4d.models.vlm_tasks import contradiction, dynamic_object_names, object_captions, rephrase_camera


class FakeGenerator:
    """Returns canned answers in order and records the calls."""

    def __init__(self, answers: list[str]) -> None:
        self.answers = answers
        self.calls: list[tuple[int, int, str]] = []
        self.batches: list[int] = []

    def generate(self, images: list[np.ndarray], prompt: str, decoding: Decoding) -> str:
        self.calls.append((decoding.attempt, len(images), prompt))
        return self.answers[len(self.calls) - 1]

    def generate_batch(self, requests: list[Request], decoding: Decoding) -> list[str]:
        self.batches.append(len(requests))
        return [self.generate(images, prompt, decoding) for images, prompt in requests]


GRAMMAR = NamesGrammar(max_names=3, max_name_chars=12)


@pytest.mark.parametrize(
    "text", ['{"dynamic": []}', '{"dynamic": ["car"]}', '{"dynamic": ["red car", "dog"]}']
)
def test_grammar_accepts_compact_json(text: str) -> None:
    assert GRAMMAR.run(text) == DONE
    assert GRAMMAR.run(text[:-3]) not in (None, DONE)


@pytest.mark.parametrize(
    "text",
    [
        '{"dyn": []}',
        '{"dynamic": ["Car"]}',
        '{"dynamic": [""]}',
        '{"dynamic": [" car"]}',
        '{"dynamic": ["abcdefghijklm"]}',
        '{"dynamic": ["a", "b", "c", "d"]}',
        '{"dynamic": ["a",]}',
    ],
)
def test_grammar_rejects(text: str) -> None:
    assert GRAMMAR.run(text) is None


def test_grammar_min_names_forbids_empty_list() -> None:
    grammar = NamesGrammar(min_names=1)
    assert grammar.run('{"dynamic": []}') is None
    assert grammar.run('{"dynamic": ["x"]}') == DONE
    assert grammar.run("") == START


def test_parse_accepts_fences_and_prose_and_normalises() -> None:
    text = 'Sure!\n```json\n{"dynamic": ["Red  Car", "dog", "red car"]}\n```'
    assert parse_dynamic_names(text, GRAMMAR) == ["red car", "dog"]
    assert parse_dynamic_names('The answer is {"dynamic": []}.', GRAMMAR) == []


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("no json here", "no JSON"),
        ('{"dynamic": [1]}', "strings"),
        ('{"moving": []}', "dynamic"),
        ('{"dynamic": ["a", "b", "c", "d"]}', "4 names"),
        ('{"dynamic": ["a",}', "invalid JSON"),
    ],
)
def test_parse_rejects(text: str, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        parse_dynamic_names(text, GRAMMAR)


def test_dynamic_names_retries_until_valid() -> None:
    fake = FakeGenerator(["I see a car.", '{"dynamic": ["car"', '{"dynamic": ["car", "person"]}'])
    keyframes = [np.zeros((8, 8, 3), np.uint8)] * 2
    result = dynamic_object_names(fake, keyframes, GRAMMAR)
    assert result.names == ["car", "person"] and result.attempts == 3
    assert [attempt for attempt, _, _ in fake.calls] == [0, 1, 2]
    assert all(n_images == 2 for _, n_images, _ in fake.calls)


def test_dynamic_names_gives_up_with_clear_error() -> None:
    fake = FakeGenerator(["nope", "{", "[]"])
    with pytest.raises(VlmOutputError, match="attempt 3"):
        dynamic_object_names(fake, [np.zeros((8, 8, 3), np.uint8)], GRAMMAR)


ORIGINAL = "dolly forward 1.8 m at 0.6 m/s, pan left 35°"


@pytest.mark.parametrize(
    ("rephrased", "accepted"),
    [
        ("The camera dollies forward 1.8 m at 0.6 m/s while panning left by 35°.", True),
        ("The camera dollies forward 2 m at 0.6 m/s while panning left by 35°.", False),
        ("The camera dollies forward 1.8 m at 0.6 m/s while panning left.", False),
        ("The camera dollies forward 1.8 m at 0.6 m/s while panning right by 35°.", False),
        ("The camera moves backward 1.8 m at 0.6 m/s, panning left 35°.", False),
        ("   ", False),
    ],
)
def test_rephrase_never_contradicts(rephrased: str, accepted: bool) -> None:
    result = rephrase_camera(FakeGenerator([rephrased]), ORIGINAL)
    assert result.accepted is accepted
    assert result.text == (rephrased if accepted else ORIGINAL)
    assert bool(result.reason) is not accepted


def test_contradiction_names_the_numbers() -> None:
    assert "missing ['35']" in contradiction(ORIGINAL, "dolly forward 1.8 m at 0.6 m/s, pan left")


def test_tiny_qwen_constrained_answer_parses() -> None:
    """Grammar-constrained decoding makes even a random-init Qwen2.5-VL answer valid JSON."""
    vlm = QwenVlAdapter(None)
    vlm.load("cpu", torch.float32)
    grammar = NamesGrammar(max_names=2, max_name_chars=6, min_names=1)
    images = [np.random.default_rng(i).integers(0, 256, (40, 60, 3), dtype=np.uint8) for i in range(2)]
    answer = vlm.generate(
        images, "Which objects move?", Decoding(max_new_tokens=64, attempt=0, grammar=grammar)
    )
    assert grammar.run(answer) == DONE
    assert 1 <= len(parse_dynamic_names(answer, grammar)) <= 2
    free = vlm.generate([], "Say something.", Decoding(max_new_tokens=8, attempt=1))
    assert isinstance(free, str)


def test_object_captions_batch_and_retry_only_the_failures() -> None:
    crop, mask = np.full((4, 5, 3), 100, np.uint8), np.eye(4, 5, dtype=bool)
    fake = FakeGenerator(["A red car.", "   ", "!!", "A dog.", "?", "A person  walking."])
    texts = object_captions(fake, [(crop, mask)] * 3)
    assert texts == ["A red car.", "A dog.", "A person walking."]
    assert fake.batches == [3, 2, 1]  # all three, then the two bad answers, then the last bad one
    assert [attempt for attempt, _, _ in fake.calls] == [0, 0, 0, 1, 1, 2]
    assert all(images == 1 for _, images, _ in fake.calls)
    with pytest.raises(VlmOutputError, match="object 1: attempt 1: empty answer"):
        object_captions(FakeGenerator(["ok", "", "", ""]), [(crop, mask)] * 2)
    assert object_captions(FakeGenerator([]), []) == []


def test_tiny_qwen_batch_answers_like_one_by_one() -> None:
    """Left padding: each answer of a batch is the one the request gets alone (greedy decoding)."""
    vlm = QwenVlAdapter(None)
    vlm.load("cpu", torch.float32)
    rng = np.random.default_rng(1)
    small, wide = rng.integers(0, 256, (28, 28, 3), np.uint8), rng.integers(0, 256, (40, 90, 3), np.uint8)
    requests: list[Request] = [
        ([small], "What is it?"),
        ([wide, small], "Two images, a much longer question."),
        ([], "No image."),
    ]
    decoding = Decoding(max_new_tokens=12, attempt=0)
    batched = vlm.generate_batch(requests, decoding)
    assert batched == [vlm.generate(images, prompt, decoding) for images, prompt in requests]
    assert vlm.generate_batch([], decoding) == []


def test_qwen_never_generates_ids_past_its_tokenizer() -> None:
    """A checkpoint's embedding matrix may have more rows than its tokenizer has tokens (Qwen pads to
    151,936); those rows decode to nothing, so a sampled one would make an empty answer."""
    vlm = QwenVlAdapter(None)
    vlm.load("cpu", torch.float32)
    known = len(vlm.processor.tokenizer)
    vlm.model.resize_token_embeddings(known + 500)
    with torch.no_grad():  # make the padding rows the likeliest tokens
        vlm.model.get_output_embeddings().weight[known:] = 10 * vlm.model.get_output_embeddings().weight[
            :known
        ].mean(0)
    outputs: list[torch.Tensor] = []
    generate = vlm.model.generate

    def recording(**kwargs: object) -> torch.Tensor:
        out = generate(**kwargs)
        outputs.append(out)
        return out

    vlm.model.generate = recording
    for attempt in (0, 1):
        vlm.generate([], "Describe the scene.", Decoding(max_new_tokens=12, attempt=attempt))
    assert outputs and all(int(out.max()) < known for out in outputs)
