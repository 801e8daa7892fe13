"""``dv4d bench models``: throughput and peak memory of each model stage of a preset.

Each stage goes through ``ModelSuite`` (the pipeline's own batching, dtype and thread settings): load,
one warm-up call on a single frame (kernel selection, lazy initialisation), then the timed call on the
whole input with the peak-memory counter reset first. On CUDA the clock is read after
``torch.cuda.synchronize`` and memory is ``torch.cuda.max_memory_allocated`` (weights + activations of
that stage); on CPU memory is the process's peak resident set so far (it never goes down).

Checkpoints found on the machine are used; a missing one is replaced by its architecture at full size
with random weights (``random-init-full-size``): the cost is real, the outputs meaningless. The smoke
preset's tiny networks are ``random-init``. Frames are seeded noise at 16:9, so a run is repeatable;
VLM answers with random weights always run to the token limit (the worst case).
"""

import platform
import resource
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dv4d.models import vlm_tasks
from dv4d.models.errors import ModelsError
from dv4d.models.generator import Decoding, Request
from dv4d.models.suite import MAX_VLM_FRAMES, ModelSuite

DETECT_NAMES = ["person", "car", "dog"]
"""Names the detector is asked for (fixed, so detection cost does not depend on the VLM's answer)."""


@dataclass(frozen=True)
class BenchConfig:
    """What ``bench_models`` measures."""

    preset: str
    """Model preset (``default``, ``fast``, ``smoke``)."""
    device: str
    """``cpu`` or ``cuda[:N]``."""
    frames: int = 16
    """Frames through the per-frame stages (depth, detection, segmentation)."""
    resolution: int = 512
    """Long side of the 16:9 frames in pixels (the pipeline's working resolution)."""
    objects: int = 4
    """Boxes segmented per frame, and object crops captioned."""
    weights_dir: Path | None = None
    """Folder of local checkpoint copies (searched before the Hugging Face cache)."""
    batch_size: int | None = None
    """Frames per forward pass / objects per caption batch (``ModelSuite``'s default when ``None``)."""

    def __post_init__(self) -> None:
        if self.frames < 1 or self.objects < 1:
            raise ValueError(f"frames and objects must be >= 1, got {self.frames}, {self.objects}")
        if self.resolution < 32:
            raise ValueError(f"resolution must be at least 32 pixels, got {self.resolution}")


@dataclass(frozen=True)
class StageResult:
    """One timed model stage."""

    stage: str
    """``depth``, ``detect``, ``segment``, ``vlm_names`` or ``vlm_captions``."""
    role: str
    """Preset role whose model ran."""
    model: str
    """Architecture name."""
    weights: str
    """``repo@revision``, ``random-init`` (smoke) or ``random-init-full-size``."""
    unit: str
    """What ``count`` counts: ``frame``, ``video`` (a naming call on ``MAX_VLM_FRAMES`` keyframes) or
    ``object`` (a caption)."""
    count: int
    """Units processed in the timed call."""
    seconds: float
    """Wall time of the timed call (synchronised on CUDA)."""
    per_second: float
    """``count / seconds``."""
    peak_memory_mb: float
    """CUDA: peak allocated during the call (MiB); CPU: peak resident set of the process so far (MiB)."""
    load_seconds: float
    """Time to build or load the network (first use only; 0 when an earlier stage loaded it)."""


def frames_for(cfg: BenchConfig) -> np.ndarray:
    """(F, H, W, 3) uint8 seeded noise at 16:9 with long side ``resolution`` (even sides)."""
    width = cfg.resolution - cfg.resolution % 2
    height = max(2, round(width * 9 / 16 / 2) * 2)
    return np.random.default_rng(0).integers(0, 256, (cfg.frames, height, width, 3), dtype=np.uint8)


def object_boxes(height: int, width: int, count: int) -> np.ndarray:
    """(count, 4) float32 xyxy boxes spread over a frame (each a quarter of the frame's size)."""
    centres = (np.arange(count) + 0.5) / count
    xs, ys = centres * width, centres[::-1] * height
    half_w, half_h = width / 8, height / 8
    boxes = np.stack([xs - half_w, ys - half_h, xs + half_w, ys + half_h], axis=1)
    return np.clip(boxes, 0, [width - 1, height - 1, width - 1, height - 1]).astype(np.float32)


def _peak_mb(device: str) -> float:
    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize(device)


def _measure(
    suite: ModelSuite,
    role: str,
    stage: str,
    unit: str,
    count: int,
    warmup: Callable[[], Any],
    call: Callable[[], Any],
) -> StageResult:
    device = suite.device
    start = time.perf_counter()
    suite.load(role)
    load_seconds = time.perf_counter() - start
    warmup()
    _sync(device)
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    call()
    _sync(device)
    seconds = time.perf_counter() - start
    info = suite.components()[role]
    return StageResult(
        stage=stage,
        role=role,
        model=str(info["model"]),
        weights=str(info["weights"]),
        unit=unit,
        count=count,
        seconds=round(seconds, 4),
        per_second=round(count / seconds, 3) if seconds > 0 else float("inf"),
        peak_memory_mb=round(_peak_mb(device), 1),
        load_seconds=round(load_seconds, 3),
    )


def _device_name(device: str) -> str:
    if device.startswith("cuda"):
        return str(torch.cuda.get_device_name(device))
    return platform.processor() or platform.machine()


def bench_models(cfg: BenchConfig, progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Time every model stage of ``cfg.preset`` on ``cfg.device``; the JSON report as a dict:
    ``{benchmark, preset, device, device_name, dtype, torch, frames, width, height, objects,
    batch_size, threads, stages: [StageResult...]}``."""
    suite = ModelSuite(cfg.preset, cfg.device, cfg.weights_dir, cfg.batch_size, full_size_if_missing=True)
    if not suite.roles:
        raise ModelsError(f"preset '{cfg.preset}' has no learned models to benchmark")
    frames = frames_for(cfg)
    height, width = frames.shape[1:3]
    boxes = object_boxes(height, width, cfg.objects)
    keyframes = list(frames[:MAX_VLM_FRAMES])
    crops = [(frames[i % len(frames)], np.ones((height, width), bool)) for i in range(cfg.objects)]
    grammar = suite.preset.names_grammar
    names_request: list[Request] = [(keyframes, vlm_tasks.DYNAMIC_PROMPT)]
    names_decoding = Decoding(vlm_tasks.names_token_budget(grammar), 0, grammar)
    caption_requests: list[Request] = [
        ([vlm_tasks.highlight(c, m)], vlm_tasks.OBJECT_PROMPT) for c, m in crops
    ]
    step = suite.batch_size

    def captions() -> None:
        for i in range(0, len(caption_requests), step):
            suite.generate(caption_requests[i : i + step], Decoding(vlm_tasks.CAPTION_TOKENS, 0))

    plans: list[tuple[str, str, str, int, Callable[[], Any], Callable[[], Any]]] = [
        ("depth", "depth", "frame", cfg.frames, lambda: suite.depth(frames[:1]), lambda: suite.depth(frames)),
        ("detector", "detect", "frame", cfg.frames, lambda: suite.detect(frames[:1], DETECT_NAMES),
         lambda: suite.detect(frames, DETECT_NAMES)),
        ("segmenter", "segment", "frame", cfg.frames, lambda: suite.segment(frames[0], boxes),
         lambda: [suite.segment(frame, boxes) for frame in frames]),
        ("vlm", "vlm_names", "video", 1, lambda: suite.generate([([frames[0]], "Hi")], Decoding(4, 0)),
         lambda: suite.generate(names_request, names_decoding)),
        ("vlm", "vlm_captions", "object", cfg.objects, lambda: None, captions),
    ]  # fmt: skip
    results = []
    for role, stage, unit, count, warmup, call in plans:
        if not suite.has(role):
            continue
        if progress is not None:
            progress(stage)
        results.append(_measure(suite, role, stage, unit, count, warmup, call))
    return {
        "benchmark": "models",
        "preset": cfg.preset,
        "device": cfg.device,
        "device_name": _device_name(cfg.device),
        "dtype": str(suite.dtype).removeprefix("torch."),
        "torch": torch.__version__,
        "frames": cfg.frames,
        "width": int(width),
        "height": int(height),
        "objects": cfg.objects,
        "batch_size": suite.batch_size,
        "threads": (suite.preset.cpu_threads or torch.get_num_threads()) if cfg.device == "cpu" else None,
        "stages": [asdict(r) for r in results],
    }
