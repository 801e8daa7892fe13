"""``dv4d bench pipeline``: the whole annotate pipeline on one video, frames/s per stage and peak memory.

Runs ``annotate_video`` in-process (no Prefect) into a scratch output folder. The models are loaded
before the clock starts (their load time is reported on its own), so the stage figures are what a
worker that already holds its models spends per video. With ``random_init_missing`` a checkpoint
that is not on this machine is replaced by its architecture at full size with random weights: the
speed is the real one, the outputs mean nothing, and the report says which roles were random.
"""

import resource
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dv4d.models.suite import shared_suite
from dv4d.pipeline.artifacts import VideoArtifacts, read_json, safe_stem
from dv4d.pipeline.config import AnnotateConfig
from dv4d.pipeline.run import NullProgress, annotate_video
from dv4d.pipeline.semantic import resolve_device


@dataclass(frozen=True)
class PipelineBenchConfig:
    """What ``bench_pipeline`` runs."""

    video: Path
    """The input video."""
    preset: str = "default"
    """Model preset (see ``dv4d.pipeline.config.PRESETS``)."""
    device: str = "auto"
    """``auto``, ``cpu`` or ``cuda[:N]``."""
    resolution: int = 512
    """Long side of the working resolution."""
    max_frames: int | None = None
    """Cap on the sampled frames (``None``: all)."""
    weights_dir: Path | None = None
    """Local copies of model weights."""
    random_init_missing: bool = True
    """Missing checkpoints become full-size random networks (labelled) instead of an error."""


def peak_rss_gb() -> float:
    """Peak resident memory of this process so far, GB."""
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kb / (1024**3 if sys.platform == "darwin" else 1024**2)


def bench_pipeline(cfg: PipelineBenchConfig, out_dir: Path) -> dict[str, Any]:
    """Annotate ``cfg.video`` into ``out_dir`` and report wall time, frames/s per stage and memory."""
    import torch

    annotate = AnnotateConfig(
        preset=cfg.preset,
        device=cfg.device,
        resolution=cfg.resolution,
        max_frames=cfg.max_frames,
        weights_dir=cfg.weights_dir,
        random_init_missing=cfg.random_init_missing,
    )
    device = resolve_device(annotate.device)
    cuda = device.startswith("cuda")
    suite = shared_suite(annotate.preset, device, annotate.weights_dir, annotate.random_init_missing)
    t0 = time.perf_counter()
    suite.load(*suite.roles)
    if cuda:
        torch.cuda.synchronize(device)
    load_s = time.perf_counter() - t0
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    art = VideoArtifacts(out_dir, safe_stem(cfg.video), annotate.config_hash())
    t0 = time.perf_counter()
    result = annotate_video(cfg.video, art, annotate, overwrite=True, progress=NullProgress())
    wall = time.perf_counter() - t0
    manifest = art.read_final_manifest() or {}
    components: dict[str, Any] = manifest.get("components") or {}
    if not components:  # a failed video keeps its finished stages' markers in the work folder
        for marker in sorted(art.work_dir.glob("*.done.json")):
            components[marker.name.removesuffix(".done.json")] = read_json(marker)
    frames = result.frames
    stages = {
        name: {
            "seconds": rec["seconds"],
            "frames_per_s": round(frames / rec["seconds"], 2) if frames and rec["seconds"] > 0 else None,
            "model": rec.get("model"),
            "weights": rec.get("weights"),
        }
        for name, rec in components.items()
        if isinstance(rec, dict) and "seconds" in rec
    }
    weights = {role: str(c["weights"]) for role, c in suite.components().items()}
    return {
        "video": str(cfg.video),
        "preset": cfg.preset,
        "device": torch.cuda.get_device_name(device) if cuda else "cpu",
        "resolution": cfg.resolution,
        "status": result.status,
        "error": result.error,
        "frames": frames,
        "seconds": round(wall, 3),
        "frames_per_s": round(frames / wall, 2) if frames and wall > 0 else None,
        "model_load_seconds": round(load_s, 3),
        "stages": stages,
        "weights": weights,
        "random_init": sorted(role for role, w in weights.items() if w.startswith("random-init")),
        "peak_gpu_memory_gb": round(torch.cuda.max_memory_allocated(device) / 1024**3, 2) if cuda else None,
        "peak_rss_gb": round(peak_rss_gb(), 2),
    }
