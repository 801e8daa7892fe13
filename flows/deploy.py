"""Scale-out on a Prefect server: the work pool, the deployment of the annotate flow, its crash-recovery
automations, and the flow runs of ``dv4d submit``.

The deployment references the flow by module path (``dv4d.flows.annotate.annotate_flow``) without any
code storage: every worker node imports the dv4d installed there (a venv on a process pool, the image
on a docker or kubernetes pool). Video paths and the output folder travel as absolute paths, so they
must mean the same on every node (a shared file system mounted at the same place).

Crash recovery, all on the server: flow runs send heartbeats (``PREFECT_FLOWS_HEARTBEAT_FREQUENCY``,
set through the deployment's job variables); ``zombie_automation`` marks a running flow run whose
heartbeats stop (its node died, or its worker and flow process were killed) as ``Crashed``; a flow
process whose worker was killed reports ``Crashed`` itself. ``reschedule_automation`` then schedules
the crashed run again (a bounded number of times), any worker of the pool picks it up, videos already
complete are skipped and the interrupted one resumes from its finished stages. ``dv4d submit`` is
idempotent as well: rerunning it submits exactly the videos that are neither complete on disk nor held
by a live flow run.
"""

import hashlib
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from uuid import UUID

import anyio
from prefect import get_client
from prefect.client.orchestration import SyncPrefectClient
from prefect.client.schemas.actions import WorkPoolCreate
from prefect.client.schemas.filters import (
    DeploymentFilter,
    DeploymentFilterId,
    FlowRunFilter,
    FlowRunFilterId,
    FlowRunFilterState,
    FlowRunFilterStateType,
)
from prefect.client.schemas.objects import FlowRun, StateType, WorkPool
from prefect.client.schemas.sorting import FlowRunSort
from prefect.events.actions import ChangeFlowRunState
from prefect.events.schemas.automations import AutomationCore, EventTrigger, Posture
from prefect.events.schemas.events import ResourceSpecification
from prefect.exceptions import ObjectNotFound
from prefect.settings import get_current_settings
from prefect.types.entrypoint import EntrypointType
from prefect.workers.utilities import get_default_base_job_template_for_infrastructure_type

from dv4d.flows.annotate import FLOW_NAME, annotate_flow
from dv4d.pipeline.config import AnnotateConfig

POOL_TYPES = ("process", "docker", "kubernetes")
"""Work pool types ``dv4d deploy`` creates; docker and kubernetes need ``prefect-docker`` /
``prefect-kubernetes`` installed where the pool is created and on the worker."""
LIVE_STATES = (
    StateType.SCHEDULED,
    StateType.PENDING,
    StateType.RUNNING,
    StateType.PAUSED,
    StateType.CANCELLING,
)
"""States of a flow run that still owns its videos (``dv4d submit`` does not submit them again)."""
PAGE = 200
"""Flow runs read per request (the server's default cap)."""
RESCHEDULE_GRACE_S = 30.0
"""A run still ``Crashed`` this long after crashing was not rescheduled (its reruns are used up)."""
MIN_HEARTBEAT_S = 30
"""Prefect's floor on the flow-run heartbeat interval."""


class DeployError(Exception):
    """The Prefect server is unreachable or refuses the request, or a pool/deployment does not fit."""


@dataclass(frozen=True)
class DeploySpec:
    """Where and how the annotate flow is deployed."""

    pool: str
    """Work pool name; created when missing."""
    pool_type: str = "process"
    """Type of the pool when it has to be created: one of ``POOL_TYPES``."""
    name: str | None = None
    """Deployment name; ``None`` uses the pool name (the deployment is ``dv4d-annotate/<name>``)."""
    image: str | None = None
    """Container image of docker and kubernetes pools (the project's Dockerfile image)."""
    heartbeat_s: int = MIN_HEARTBEAT_S
    """Seconds between heartbeats of a running flow run (at least ``MIN_HEARTBEAT_S``)."""
    zombie_after_s: int = 90
    """A running flow run without a heartbeat for this long is marked ``Crashed``."""
    max_reruns: int = 3
    """A crashed flow run is scheduled again at most this many times."""

    def __post_init__(self) -> None:
        if self.pool_type not in POOL_TYPES:
            raise DeployError(f"unknown pool type {self.pool_type!r}; choose one of {', '.join(POOL_TYPES)}")
        if self.heartbeat_s < MIN_HEARTBEAT_S:
            raise DeployError(f"--heartbeat must be at least {MIN_HEARTBEAT_S} s, got {self.heartbeat_s}")
        if self.zombie_after_s <= self.heartbeat_s:
            raise DeployError(
                f"--zombie-after ({self.zombie_after_s} s) must exceed --heartbeat ({self.heartbeat_s} s)"
            )
        if self.max_reruns < 1:
            raise DeployError(f"--max-reruns must be at least 1, got {self.max_reruns}")
        if self.pool_type != "process" and not self.image:
            raise DeployError(
                f"a {self.pool_type} pool needs --image (build it from the project's Dockerfile)"
            )

    @property
    def deployment_name(self) -> str:
        return self.name or self.pool

    @property
    def full_name(self) -> str:
        """``<flow name>/<deployment name>``, as Prefect names deployments."""
        return f"{FLOW_NAME}/{self.deployment_name}"


@dataclass(frozen=True)
class Deployed:
    """What ``deploy`` registered."""

    deployment_id: UUID
    """The deployment's id on the server."""
    full_name: str
    """``dv4d-annotate/<name>``."""
    pool: WorkPool
    """The work pool (existing or created)."""
    pool_created: bool
    """Whether this call created the pool."""
    automation_ids: tuple[UUID, UUID]
    """The automations that mark unresponsive runs as crashed and reschedule crashed runs."""


def client() -> SyncPrefectClient:
    """A client of the configured server (``PREFECT_API_URL``); never an ephemeral in-process one."""
    if not get_current_settings().api.url:
        raise DeployError(
            "no Prefect server configured: set PREFECT_API_URL (for example http://HOST:4200/api) "
            "or `prefect config set PREFECT_API_URL=...`"
        )
    return get_client(sync_client=True)


def check_server(c: SyncPrefectClient) -> None:
    """Raise a one-line ``DeployError`` when the server does not answer."""
    error = c.api_healthcheck()
    if error is not None:
        raise DeployError(f"Prefect server at {get_current_settings().api.url} does not answer: {error}")


def ensure_work_pool(c: SyncPrefectClient, name: str, pool_type: str) -> tuple[WorkPool, bool]:
    """The work pool ``name``, created with the type's default job template when missing."""
    try:
        pool = c.read_work_pool(name)
    except ObjectNotFound:
        template = anyio.run(get_default_base_job_template_for_infrastructure_type, pool_type)
        if template is None:
            raise DeployError(
                f"cannot create a {pool_type} work pool: install prefect-{pool_type} "
                f"(or create it with `prefect work-pool create {name} --type {pool_type}`)"
            ) from None
        pool = c.create_work_pool(WorkPoolCreate(name=name, type=pool_type, base_job_template=template))
        return pool, True
    if pool.type != pool_type:
        raise DeployError(f"work pool {name!r} is of type {pool.type!r}, not {pool_type!r}")
    return pool, False


def job_variables(spec: DeploySpec) -> dict[str, Any]:
    """Per-run infrastructure settings: heartbeats on, and the image of container pools."""
    variables: dict[str, Any] = {"env": {"PREFECT_FLOWS_HEARTBEAT_FREQUENCY": str(spec.heartbeat_s)}}
    if spec.image:
        variables["image"] = spec.image
    return variables


def deployment_related(deployment_id: UUID) -> ResourceSpecification:
    """Matches events whose related resources include the deployment."""
    return ResourceSpecification(
        {"prefect.resource.id": f"prefect.deployment.{deployment_id}", "prefect.resource.role": "deployment"}
    )


def zombie_automation(deployment_id: UUID, full_name: str, within_s: int) -> AutomationCore:
    """Prefect's zombie-run guard, restricted to one deployment: a running flow run whose heartbeats
    stop for ``within_s`` seconds (its node or worker died) is set to ``Crashed``."""
    final = {f"prefect.flow-run.{s}" for s in ("Completed", "Failed", "Cancelled", "Crashed")}
    trigger = EventTrigger(
        after={"prefect.flow-run.heartbeat"},
        expect={"prefect.flow-run.heartbeat", *final},
        match=ResourceSpecification({"prefect.resource.id": ["prefect.flow-run.*"]}),
        match_related=deployment_related(deployment_id),
        for_each={"prefect.resource.id"},
        posture=Posture.Proactive,
        threshold=1,
        within=timedelta(seconds=within_s),
    )
    action = ChangeFlowRunState(
        state=StateType.CRASHED,
        message=f"no heartbeat for {within_s} s (worker or node lost)",
    )
    return AutomationCore(
        name=f"dv4d: crash unresponsive runs of {full_name}",
        description="Marks flow runs whose heartbeats stopped as Crashed (made by `dv4d deploy`).",
        trigger=trigger,
        actions=[action],
    )


def reschedule_automation(deployment_id: UUID, full_name: str, max_reruns: int) -> AutomationCore:
    """A crashed flow run of the deployment (its worker was killed, or the zombie guard marked it) is
    scheduled again, so any worker of the pool picks it up and resumes its videos; at most
    ``max_reruns`` times per flow run (Prefect counts a run's starts in ``prefect.run-count``)."""
    trigger = EventTrigger(
        expect={"prefect.flow-run.Crashed"},
        match=ResourceSpecification(
            {
                "prefect.resource.id": "prefect.flow-run.*",
                "prefect.run-count": [str(n) for n in range(1, max_reruns + 1)],
            }
        ),
        match_related=deployment_related(deployment_id),
        posture=Posture.Reactive,
        threshold=1,
        within=timedelta(0),
    )
    action = ChangeFlowRunState(
        state=StateType.SCHEDULED,
        name="AwaitingRetry",
        message="rescheduled after a crash (worker or node lost)",
    )
    return AutomationCore(
        name=f"dv4d: reschedule crashed runs of {full_name}",
        description=f"Schedules a crashed flow run again, up to {max_reruns} times (made by `dv4d deploy`).",
        trigger=trigger,
        actions=[action],
    )


def ensure_automation(c: SyncPrefectClient, automation: AutomationCore) -> UUID:
    """Create or update (by name) an automation."""
    existing = c.read_automations_by_name(automation.name)
    if existing:
        c.update_automation(existing[0].id, automation)
        return existing[0].id
    return c.create_automation(automation)


def deploy(spec: DeploySpec, cfg: AnnotateConfig) -> Deployed:
    """Register (or update) the annotate deployment for ``spec.pool`` with ``cfg`` as its config."""
    with client() as c:
        check_server(c)
        pool, created = ensure_work_pool(c, spec.pool, spec.pool_type)
        deployment = annotate_flow.to_deployment(
            name=spec.deployment_name,
            entrypoint_type=EntrypointType.MODULE_PATH,
            work_pool_name=spec.pool,
            parameters={"config": cfg.to_json(), "overwrite": False},
            job_variables=job_variables(spec),
            tags=["dv4d"],
            description=f"dv4d annotate, preset {cfg.preset}, config {cfg.config_hash()[:12]}",
        )
        deployment_id = deployment.apply()
        automation_ids = (
            ensure_automation(c, zombie_automation(deployment_id, spec.full_name, spec.zombie_after_s)),
            ensure_automation(c, reschedule_automation(deployment_id, spec.full_name, spec.max_reruns)),
        )
    return Deployed(deployment_id, spec.full_name, pool, created, automation_ids)


@dataclass(frozen=True)
class Target:
    """A registered deployment that ``dv4d submit`` creates flow runs of."""

    deployment_id: UUID
    """The deployment's id."""
    full_name: str
    """``dv4d-annotate/<name>``."""
    config: AnnotateConfig
    """The config the deployment was registered with (decides what ``complete`` means)."""


def read_target(c: SyncPrefectClient, pool: str, name: str | None) -> Target:
    """The deployment ``dv4d-annotate/<name or pool>``, checked to belong to ``pool``."""
    full_name = f"{FLOW_NAME}/{name or pool}"
    try:
        deployment = c.read_deployment_by_name(full_name)
    except ObjectNotFound:
        raise DeployError(f"no deployment {full_name!r}: run `dv4d deploy --pool {pool}` first") from None
    if deployment.work_pool_name != pool:
        raise DeployError(
            f"deployment {full_name!r} runs on pool {deployment.work_pool_name!r}, not {pool!r}"
        )
    config = deployment.parameters.get("config")
    if not isinstance(config, dict):
        raise DeployError(f"deployment {full_name!r} has no config: redeploy it with `dv4d deploy`")
    return Target(deployment.id, full_name, AnnotateConfig.from_json(config))


def all_flow_runs(
    c: SyncPrefectClient, flow_run_filter: FlowRunFilter, deployment_filter: DeploymentFilter | None = None
) -> list[FlowRun]:
    """Every flow run matching the filters, read page by page (the server caps one answer)."""
    runs: list[FlowRun] = []
    while True:
        page = c.read_flow_runs(
            flow_run_filter=flow_run_filter,
            deployment_filter=deployment_filter,
            sort=FlowRunSort.ID_DESC,
            limit=PAGE,
            offset=len(runs),
        )
        runs += page
        if len(page) < PAGE:
            return runs


def live_runs(c: SyncPrefectClient, deployment_id: UUID, out: Path) -> list[FlowRun]:
    """Live flow runs of the deployment writing into ``out`` (they hold their videos)."""
    runs = all_flow_runs(
        c,
        FlowRunFilter(state=FlowRunFilterState(type=FlowRunFilterStateType(any_=list(LIVE_STATES)))),
        DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id])),
    )
    return [r for r in runs if r.parameters.get("out") == str(out)]


def shards(items: list[Any], size: int) -> Iterator[list[Any]]:
    """Consecutive chunks of at most ``size`` items."""
    for start in range(0, len(items), size):
        yield items[start : start + size]


def shard_name(names: Iterable[str]) -> str:
    """A readable flow-run name for a shard: its first video and a short hash of all of them."""
    names = list(names)
    digest = hashlib.sha256("\0".join(names).encode()).hexdigest()[:6]
    more = f"+{len(names) - 1}" if len(names) > 1 else ""
    return f"{names[0][:40]}{more}-{digest}"


def create_runs(
    c: SyncPrefectClient, target: Target, videos: list[Path], names: dict[Path, str], out: Path, size: int
) -> list[FlowRun]:
    """One flow run per shard of ``size`` videos (absolute paths, in order)."""
    runs = []
    for shard in shards(videos, size):
        parameters = {
            "videos": [str(v) for v in shard],
            "names": [names[v] for v in shard],
            "out": str(out),
            "config": target.config.to_json(),
        }
        runs.append(
            c.create_flow_run_from_deployment(
                target.deployment_id,
                parameters=parameters,
                name=shard_name(names[v] for v in shard),
                tags=["dv4d"],
            )
        )
    return runs


def is_finished(run: FlowRun) -> bool:
    """Completed, Failed or Cancelled; Crashed only once the reschedule automation had its chance."""
    state = run.state
    if state is None or not state.is_final():
        return False
    if not state.is_crashed():
        return True
    return (datetime.now(UTC) - state.timestamp).total_seconds() > RESCHEDULE_GRACE_S


def wait_for_runs(
    c: SyncPrefectClient,
    run_ids: list[UUID],
    on_poll: Callable[[list[FlowRun]], None] | None = None,
    poll_s: float = 2.0,
) -> list[FlowRun]:
    """Poll the runs until every one is finished (see ``is_finished``)."""
    while True:
        runs = all_flow_runs(c, FlowRunFilter(id=FlowRunFilterId(any_=run_ids)))
        if on_poll is not None:
            on_poll(runs)
        if len(runs) == len(run_ids) and all(is_finished(r) for r in runs):
            return runs
        time.sleep(poll_s)


def flow_run_url(run_id: UUID) -> str | None:
    """The UI page of a flow run, when the server's UI address is known."""
    ui = get_current_settings().ui_url
    return f"{ui.rstrip('/')}/runs/flow-run/{run_id}" if ui else None
