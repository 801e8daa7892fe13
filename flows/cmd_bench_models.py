"""``dv4d bench models``: frames per second and peak memory of each model stage of a preset; the last
stdout line is the JSON report (see ``dv4d.models.bench``)."""

import argparse
import json
from pathlib import Path

from rich.console import Console
from rich.table import Table

from dv4d.flows.cli import EXIT_OK, UsageError

BENCH_PRESETS = ("default", "fast", "smoke")
"""Presets with learned models."""


def add_parser(sub: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    models = sub.add_parser(
        "models",
        help="frames/s and peak memory per model stage (checkpoints when present, else full-size random)",
    )
    models.add_argument("--preset", choices=BENCH_PRESETS, default="default", help="model preset (default)")
    models.add_argument(
        "--device", default="auto", help="cpu, cuda or cuda:N (auto: cuda when available, else cpu)"
    )
    models.add_argument("--frames", type=int, default=16, help="frames through depth/detect/segment (16)")
    models.add_argument("--resolution", type=int, default=512, help="long side of the 16:9 frames (512)")
    models.add_argument("--objects", type=int, default=4, help="boxes per frame and captions (4)")
    models.add_argument("--batch-size", type=int, help="frames per forward pass, captions per batch (8)")
    models.add_argument("--weights-dir", type=Path, help="folder of local checkpoint copies")
    models.add_argument("-q", "--quiet", action="store_true", help="no per-stage table on the terminal")


def run(args: argparse.Namespace, console: Console) -> int:
    import torch

    from dv4d.models.bench import BenchConfig, bench_models
    from dv4d.models.errors import ModelsError

    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    if args.batch_size is not None and args.batch_size < 1:
        raise UsageError(f"--batch-size must be at least 1, got {args.batch_size}")
    try:
        cfg = BenchConfig(args.preset, device, args.frames, args.resolution, args.objects, args.weights_dir,
                          args.batch_size)  # fmt: skip
        with console.status("loading models", spinner="dots") as status:
            report = bench_models(cfg, lambda stage: status.update(f"timing {stage}"))
    except (ModelsError, ValueError) as exc:
        raise UsageError(str(exc)) from None
    if not args.quiet:
        table = Table(title=f"dv4d bench models: {cfg.preset} on {report['device_name']} ({report['dtype']})")
        for column in ("stage", "model", "weights", "per second", "peak MiB", "load s"):
            table.add_column(column)
        for s in report["stages"]:
            table.add_row(s["stage"], s["model"], s["weights"], f"{s['per_second']:.2f} {s['unit']}s",
                          f"{s['peak_memory_mb']:.0f}", f"{s['load_seconds']:.1f}")  # fmt: skip
        console.print(table)
    print(json.dumps(report), flush=True)
    return EXIT_OK
