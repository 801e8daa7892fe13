"""``dv4d bench pipeline VIDEO``: the whole annotate pipeline on one video, per-stage frames/s and memory."""

import argparse
import json
import tempfile
from pathlib import Path

from rich.console import Console
from rich.table import Table

from dv4d.flows.cli import EXIT_FAILED, EXIT_OK, UsageError
from dv4d.pipeline.config import PRESETS


def add_parser(sub: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    p = sub.add_parser(
        "pipeline",
        help="annotate one video in-process and report frames/s per stage and peak memory",
        description="Models are loaded before the clock starts (load time reported apart). A checkpoint "
        "missing on this machine becomes its architecture at full size with random weights (real speed, "
        "meaningless outputs, listed under random_init) unless --require-weights.",
    )
    p.add_argument("video", type=Path)
    p.add_argument("--preset", choices=PRESETS, default="default", help="model preset (default: default)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default: auto)")
    p.add_argument("--resolution", type=int, default=512, help="long side of the working size (default 512)")
    p.add_argument("--max-frames", type=int, help="cap on the number of sampled frames")
    p.add_argument("--weights-dir", type=Path, help="folder with local copies of model weights")
    p.add_argument("--require-weights", action="store_true", help="stop when a checkpoint is missing")
    p.add_argument("--out", type=Path, help="keep the outputs here (default: a temporary folder)")
    p.add_argument("--json", action="store_true", help="print only the JSON line (no table)")


def run(args: argparse.Namespace, console: Console) -> int:
    from dv4d.models.errors import ModelsError
    from dv4d.pipeline.bench_pipeline import PipelineBenchConfig, bench_pipeline
    from dv4d.pipeline.errors import Dv4dError

    if not args.video.is_file():
        raise UsageError(f"{args.video}: no such file")
    cfg = PipelineBenchConfig(
        video=args.video,
        preset=args.preset,
        device=args.device,
        resolution=args.resolution,
        max_frames=args.max_frames,
        weights_dir=args.weights_dir,
        random_init_missing=not args.require_weights,
    )
    try:
        if args.out is not None:
            report = bench_pipeline(cfg, args.out)
        else:
            with tempfile.TemporaryDirectory(prefix="dv4d-bench-") as tmp:
                report = bench_pipeline(cfg, Path(tmp))
    except (Dv4dError, ModelsError) as exc:
        raise UsageError(str(exc)) from None
    if not args.json:
        table = Table(title=f"{report['video']}: {report['frames']} frames, {report['device']}")
        for col in ("stage", "seconds", "frames/s", "model", "weights"):
            table.add_column(col, justify="right" if col in ("seconds", "frames/s") else "left")
        for name, st in report["stages"].items():
            table.add_row(name, f"{st['seconds']:.2f}", str(st["frames_per_s"] or ""), str(st["model"] or ""),
                          str(st["weights"] or ""))  # fmt: skip
        console.print(table, highlight=False)
    print(json.dumps(report), flush=True)
    return EXIT_OK if report["status"] == "complete" else EXIT_FAILED
