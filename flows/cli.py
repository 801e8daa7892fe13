"""The ``dv4d`` command line.

Exit codes: 0 every video complete (or already complete), 1 at least one video failed (the others still
finish and the summary names each failure), 2 usage error (unknown flag, bad value, no video found,
output folder not writable).
"""

import argparse
import importlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn
from rich.table import Table

from dv4d.pipeline.artifacts import VideoArtifacts, assign_names
from dv4d.pipeline.config import PRESETS, AnnotateConfig, parse_intrinsics
from dv4d.pipeline.errors import Dv4dError
from dv4d.pipeline.run import VideoResult, finished

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2

MODULE_COMMANDS = {
    "eval": "dv4d.flows.cmd_eval",
    "deploy": "dv4d.flows.cmd_deploy",
    "submit": "dv4d.flows.cmd_submit",
}
"""``dv4d NAME`` -> module with ``add_parser(subparsers)`` and ``run(args, console) -> exit code``."""
BENCH_COMMANDS = {
    "bal": "dv4d.flows.cmd_bench_bal",
    "geometry": "dv4d.flows.cmd_bench_geometry",
    "memory": "dv4d.flows.cmd_bench_memory",
    "models": "dv4d.flows.cmd_bench_models",
    "pipeline": "dv4d.flows.cmd_bench_pipeline",
}
"""``dv4d bench NAME`` -> module of the same shape."""


class UsageError(Exception):
    """A mistake in the command line; reported on stderr with exit code 2."""


class RichProgress:
    """Shows one bar for the batch and one for the current stage of the current video."""

    def __init__(self, progress: Progress, video_task: TaskID) -> None:
        self.progress = progress
        self.video_task = video_task
        self.stage_task: TaskID | None = None

    def start_video(self, name: str) -> None:
        self.progress.update(self.video_task, description=f"[bold]{name}")

    def start_stage(self, stage: str, total: int | None) -> None:
        if self.stage_task is not None:
            self.progress.remove_task(self.stage_task)
        self.stage_task = self.progress.add_task(f"  {stage}", total=total)

    def advance(self, amount: int = 1) -> None:
        if self.stage_task is not None:
            self.progress.advance(self.stage_task, amount)


def add_config_options(parser: argparse.ArgumentParser) -> None:
    """The options that make an ``AnnotateConfig`` (read by ``dv4d.flows.cli.config_from_args``)."""
    parser.add_argument(
        "--preset", choices=PRESETS, default="classical", help="model preset (default: classical)"
    )
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default: auto)")
    parser.add_argument("--fps", type=float, help="cap on the sampled frame rate (default: every frame)")
    parser.add_argument("--max-frames", type=int, help="cap on the number of sampled frames")
    parser.add_argument(
        "--resolution", type=int, default=512, help="long side of the working size (default 512)"
    )
    parser.add_argument("--intrinsics", type=str, help="known fx,fy,cx,cy in source-video pixels")
    parser.add_argument("--refine-intrinsics", action="store_true", help="refine the given intrinsics")
    parser.add_argument(
        "--depth-dir", type=Path, help="folder of <video-stem>.npy z-depth priors, metres (N,h,w)"
    )
    parser.add_argument(
        "--masks-dir", type=Path, help="folder of <video-stem>.npy instance-id priors (N,h,w)"
    )
    parser.add_argument("--weights-dir", type=Path, help="folder with local copies of model weights")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dv4d", description="Videos to metric 4D annotations.")
    sub = parser.add_subparsers(dest="command", required=True)

    ann = sub.add_parser("annotate", help="annotate videos (files or folders) into OUT")
    ann.add_argument("paths", nargs="+", type=Path, help="video files or folders (searched recursively)")
    ann.add_argument("-o", "--out", type=Path, required=True, help="output folder")
    add_config_options(ann)
    ann.add_argument("--overwrite", action="store_true", help="redo videos that are already complete")
    ann.add_argument("-q", "--quiet", action="store_true", help="no progress bars")

    models = sub.add_parser("models", help="list or download the models of the presets")
    msub = models.add_subparsers(dest="models_command", required=True)
    mlist = msub.add_parser("list", help="every model of every preset and whether its weights are here")
    mlist.add_argument("--weights-dir", type=Path, help="folder with local copies of model weights")
    mdown = msub.add_parser("download", help="fetch a preset's pretrained weights (needs internet)")
    mdown.add_argument("--preset", default="default", help="preset whose weights to fetch (default: default)")
    mdown.add_argument("--weights-dir", type=Path, help="download here instead of the Hugging Face cache")

    bench = sub.add_parser("bench", help="benchmarks; the last stdout line is a JSON object")
    bsub = bench.add_subparsers(dest="bench_command", required=True)
    for module in BENCH_COMMANDS.values():
        importlib.import_module(module).add_parser(bsub)

    for module in MODULE_COMMANDS.values():
        importlib.import_module(module).add_parser(sub)

    ins = sub.add_parser("inspect", help="summarize one output folder and write a quick-look image")
    ins.add_argument("folder", type=Path, help="OUT/<video>")
    ins.add_argument(
        "--image", type=Path, help="where to write the PNG (default: OUT/_logs/<video>-quicklook.png)"
    )
    return parser


def config_from_args(args: argparse.Namespace) -> AnnotateConfig:
    try:
        return AnnotateConfig(
            preset=args.preset,
            device=args.device,
            fps=args.fps,
            max_frames=args.max_frames,
            resolution=args.resolution,
            intrinsics=parse_intrinsics(args.intrinsics) if args.intrinsics else None,
            refine_intrinsics=args.refine_intrinsics,
            depth_dir=args.depth_dir,
            masks_dir=args.masks_dir,
            weights_dir=args.weights_dir,
        )
    except Dv4dError as exc:
        raise UsageError(str(exc)) from None


def check_prior_dirs(args: argparse.Namespace) -> None:
    for flag, folder in (("--depth-dir", args.depth_dir), ("--masks-dir", args.masks_dir)):
        if folder is not None and not folder.is_dir():
            raise UsageError(f"{flag} {folder} is not a folder")


def check_models(cfg: AnnotateConfig) -> None:
    """Fail before any work when the preset's weights are missing (one message naming all of them)."""
    from dv4d.models.errors import ModelsError
    from dv4d.models.suite import shared_suite
    from dv4d.pipeline.semantic import resolve_device

    try:
        shared_suite(cfg.preset, resolve_device(cfg.device), cfg.weights_dir)
    except ModelsError as exc:
        raise UsageError(str(exc)) from None


def check_out_dir(out: Path) -> None:
    """The output folder exists (or is created) and a file can be created in it (``os.access`` says yes
    to root and knows nothing of read-only file systems)."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out):
            pass
    except OSError as exc:
        raise UsageError(f"output folder {out} is not writable: {exc.strerror or exc}") from None


def summary_table(results: list[VideoResult]) -> Table:
    table = Table(title="dv4d annotate")
    for col in ("video", "frames", "status", "seconds", "frames/s", "reason"):
        table.add_column(col, justify="right" if col in ("frames", "seconds", "frames/s") else "left")
    style = {"complete": "green", "skipped": "cyan", "failed": "red"}
    for r in results:
        rate = f"{r.frames / r.seconds:.1f}" if r.status == "complete" and r.seconds > 0 else ""
        table.add_row(
            r.name,
            str(r.frames),
            f"[{style.get(r.status, 'white')}]{r.status}",
            f"{r.seconds:.1f}",
            rate,
            r.error or "",
        )
    return table


def cmd_annotate(args: argparse.Namespace, console: Console) -> int:
    from dv4d.pipeline.ingest import display_name, file_sha256, find_videos

    cfg = config_from_args(args)
    check_out_dir(args.out)
    check_prior_dirs(args)
    check_models(cfg)
    videos, problems = find_videos(list(args.paths))
    if not videos and problems:
        raise UsageError("; ".join(f"{p}: {why}" for p, why in problems))
    if not videos:
        raise UsageError(f"no video found in {', '.join(str(p) for p in args.paths)}")
    names = assign_names(videos, args.out)
    config_hash = cfg.config_hash()
    results = [VideoResult(path, display_name(path), "failed", 0, 0.0, why) for path, why in problems]
    todo: list[Path] = []
    for video in videos:
        art = VideoArtifacts(args.out, names[video], config_hash)
        try:
            done = not args.overwrite and finished(art, file_sha256(video))
        except OSError:
            done = False  # unreadable: the task reports it properly
        if done:
            manifest = art.read_final_manifest() or {}
            results.append(VideoResult(video, names[video], "skipped", int(manifest["frames"]["count"]), 0.0))
        else:
            todo.append(video)

    if todo:
        results += run_flow(todo, names, args, cfg, console)
    order = {v: i for i, v in enumerate(videos)}
    results.sort(key=lambda r: order.get(r.video, -1))
    console.print(summary_table(results))
    failed = [r for r in results if r.status == "failed"]
    for r in failed:
        console.print(f"[red]failed:[/] {r.video}: {r.error}")
    return EXIT_FAILED if failed else EXIT_OK


def run_flow(
    videos: list[Path],
    names: dict[Path, str],
    args: argparse.Namespace,
    cfg: AnnotateConfig,
    console: Console,
) -> list[VideoResult]:
    """Run the annotate flow in-process (Prefect's ephemeral local API; no server to start)."""
    from dv4d.flows.annotate import annotate_flow, set_progress
    from dv4d.flows.local_api import start_local_api

    start_local_api()

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console, disable=args.quiet, transient=True) as progress:
        batch = progress.add_task("videos", total=len(videos))
        sink = RichProgress(progress, batch)
        set_progress(sink)
        try:
            raw = annotate_flow(
                [str(v) for v in videos],
                [names[v] for v in videos],
                str(args.out),
                cfg.to_json(),
                args.overwrite,
            )
        finally:
            set_progress(None)
    return [
        VideoResult(Path(r["video"]), r["name"], r["status"], r["frames"], r["seconds"], r["error"])
        for r in raw
    ]


def cmd_inspect(args: argparse.Namespace, console: Console) -> int:
    from dv4d.pipeline.quicklook import quicklook, summarize

    try:
        summary = summarize(args.folder)
    except Dv4dError as exc:
        raise UsageError(str(exc)) from None
    console.print_json(json.dumps(summary))
    if summary["status"] == "complete":
        image = args.image or args.folder.parent / "_logs" / f"{args.folder.name}-quicklook.png"
        console.print(f"quick-look image: {quicklook(args.folder, image)}")
    return EXIT_OK


def cmd_models(args: argparse.Namespace, console: Console) -> int:
    from dv4d.models.errors import ModelsError
    from dv4d.models.presets import list_models, preset_specs
    from dv4d.models.weights import download

    try:
        if args.models_command == "list":
            table = Table(title="dv4d models")
            for col in ("preset", "role", "model", "weights", "size GB", "license", "present"):
                table.add_column(col)
            for row in list_models(args.weights_dir):
                table.add_row(row.preset, row.role, row.model, row.weights, f"{row.size_gb:.2f}", row.license,
                              row.present)  # fmt: skip
            console.print(table)
            return EXIT_OK
        for folder in download(preset_specs(args.preset), args.weights_dir):
            console.print(f"downloaded {folder}")
        return EXIT_OK
    except ModelsError as exc:
        raise UsageError(str(exc)) from None


def cmd_bench(args: argparse.Namespace, console: Console) -> int:
    code: int = importlib.import_module(BENCH_COMMANDS[args.bench_command]).run(args, console)
    return code


def quiet_prefect() -> None:
    """Local runs: no telemetry, Prefect's own logs only for warnings (set before Prefect is imported)."""
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("DO_NOT_TRACK", "1")
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    # the ephemeral API server is a subprocess: give it time on a loaded machine (Prefect default 20 s)
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")


COMMANDS: dict[str, Any] = {
    "annotate": cmd_annotate,
    "inspect": cmd_inspect,
    "models": cmd_models,
    "bench": cmd_bench,
}


def main(argv: list[str] | None = None) -> int:
    quiet_prefect()
    parser = build_parser()
    args = parser.parse_args(argv)
    console = Console(stderr=False)
    t0 = time.perf_counter()
    try:
        if args.command in MODULE_COMMANDS:
            code: int = importlib.import_module(MODULE_COMMANDS[args.command]).run(args, console)
        else:
            code = COMMANDS[args.command](args, console)
    except UsageError as exc:
        print(f"dv4d {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("dv4d: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
    if args.command == "annotate":
        console.print(f"done in {time.perf_counter() - t0:.1f} s")
    return code


if __name__ == "__main__":
    sys.exit(main())
