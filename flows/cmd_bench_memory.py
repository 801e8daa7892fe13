"""``dv4d bench memory``: peak memory of a classical ``annotate`` on a long generated video, and of a
dataset worker reading it back; the last stdout line is the JSON report."""

import argparse
import json
from pathlib import Path

from rich.console import Console
from rich.progress import Progress

from dv4d.flows.cli import EXIT_FAILED, EXIT_OK, UsageError


def add_parser(sub: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    mem = sub.add_parser(
        "memory", help="peak RSS of a classical annotate on a long generated video (and a dataset worker)"
    )
    mem.add_argument("--frames", type=int, default=10_000, help="frames of the generated video (10000)")
    mem.add_argument("--width", type=int, default=1920, help="width of the generated video (1920)")
    mem.add_argument("--height", type=int, default=1080, help="height of the generated video (1080)")
    mem.add_argument("--fps", type=float, default=30.0, help="frame rate of the generated video (30)")
    mem.add_argument("--resolution", type=int, default=512, help="working resolution, long side (512)")
    mem.add_argument("--clip-len", type=int, default=16, help="frames per dataset clip (16)")
    mem.add_argument(
        "--workdir", type=Path, help="keep the video and outputs here (default: a temporary folder, deleted)"
    )
    mem.add_argument("-q", "--quiet", action="store_true", help="no progress bar")


def run(args: argparse.Namespace, console: Console) -> int:
    from dv4d.pipeline.errors import Dv4dError
    from dv4d.pipeline.memory_bench import MemoryBenchConfig, run_memory_bench

    try:
        cfg = MemoryBenchConfig(
            frames=args.frames,
            width=args.width,
            height=args.height,
            fps=args.fps,
            resolution=args.resolution,
            clip_len=args.clip_len,
            workdir=args.workdir,
        )
    except Dv4dError as exc:
        raise UsageError(str(exc)) from None
    with Progress(console=console, disable=args.quiet, transient=True) as progress:
        task = progress.add_task("generate video", total=cfg.frames)

        def show(step: str, done: int, total: int) -> None:
            progress.update(task, description=step, completed=done, total=total)

        try:
            report = run_memory_bench(cfg, show)
        except Dv4dError as exc:
            console.print(f"[red]bench memory failed:[/] {exc}")
            return EXIT_FAILED
    print(json.dumps(report), flush=True)
    return EXIT_OK
