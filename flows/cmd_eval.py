"""``dv4d eval OUT/<video> GT``: score one output folder against ground truth (table + JSON line)."""

import argparse
import json
from pathlib import Path

from rich.console import Console
from rich.table import Table

from dv4d.flows.cli import EXIT_OK, UsageError

ROWS = (
    ("frames_output", "frames in the output", "{:d}"),
    ("frames_matched", "frames with GT", "{:d}"),
    ("frames_posed", "frames posed (evaluated)", "{:d}"),
    ("frames_unposed", "frames without pose", "{:d}"),
    ("gt_path_length", "GT path length (m)", "{:.4f}"),
    ("ate_sim3", "ATE Sim(3) (m)", "{:.4f}"),
    ("ate_sim3_pct", "ATE Sim(3) (% of path)", "{:.3f}"),
    ("ate_se3", "ATE SE(3) (m)", "{:.4f}"),
    ("ate_se3_pct", "ATE SE(3) (% of path)", "{:.3f}"),
    ("scale_ratio", "trajectory scale (output/GT)", "{:.4f}"),
    ("rpe_trans", "RPE translation (m/frame)", "{:.4f}"),
    ("rpe_rot_deg", "RPE rotation (deg/frame)", "{:.4f}"),
    ("focal_error_pct", "focal error (%)", "{:.2f}"),
    ("depth_frames", "depth frames scored", "{:d}"),
    ("depth_absrel", "depth AbsRel (median-scaled)", "{:.4f}"),
    ("depth_delta1", "depth delta<1.25 (median-scaled)", "{:.4f}"),
    ("depth_scale_ratio", "depth scale (output/GT)", "{:.4f}"),
    ("depth_absrel_metric", "depth AbsRel (metric)", "{:.4f}"),
    ("depth_delta1_metric", "depth delta<1.25 (metric)", "{:.4f}"),
    ("depth_coverage", "depth coverage", "{:.4f}"),
    ("mask_iou", "dynamic-mask IoU", "{:.4f}"),
)
"""(report field, label, format) of the table rows."""


def add_parser(sub: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    from dv4d.pipeline.gt import FORMATS

    ev = sub.add_parser("eval", help="score one output folder against ground truth (table + JSON line)")
    ev.add_argument("folder", type=Path, help="a dv4d output folder OUT/<video> (status complete)")
    ev.add_argument(
        "gt",
        type=Path,
        help="ground truth: TUM or KITTI .txt, .npz (poses/intrinsics/depth), depth .npy, "
        "or an Open3D RGB-D folder (trajectory.log, depth/*.png, intrinsics .json)",
    )
    ev.add_argument(
        "--gt-format", choices=FORMATS, help="ground-truth format (default: detected from the path)"
    )
    ev.add_argument(
        "--time-offset",
        type=float,
        help="seconds added to video timestamps to get GT timestamps (default: align the first ones)",
    )
    ev.add_argument(
        "--max-time-diff",
        type=float,
        default=0.02,
        help="largest timestamp difference (s) of a matched GT pose (default 0.02)",
    )
    ev.add_argument("--max-depth", type=float, help="ignore GT depth beyond this many metres (e.g. 70)")
    ev.add_argument(
        "--depth-scale",
        type=float,
        default=1000.0,
        help="depth PNG units per metre, Open3D RGB-D (default 1000: millimetres)",
    )
    ev.add_argument("--json", action="store_true", help="print only the JSON line (no table)")


def run(args: argparse.Namespace, console: Console) -> int:
    from dv4d.pipeline.errors import Dv4dError
    from dv4d.pipeline.evaluate import EvalConfig, evaluate
    from dv4d.pipeline.gt import read_ground_truth

    if args.max_time_diff <= 0:
        raise UsageError(f"--max-time-diff must be positive, got {args.max_time_diff}")
    if args.depth_scale <= 0:
        raise UsageError(f"--depth-scale must be positive, got {args.depth_scale}")
    if args.max_depth is not None and args.max_depth <= 0:
        raise UsageError(f"--max-depth must be positive, got {args.max_depth}")
    cfg = EvalConfig(time_offset=args.time_offset, max_time_diff=args.max_time_diff, max_depth=args.max_depth)
    try:
        gt = read_ground_truth(args.gt, args.gt_format, args.depth_scale)
        report = evaluate(args.folder, gt, cfg).to_json()
    except Dv4dError as exc:
        raise UsageError(str(exc)) from None
    if not args.json:
        table = Table(title=f"dv4d eval {report['video']} vs {gt.kind} {gt.source.name}")
        table.add_column("metric")
        table.add_column("value", justify="right")
        for key, label, fmt in ROWS:
            value = report[key]
            table.add_row(label, "-" if value is None else fmt.format(value))
        console.print(table, highlight=False)
        console.print(f"metric: {report['metric']}; flags: {', '.join(report['flags']) or 'none'}")
        for note in report["notes"]:
            console.print(f"note: {note}", highlight=False)
    print(json.dumps(report), flush=True)
    return EXIT_OK
