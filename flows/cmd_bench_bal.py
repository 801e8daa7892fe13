"""``dv4d bench bal``: Levenberg–Marquardt on a BAL problem, printed as a table and a JSON line."""

import argparse
import json
from pathlib import Path

from rich.console import Console
from rich.table import Table

from dv4d.flows.cli import EXIT_OK, UsageError


def add_parser(sub: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    bal = sub.add_parser("bal", help="bundle adjustment on a BAL problem file (.txt or .bz2)")
    bal.add_argument("file", type=Path)
    bal.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    bal.add_argument("--max-iterations", type=int, default=50)
    bal.add_argument("--dtype", choices=("float64", "float32"), default="float64")
    bal.add_argument("--threads", type=int, default=1, help="CPU threads for torch (default 1)")
    bal.add_argument(
        "--no-cuda-graphs", action="store_true", help="launch every kernel eagerly on CUDA (no graph replay)"
    )
    bal.add_argument("--json", action="store_true", help="print only the JSON line (no table)")


def run(args: argparse.Namespace, console: Console) -> int:
    from dv4d.ba.bench import run_bal_benchmark
    from dv4d.ba.errors import BundleAdjustmentError

    if not args.file.is_file():
        raise UsageError(f"{args.file}: no such file")
    try:
        report = run_bal_benchmark(
            args.file, args.device, args.max_iterations, args.dtype, args.threads, not args.no_cuda_graphs
        )
    except BundleAdjustmentError as exc:
        raise UsageError(str(exc)) from None
    if not args.json:
        table = Table(title=f"LM on {report['problem']} ({report['device']}, {report['dtype']})")
        for col in ("it", "cost", "step", "radius", "accepted", "seconds"):
            table.add_column(col, justify="right")
        for it in report["log"]:
            cells = (it["cost"], it["step_norm"], it["trust_region_radius"])
            table.add_row(str(it["iteration"]), *(f"{c:.4e}" for c in cells), str(it["accepted"]),
                          f"{it['seconds']:.4f}")  # fmt: skip
        console.print(table, highlight=False)
    summary = {k: v for k, v in report.items() if k != "log"}
    print(json.dumps(summary), flush=True)
    return EXIT_OK
