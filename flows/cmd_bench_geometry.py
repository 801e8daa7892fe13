"""``dv4d bench geometry``: dv4d classical mode beside COLMAP on videos with ground truth; a table per
scene, then the JSON object as the last stdout line."""

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Console
from rich.table import Table

from dv4d.flows.cli import EXIT_FAILED, EXIT_OK, UsageError
from dv4d.pipeline.synthetic import CAMERA_MOTIONS

if TYPE_CHECKING:
    from dv4d.pipeline.bench_geometry import SceneScore

COLUMNS = (
    ("posed", "frames_posed", "{:.0f}"),
    ("ATE %", "ate_pct", "{:.3f}"),
    ("RPE °", "rpe_rot_deg", "{:.4f}"),
    ("focal %", "focal_err_pct", "{:.2f}"),
    ("fps", "fps", "{:.2f}"),
    ("camera fps", "camera_fps", "{:.2f}"),
    ("AbsRel", "depth_absrel", "{:.3f}"),
    ("δ<1.25", "depth_delta1", "{:.3f}"),
    ("mask IoU", "mask_iou", "{:.3f}"),
    ("inst", "instances", "{:.0f}"),
)


def add_parser(sub: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    geo = sub.add_parser(
        "geometry", help="dv4d classical mode vs COLMAP on synthetic scenes (or videos) with ground truth"
    )
    geo.add_argument("--scenes", type=int, default=3, help="synthetic scenes to render (default 3)")
    geo.add_argument("--seed", type=int, default=0, help="seed of the first scene (default 0)")
    geo.add_argument("--frames", type=int, default=90, help="frames per scene (default 90)")
    geo.add_argument("--width", type=int, default=320, help="scene width in pixels (default 320)")
    geo.add_argument("--height", type=int, default=240, help="scene height in pixels (default 240)")
    geo.add_argument(
        "--camera-motion", choices=CAMERA_MOTIONS, default="orbit", help="camera path (default orbit)"
    )
    geo.add_argument("--threads", type=int, default=2, help="COLMAP threads (default 2)")
    geo.add_argument(
        "--colmap-overlap", type=int, default=10, help="COLMAP sequential matching overlap (default 10)"
    )
    geo.add_argument(
        "--videos",
        type=Path,
        help="instead of rendering: folder of NAME.mp4 with NAME.npz ground truth "
        "(c2w (F,4,4), K (3,3), optional depth (F,H,W) metres and dynamic (F,H,W) bool)",
    )
    geo.add_argument("--work", type=Path, help="keep the videos and outputs here (default: a temp folder)")
    geo.add_argument("--json", action="store_true", help="print only the JSON line (no table)")


def _table(title: str, rows: list[tuple[str, dict[str, object]]]) -> Table:
    table = Table(title=title)
    table.add_column("scene / method")
    for name, _, _ in COLUMNS:
        table.add_column(name, justify="right")
    for label, figures in rows:
        cells = []
        for _, key, fmt in COLUMNS:
            value = figures.get(key)
            cells.append("-" if value is None else fmt.format(value))
        table.add_row(label, *cells)
    return table


def run(args: argparse.Namespace, console: Console) -> int:
    from dv4d.pipeline.bench_geometry import METHODS, BenchConfig, find_scenes, run_benchmark, summary
    from dv4d.pipeline.errors import Dv4dError

    try:
        cfg = BenchConfig(
            scenes=args.scenes,
            seed=args.seed,
            frames=args.frames,
            width=args.width,
            height=args.height,
            camera_motion=args.camera_motion,
            colmap_threads=args.threads,
            colmap_overlap=args.colmap_overlap,
            videos=args.videos,
        )
        if cfg.videos is not None:
            find_scenes(cfg.videos)
    except Dv4dError as exc:
        raise UsageError(str(exc)) from None

    def show(scene: "SceneScore") -> None:
        if not args.json:
            figures = ", ".join(
                f"{m} {getattr(scene, m).frames_posed} posed, ATE {getattr(scene, m).ate_pct:.3f}%, "
                f"focal {getattr(scene, m).focal_err_pct:.2f}%, {getattr(scene, m).fps:.2f} fps "
                f"({getattr(scene, m).camera_fps:.2f} camera)"
                for m in METHODS
            )
            console.print(f"scene {scene.name}: {figures}", highlight=False)

    with tempfile.TemporaryDirectory(prefix="dv4d-bench-geometry-") as tmp:
        work = args.work if args.work is not None else Path(tmp)
        try:
            results = run_benchmark(cfg, work, show)
        except Dv4dError as exc:
            print(f"dv4d bench geometry: {exc}", file=sys.stderr)
            return EXIT_FAILED
        report = summary(cfg, results)
    if not args.json:
        rows = [
            (f"{scene['name']} {method}", scene[method]) for scene in report["scenes"] for method in METHODS
        ]
        rows += [(f"mean {method}", report["mean"][method]) for method in METHODS]
        console.print(_table("dv4d classical vs COLMAP (ground-truth metrics)", rows), highlight=False)
        console.print(f"ratios: {report['ratios']}  targets: {report['targets']}", highlight=False)
    print(json.dumps(report), flush=True)
    return EXIT_OK
