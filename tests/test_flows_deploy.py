"""The pieces of ``dv4d deploy`` / ``dv4d submit`` that need no server: specs, shards, the automations
that detect and reschedule crashed runs, when a run counts as finished, and the commands' usage errors.
A real server and workers run in ``test_prefect_integration.py``."""

import argparse
import socket
from datetime import UTC, datetime, timedelta
from pathlib import Path
from uuid import uuid4

import pytest
from prefect.client.schemas.objects import FlowRun, StateType
from prefect.settings import PREFECT_API_URL, temporary_settings
from prefect.states import Completed, Crashed, Running
from rich.console import Console

from dv4d.flows import cmd_deploy, cmd_submit
from dv4d.flows.cli import UsageError
from dv4d.flows.deploy import (
    RESCHEDULE_GRACE_S,
    DeployError,
    DeploySpec,
    is_finished,
    job_variables,
    reschedule_automation,
    shard_name,
    shards,
    zombie_automation,
)
from dv4d.pipeline.artifacts import VideoArtifacts, write_json
from dv4d.pipeline.ingest import file_sha256


def test_spec_defaults_and_names() -> None:
    spec = DeploySpec(pool="gpus")
    assert spec.full_name == "dv4d-annotate/gpus"
    assert DeploySpec(pool="gpus", name="hq").full_name == "dv4d-annotate/hq"
    assert job_variables(spec) == {"env": {"PREFECT_FLOWS_HEARTBEAT_FREQUENCY": "30"}}
    docker = DeploySpec(pool="d", pool_type="docker", image="dv4d:1")
    assert job_variables(docker)["image"] == "dv4d:1"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"pool_type": "slurm"}, "unknown pool type"),
        ({"heartbeat_s": 10}, "at least 30"),
        ({"zombie_after_s": 30}, "must exceed"),
        ({"max_reruns": 0}, "at least 1"),
        ({"pool_type": "kubernetes"}, "needs --image"),
    ],
)
def test_spec_rejects_bad_values(kwargs: dict, message: str) -> None:
    with pytest.raises(DeployError, match=message):
        DeploySpec(pool="p", **kwargs)


def test_shards() -> None:
    assert list(shards(list(range(7)), 3)) == [[0, 1, 2], [3, 4, 5], [6]]
    assert list(shards([], 3)) == []
    assert shard_name(["a"]).startswith("a-") and shard_name(["a", "b", "c"]).startswith("a+2-")
    assert shard_name(["a", "b"]) != shard_name(["a", "c"])


def test_zombie_automation_crashes_silent_runs_of_its_deployment() -> None:
    dep = uuid4()
    auto = zombie_automation(dep, "dv4d-annotate/p", 90)
    trigger = auto.trigger.model_dump()
    assert trigger["posture"] == "Proactive" and trigger["within"] == timedelta(seconds=90)
    assert trigger["after"] == {"prefect.flow-run.heartbeat"}
    assert {"prefect.flow-run.heartbeat", "prefect.flow-run.Completed"} <= trigger["expect"]
    assert trigger["match_related"]["prefect.resource.id"] == f"prefect.deployment.{dep}"
    assert trigger["for_each"] == {"prefect.resource.id"}
    [action] = auto.actions
    assert action.type == "change-flow-run-state" and action.state == StateType.CRASHED


def test_reschedule_automation_is_bounded() -> None:
    dep = uuid4()
    auto = reschedule_automation(dep, "dv4d-annotate/p", 2)
    trigger = auto.trigger.model_dump()
    assert trigger["posture"] == "Reactive" and trigger["expect"] == {"prefect.flow-run.Crashed"}
    assert trigger["match"]["prefect.run-count"] == ["1", "2"]
    assert trigger["match_related"]["prefect.resource.id"] == f"prefect.deployment.{dep}"
    [action] = auto.actions
    assert action.state == StateType.SCHEDULED and action.name == "AwaitingRetry"


def flow_run(state: object) -> FlowRun:
    return FlowRun(flow_id=uuid4(), state=state)


def test_is_finished() -> None:
    assert not is_finished(flow_run(None))
    assert not is_finished(flow_run(Running()))
    assert is_finished(flow_run(Completed()))
    assert not is_finished(flow_run(Crashed()))  # the reschedule automation may still act
    old = Crashed()
    old.timestamp = datetime.now(UTC) - timedelta(seconds=RESCHEDULE_GRACE_S + 1)
    assert is_finished(flow_run(old))


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="dv4d")
    sub = parser.add_subparsers(dest="command", required=True)
    cmd_deploy.add_parser(sub)
    cmd_submit.add_parser(sub)
    return parser.parse_args(argv)


def test_usage_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    console = Console(file=None, quiet=True)
    with pytest.raises(UsageError, match="--shard-size"):
        cmd_submit.run(
            parse("submit", str(tmp_path), "--pool", "p", "-o", str(tmp_path), "--shard-size", "0"), console
        )
    with pytest.raises(UsageError, match="no video found"):
        cmd_submit.run(parse("submit", str(tmp_path), "--pool", "p", "-o", str(tmp_path / "out")), console)
    with pytest.raises(UsageError, match="needs --image"):
        cmd_deploy.run(parse("deploy", "--pool", "p", "--pool-type", "docker"), console)
    with pytest.raises(UsageError, match="--fps"):
        cmd_deploy.run(parse("deploy", "--pool", "p", "--fps", "-1"), console)


def test_server_problems_are_one_line_errors(tmp_path: Path) -> None:
    console = Console(file=None, quiet=True)
    with (
        temporary_settings(restore_defaults={PREFECT_API_URL}),
        pytest.raises(UsageError, match="PREFECT_API_URL"),
    ):
        cmd_deploy.run(parse("deploy", "--pool", "p"), console)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{s.getsockname()[1]}/api"
    with temporary_settings({PREFECT_API_URL: closed}), pytest.raises(UsageError, match="does not answer"):
        cmd_deploy.run(parse("deploy", "--pool", "p"), console)


def test_pending_hashes_only_claimed_results(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "out"
    videos = [tmp_path / f"{n}.mp4" for n in ("done", "changed", "other_config", "new")]
    for v in videos:
        v.write_bytes(v.name.encode())
    names = {v: v.stem for v in videos}
    config_hash = "c" * 64
    for v, sha, chash in (
        (videos[0], file_sha256(videos[0]), config_hash),
        (videos[1], "0" * 64, config_hash),
        (videos[2], file_sha256(videos[2]), "d" * 64),
    ):
        manifest = {"status": "complete", "config_hash": chash, "video": {"sha256": sha}}
        write_json(VideoArtifacts(out, names[v], config_hash).final("manifest.json"), manifest)
    hashed: list[Path] = []
    monkeypatch.setattr(cmd_submit, "file_sha256", lambda p: hashed.append(p) or file_sha256(p))
    todo, complete = cmd_submit.pending(videos, names, out, config_hash)
    assert todo == videos[1:] and complete == 1
    assert sorted(hashed) == sorted(videos[:2])
