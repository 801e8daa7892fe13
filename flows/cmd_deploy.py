"""``dv4d deploy``: register the annotate flow as a Prefect deployment for a work pool."""

import argparse

from rich.console import Console

from dv4d.flows import cli
from dv4d.flows.deploy import MIN_HEARTBEAT_S, POOL_TYPES, DeployError, DeploySpec, deploy


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "deploy",
        help="register the annotate flow for a Prefect work pool (server from PREFECT_API_URL)",
        description="Register (or update) the deployment dv4d-annotate/NAME on the Prefect server of "
        "PREFECT_API_URL, for the work pool POOL (created when missing). Workers run it with "
        "`prefect worker start --pool POOL --limit 1`, one worker per GPU. Paths given here (and to "
        "`dv4d submit`) must be valid on every worker node.",
    )
    p.add_argument("--pool", required=True, help="work pool name")
    p.add_argument("--name", help="deployment name (default: the pool name)")
    p.add_argument(
        "--pool-type",
        choices=POOL_TYPES,
        default="process",
        help="type of the pool when it must be created (default: process)",
    )
    p.add_argument("--image", help="container image for docker/kubernetes pools (built from the Dockerfile)")
    p.add_argument(
        "--heartbeat",
        type=int,
        default=MIN_HEARTBEAT_S,
        help=f"seconds between heartbeats of running flow runs (default and minimum {MIN_HEARTBEAT_S})",
    )
    p.add_argument(
        "--zombie-after",
        type=int,
        default=90,
        help="mark a running flow run Crashed after this many seconds without heartbeat (default 90)",
    )
    p.add_argument(
        "--max-reruns",
        type=int,
        default=3,
        help="schedule a crashed flow run again at most this many times (default 3)",
    )
    cli.add_config_options(p)


def run(args: argparse.Namespace, console: Console) -> int:
    cfg = cli.config_from_args(args)
    cli.check_prior_dirs(args)
    try:
        spec = DeploySpec(
            pool=args.pool,
            pool_type=args.pool_type,
            name=args.name,
            image=args.image,
            heartbeat_s=args.heartbeat,
            zombie_after_s=args.zombie_after,
            max_reruns=args.max_reruns,
        )
        deployed = deploy(spec, cfg)
    except DeployError as exc:
        raise cli.UsageError(str(exc)) from None
    pool = deployed.pool
    console.print(
        f"work pool [bold]{pool.name}[/] ({pool.type}){' created' if deployed.pool_created else ''}\n"
        f"deployment [bold]{deployed.full_name}[/] id {deployed.deployment_id} "
        f"(preset {cfg.preset}, config {cfg.config_hash()[:12]})\n"
        f"crash recovery: runs without heartbeat for {spec.zombie_after_s} s are marked Crashed; "
        f"crashed runs are rescheduled up to {spec.max_reruns} times\n"
        f"one worker per GPU:  CUDA_VISIBLE_DEVICES=0 prefect worker start --pool {pool.name} --limit 1\n"
        f"submit videos:       dv4d submit VIDEOS --pool {pool.name}"
        f"{f' --name {args.name}' if args.name else ''} -o OUT",
        highlight=False,
    )
    return cli.EXIT_OK
