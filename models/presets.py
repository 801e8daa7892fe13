"""Presets: which model fills each role, with which pinned checkpoint; and ``dv4d models list``.

Revisions are commit shas of each Hub repository (never a moving branch); a machine with
internet fetches exactly these with ``dv4d models download``.
"""

from dataclasses import dataclass
from pathlib import Path

from dv4d.models.errors import UnknownModelError
from dv4d.models.names_grammar import NamesGrammar
from dv4d.models.tiny import RANDOM_INIT
from dv4d.models.weights import WeightsSpec, find_weights

ROLES = ("depth", "detector", "segmenter", "vlm")
"""Model roles, in pipeline order."""

DEPTH_PRO = WeightsSpec(
    repo_id="apple/DepthPro-hf",
    revision="3a8b51229207764e5215b31f47fac0d1a049d563",
    files=("config.json", "model.safetensors", "preprocessor_config.json"),
    license="Apple research license (apple-ascl at this revision, apple-amlr later)",
    size_gb=1.9,
)
DEPTH_ANYTHING_V2_METRIC_OUTDOOR_SMALL = WeightsSpec(
    repo_id="depth-anything/Depth-Anything-V2-Metric-Outdoor-Small-hf",
    revision="2fd93bd764b15eea94dcf7763bba7ddc25007d0f",
    files=("config.json", "model.safetensors", "preprocessor_config.json"),
    license="apache-2.0 (Depth Anything V2 Small)",
    size_gb=0.1,
)
OWLV2_BASE_ENSEMBLE = WeightsSpec(
    repo_id="google/owlv2-base-patch16-ensemble",
    revision="7c77fc1316a353da3109f81d80ae118dd58fd55b",
    files=(
        "config.json",
        "model.safetensors",
        "preprocessor_config.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
        "vocab.json",
        "merges.txt",
    ),
    license="apache-2.0",
    size_gb=0.62,
)
SAM_VIT_B = WeightsSpec(
    repo_id="ybelkada/segment-anything",
    revision="3ff6daf6f2cb3e2df8af749d9923a559ac9b0714",
    files=("checkpoints/sam_vit_b_01ec64.pth",),
    license="apache-2.0",
    size_gb=0.375,
)
QWEN25_VL_3B = WeightsSpec(
    repo_id="Qwen/Qwen2.5-VL-3B-Instruct",
    revision="b318d0972a0bfe62f64d49e1fe95e4fd39292261",
    files=(
        "config.json",
        "generation_config.json",
        "model-*.safetensors",
        "model.safetensors.index.json",
        "preprocessor_config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "chat_template.json",
    ),
    license="qwen-research (Qwen Research License)",
    size_gb=7.5,
)


@dataclass(frozen=True)
class ModelChoice:
    """One role of a preset."""

    role: str
    """One of ``ROLES``."""
    model: str
    """Registry name of the adapter."""
    weights: WeightsSpec | None
    """Pretrained checkpoint, or ``None`` for the tiny random-init network (smoke only)."""


@dataclass(frozen=True)
class Preset:
    """A named set of models."""

    name: str
    """Name given to ``--preset``."""
    description: str
    """One line for ``dv4d models list``."""
    models: tuple[ModelChoice, ...]
    """Model per role; empty for ``classical``."""
    names_grammar: NamesGrammar
    """Limits of the VLM's dynamic-object answer."""
    cpu_threads: int | None = None
    """Intra-op threads for this preset's networks on CPU (``None`` = torch's default). Tiny networks run
    fastest on one thread: synchronising a thread pool costs more than their operations."""


_REAL_TAIL = (
    ModelChoice("detector", "owlv2", OWLV2_BASE_ENSEMBLE),
    ModelChoice("segmenter", "sam", SAM_VIT_B),
    ModelChoice("vlm", "qwen2.5-vl", QWEN25_VL_3B),
)

PRESETS: dict[str, Preset] = {
    "default": Preset(
        "default",
        "Depth Pro (metric depth + FoV), OWLv2, SAM ViT-B, Qwen2.5-VL-3B",
        (ModelChoice("depth", "depth-pro", DEPTH_PRO), *_REAL_TAIL),
        NamesGrammar(),
    ),
    "fast": Preset(
        "fast",
        "Depth Anything V2 metric outdoor small (no FoV), OWLv2, SAM ViT-B, Qwen2.5-VL-3B",
        (
            ModelChoice("depth", "depth-anything-v2-metric", DEPTH_ANYTHING_V2_METRIC_OUTDOOR_SMALL),
            *_REAL_TAIL,
        ),
        NamesGrammar(),
    ),
    "classical": Preset(
        "classical", "no learned models: geometry only, trajectory camera captions", (), NamesGrammar()
    ),
    "smoke": Preset(
        "smoke",
        "tests only: the default architectures at toy size with random weights (outputs meaningless)",
        (
            ModelChoice("depth", "depth-pro", None),
            ModelChoice("detector", "owlv2", None),
            ModelChoice("segmenter", "sam", None),
            ModelChoice("vlm", "qwen2.5-vl", None),
        ),
        # At least one name so the detector, segmenter and captioner paths always run in tests.
        NamesGrammar(max_names=3, max_name_chars=12, min_names=1),
        cpu_threads=1,
    ),
}
"""Every preset by name."""


def get_preset(name: str) -> Preset:
    """The preset called ``name``."""
    if name not in PRESETS:
        raise UnknownModelError(f"unknown preset '{name}'; choose one of: {', '.join(PRESETS)}")
    return PRESETS[name]


def preset_specs(name: str) -> list[WeightsSpec]:
    """Pretrained checkpoints a preset needs (what ``dv4d models download --preset`` fetches)."""
    return [choice.weights for choice in get_preset(name).models if choice.weights is not None]


@dataclass(frozen=True)
class ModelRow:
    """One line of ``dv4d models list``."""

    preset: str
    role: str
    model: str
    weights: str
    """``repo@revision`` or ``random-init``."""
    size_gb: float
    license: str
    present: str
    """``yes``/``no`` for pretrained checkpoints, ``n/a`` for random-init ones."""


def list_models(weights_dir: Path | None) -> list[ModelRow]:
    """Every model of every preset, and whether its checkpoint is on this machine."""
    rows = []
    for preset in PRESETS.values():
        for choice in preset.models:
            spec = choice.weights
            if spec is None:
                rows.append(ModelRow(preset.name, choice.role, choice.model, RANDOM_INIT, 0.0, "-", "n/a"))
                continue
            present = "yes" if find_weights(spec, weights_dir) is not None else "no"
            rows.append(
                ModelRow(
                    preset.name,
                    choice.role,
                    choice.model,
                    spec.weights_id,
                    spec.size_gb,
                    spec.license,
                    present,
                )
            )
    return rows
