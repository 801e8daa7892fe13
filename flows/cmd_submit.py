"""``dv4d submit``: create flow runs of a dv4d deployment for the videos that still need work."""

import argparse
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from prefect.client.schemas.objects import FlowRun
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from dv4d.flows import cli
from dv4d.flows.deploy import (
    DeployError,
    check_server,
    client,
    create_runs,
    flow_run_url,
    live_runs,
    read_target,
    wait_for_runs,
)
from dv4d.pipeline.artifacts import VideoArtifacts, assign_names
from dv4d.pipeline.errors import Dv4dError
from dv4d.pipeline.ingest import file_sha256, find_videos
from dv4d.pipeline.run import is_done

HASH_THREADS = 8
"""Videos hashed at once when checking what is complete (file reads, mostly waiting on storage)."""


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "submit",
        help="create flow runs of a `dv4d deploy` deployment for videos (files or folders)",
        description="Shard the videos that are neither complete in OUT (same content and config) nor "
        "held by a live flow run into flow runs of dv4d-annotate/NAME. Idempotent: rerun it after a "
        "crash to resubmit exactly what is missing. Paths must be valid on every worker node.",
    )
    p.add_argument("paths", nargs="+", type=Path, help="video files or folders (searched recursively)")
    p.add_argument("--pool", required=True, help="work pool of the deployment")
    p.add_argument("--name", help="deployment name given to `dv4d deploy` (default: the pool name)")
    p.add_argument("-o", "--out", type=Path, required=True, help="output folder (shared by all nodes)")
    p.add_argument("--shard-size", type=int, default=4, help="videos per flow run (default 4)")
    p.add_argument(
        "--wait",
        action="store_true",
        help="wait for the new runs and the live runs holding these videos, then print a summary",
    )


def is_complete(video: Path, art: VideoArtifacts) -> bool:
    """``is_done``, hashing the video only when its folder claims a complete result for this config."""
    manifest = art.read_final_manifest() or {}
    if manifest.get("status") != "complete" or manifest.get("config_hash") != art.config_hash:
        return False
    try:
        return is_done(art, file_sha256(video))
    except Dv4dError:
        return False  # unreadable now: its task reports it properly


def pending(
    videos: list[Path], names: dict[Path, str], out: Path, config_hash: str
) -> tuple[list[Path], int]:
    """The videos still to annotate (in order) and how many are complete; hashes read in parallel."""
    with ThreadPoolExecutor(max_workers=HASH_THREADS) as pool:
        done = list(pool.map(lambda v: is_complete(v, VideoArtifacts(out, names[v], config_hash)), videos))
    return [v for v, d in zip(videos, done, strict=True) if not d], sum(done)


def video_table(videos: list[Path], names: dict[Path, str], out: Path, config_hash: str) -> tuple[Table, int]:
    """Outcome of each video from its manifest, and how many are not complete."""
    table = Table(title="dv4d submit")
    for col in ("video", "status", "frames", "reason"):
        table.add_column(col)
    incomplete = 0
    for video in videos:
        manifest = VideoArtifacts(out, names[video], config_hash).read_final_manifest() or {}
        status = str(manifest.get("status", "missing"))
        incomplete += status != "complete"
        frames = manifest.get("frames", {}).get("count", "")
        reason = manifest.get("error", {}).get("message", "")
        colour = "green" if status == "complete" else "red"
        table.add_row(names[video], f"[{colour}]{status}", str(frames), reason)
    return table, incomplete


def wait(runs: list[FlowRun], console: Console) -> list[FlowRun]:
    """Show the runs' states on a progress bar until all are final."""
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=True) as progress:
        bar = progress.add_task("flow runs", total=len(runs))

        def show(current: list[FlowRun]) -> None:
            states = Counter(r.state.name for r in current if r.state is not None)
            done = sum(1 for r in current if r.state is not None and r.state.is_final())
            text = ", ".join(f"{n} {s}" for s, n in sorted(states.items()))
            progress.update(bar, completed=done, description=f"flow runs ({text})")

        with client() as c:
            return wait_for_runs(c, [r.id for r in runs], on_poll=show)


def run(args: argparse.Namespace, console: Console) -> int:
    if args.shard_size < 1:
        raise cli.UsageError(f"--shard-size must be at least 1, got {args.shard_size}")
    out = args.out.absolute()
    cli.check_out_dir(out)
    videos, problems = find_videos([p.absolute() for p in args.paths])
    for path, why in problems:
        console.print(f"[yellow]not submitted:[/] {path}: {why}", highlight=False)
    if not videos:
        raise cli.UsageError(f"no video found in {', '.join(str(p) for p in args.paths)}")
    try:
        with client() as c:
            check_server(c)
            target = read_target(c, args.pool, args.name)
            config_hash = target.config.config_hash()
            names = assign_names(videos, out)
            wanted = {str(v) for v in videos}
            live = [
                r for r in live_runs(c, target.deployment_id, out) if wanted & set(r.parameters["videos"])
            ]
            held = {v for r in live for v in r.parameters["videos"]}
            todo, complete = pending([v for v in videos if str(v) not in held], names, out, config_hash)
            runs = create_runs(c, target, todo, names, out, args.shard_size)
    except DeployError as exc:
        raise cli.UsageError(str(exc)) from None

    console.print(
        f"{len(videos)} videos: {complete} already complete, {len(videos) - complete - len(todo)} in live "
        f"flow runs, {len(todo)} submitted in {len(runs)} flow runs of {target.full_name}",
        highlight=False,
    )
    if runs:
        table = Table(title="flow runs")
        for col in ("flow run", "id", "videos", "url"):
            table.add_column(col)
        for r in runs:
            table.add_row(r.name, str(r.id), str(len(r.parameters["videos"])), flow_run_url(r.id) or "")
        console.print(table)
        console.print(
            "watch:  the urls above (server UI), `prefect flow-run watch ID`, or this command with --wait\n"
            f"logs:   per video in {out}/_logs\n"
            "resume: crashed runs are rescheduled by the server; rerunning this command submits only what is "
            "missing",
            highlight=False,
        )
    if not args.wait or not runs + live:
        return cli.EXIT_OK
    finished = wait(runs + live, console)
    table, incomplete = video_table(
        [v for v in videos if str(v) in held or v in todo], names, out, config_hash
    )
    console.print(table)
    bad = [r for r in finished if r.state is None or not r.state.is_completed()]
    for r in bad:
        console.print(f"[red]flow run {r.name} {r.state.name if r.state else 'unknown'}[/]: {r.id}")
    return cli.EXIT_FAILED if bad or incomplete else cli.EXIT_OK
