"""Scale-out end to end: a real ``prefect server start`` on loopback, real ``prefect worker start``
processes, ``dv4d deploy`` and ``dv4d submit`` of three synthetic videos.

1. Uninterrupted: every video completes; resubmitting while runs are live or after they finished
   creates no flow run.
2. Node loss: the worker and its flow-run process are killed with SIGKILL in the middle of the batch
   (one video done, the next in progress) and another worker is started. The zombie automation marks
   the silent run ``Crashed``, the reschedule automation schedules it again, the new worker resumes it,
   and the outputs equal those of the uninterrupted run.

Slow (minutes on 2 busy cores: the zombie guard waits for missing 30 s heartbeats): ``-m "not slow"``
deselects it. Every process started here is killed at the end, whatever happens.
"""

import argparse
import contextvars
import io
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from uuid import UUID

import numpy as np
import psutil
import pytest
from prefect import get_client
from prefect.client.schemas.filters import FlowRunFilter
from prefect.client.schemas.objects import FlowRun
from prefect.settings import PREFECT_API_URL, temporary_settings
from rich.console import Console

from dv4d.flows import cmd_deploy, cmd_submit
from dv4d.flows.deploy import all_flow_runs, is_finished
from dv4d.pipeline.synthetic import SceneConfig, render_scene, write_video

pytestmark = pytest.mark.slow

POOL = "dv4d-it"
NAMES = ("a", "b", "c")
W, H, F = 96, 72, 10
INTRINSICS = f"{0.9 * W},{0.9 * W},{(W - 1) / 2},{(H - 1) / 2}"
"""The synthetic camera (known intrinsics keep the classical geometry stage fast)."""
PREFECT = str(Path(sys.executable).parent / "prefect")
TIMEOUT_S = 420.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Cluster:
    """A Prefect server and workers on loopback, all started as separate processes."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.url = f"http://127.0.0.1:{free_port()}/api"
        self.env = {
            **os.environ,
            "PREFECT_HOME": str(root / "prefect-home"),
            "PREFECT_API_URL": self.url,
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "DO_NOT_TRACK": "1",
            "PREFECT_UI_ENABLED": "false",
            "PREFECT_LOGGING_LEVEL": "INFO",
            "PREFECT_WORKER_QUERY_SECONDS": "2",
            "OMP_NUM_THREADS": "1",
            "MKL_NUM_THREADS": "1",
            "OPENBLAS_NUM_THREADS": "1",
        }
        self.logs: list[Path] = []
        self.server: subprocess.Popen[bytes] | None = None
        self.workers: dict[str, subprocess.Popen[bytes]] = {}

    def spawn(self, name: str, *args: str) -> subprocess.Popen[bytes]:
        log = self.root / f"{name}.log"
        self.logs.append(log)
        with log.open("wb") as f:
            return subprocess.Popen(
                [PREFECT, *args], env=self.env, stdout=f, stderr=subprocess.STDOUT, start_new_session=True
            )

    def start_server(self) -> None:
        port = self.url.split(":")[-1].split("/")[0]
        self.server = self.spawn("server", "server", "start", "--host", "127.0.0.1", "--port", port)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.server.poll() is not None:
                pytest.fail(f"prefect server exited with {self.server.returncode}\n{self.tails()}")
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=2) as answer:
                    if answer.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.5)
        pytest.fail(f"prefect server did not answer within 120 s\n{self.tails()}")

    def start_worker(self, name: str) -> None:
        self.workers[name] = self.spawn(
            name, "worker", "start", "--pool", POOL, "--limit", "1", "--name", name
        )

    def kill_node(self, name: str) -> int:
        """SIGKILL a worker and its flow-run processes at once, as a node crash would; returns how many
        flow-run processes died with it."""
        worker = self.workers.pop(name)
        children = psutil.Process(worker.pid).children(recursive=True)
        for proc in [psutil.Process(worker.pid), *children]:
            proc.kill()
        worker.wait()
        psutil.wait_procs(children, timeout=10)
        return len(children)

    def ours(self) -> list[psutil.Process]:
        """Every process started for this cluster (they carry its unique API URL)."""
        found = []
        for proc in psutil.process_iter():
            try:
                if proc.pid != os.getpid() and proc.environ().get("PREFECT_API_URL") == self.url:
                    found.append(proc)
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                continue
        return found

    def stop(self) -> None:
        procs = self.ours()
        for proc in procs:
            try:
                proc.send_signal(signal.SIGKILL)
            except psutil.NoSuchProcess:
                continue
        psutil.wait_procs(procs, timeout=10)
        if self.server is not None:
            self.server.wait(timeout=10)

    def tails(self, lines: int = 30) -> str:
        parts = []
        for log in self.logs:
            text = log.read_text(errors="replace").splitlines() if log.exists() else []
            parts.append(f"--- {log.name} ---\n" + "\n".join(text[-lines:]))
        return "\n".join(parts)


def dv4d(*argv: str) -> tuple[int, str]:
    """Run ``dv4d deploy`` / ``dv4d submit`` in this process; returns the exit code and the output."""
    parser = argparse.ArgumentParser(prog="dv4d")
    sub = parser.add_subparsers(dest="command", required=True)
    commands = {"deploy": cmd_deploy, "submit": cmd_submit}
    for module in commands.values():
        module.add_parser(sub)
    args = parser.parse_args(argv)
    buffer = io.StringIO()
    code = commands[args.command].run(args, Console(file=buffer, width=200))
    return code, buffer.getvalue()


def runs_into(out: Path) -> list[FlowRun]:
    with get_client(sync_client=True) as c:
        return [r for r in all_flow_runs(c, FlowRunFilter()) if r.parameters.get("out") == str(out)]


def wait_until(cluster: Cluster, what: str, done: Callable[[], bool], poll_s: float = 1.0) -> None:
    deadline = time.monotonic() + TIMEOUT_S
    while not done():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {TIMEOUT_S:.0f} s waiting for {what}\n{cluster.tails()}")
        time.sleep(poll_s)


def wait_finished(cluster: Cluster, out: Path) -> list[FlowRun]:
    wait_until(cluster, f"the runs into {out.name}", lambda: all(is_finished(r) for r in runs_into(out)))
    return runs_into(out)


def status(out: Path, name: str) -> str | None:
    path = out / name / "manifest.json"
    return json.loads(path.read_text())["status"] if path.exists() else None


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    cluster = Cluster(tmp_path_factory.mktemp("cluster"))
    try:
        cluster.start_server()
        with temporary_settings({PREFECT_API_URL: cluster.url}):
            yield cluster
    finally:
        cluster.stop()
    assert not cluster.ours()


@pytest.fixture(scope="module")
def videos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("videos")
    for seed, name in enumerate(NAMES, start=1):
        scene = render_scene(SceneConfig(width=W, height=H, num_frames=F, seed=seed))
        write_video(scene.frames, folder / f"{name}.mp4", fps=10.0)
    return folder


@pytest.fixture(scope="module")
def deployed(cluster: Cluster) -> str:
    code, text = dv4d(
        "deploy", "--pool", POOL, "--preset", "classical", "--device", "cpu", "--intrinsics", INTRINSICS,
        "--zombie-after", "45",
    )  # fmt: skip
    assert code == 0, text
    assert f"dv4d-annotate/{POOL}" in text
    return text


@pytest.fixture(scope="module")
def uninterrupted(
    cluster: Cluster, videos: Path, deployed: str, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    out = tmp_path_factory.mktemp("out-uninterrupted")
    code, text = dv4d("submit", str(videos), "--pool", POOL, "-o", str(out), "--shard-size", "2")
    assert code == 0 and "3 submitted in 2 flow runs" in text, text
    code, text = dv4d("submit", str(videos), "--pool", POOL, "-o", str(out), "--shard-size", "2")
    assert code == 0 and "3 in live flow runs, 0 submitted" in text, text
    cluster.start_worker("worker-a")
    # `submit --wait` again: nothing new to submit, it follows the two live runs to their end.
    waited: dict[str, tuple[int, str]] = {}
    settings = contextvars.copy_context()  # the thread sees this test's server
    argv = ("submit", str(videos), "--pool", POOL, "-o", str(out), "--shard-size", "2", "--wait")
    follow = threading.Thread(target=lambda: waited.update(result=settings.run(dv4d, *argv)), daemon=True)
    follow.start()
    follow.join(TIMEOUT_S)
    assert "result" in waited, (
        f"`dv4d submit --wait` still waiting after {TIMEOUT_S:.0f} s\n{cluster.tails()}"
    )
    code, text = waited["result"]
    assert code == 0, text
    for name in NAMES:  # the summary table: one row per video
        assert re.search(rf"│ {name}\s+│ complete\s+│ {F}\s", text), text
    runs = runs_into(out)
    assert [r.state.name if r.state else None for r in runs] == ["Completed", "Completed"], cluster.tails()
    return out


def test_uninterrupted_batch_completes_once(uninterrupted: Path, videos: Path) -> None:
    assert [status(uninterrupted, n) for n in NAMES] == ["complete"] * 3
    code, text = dv4d("submit", str(videos), "--pool", POOL, "-o", str(uninterrupted))
    assert code == 0 and "3 already complete" in text and "0 submitted" in text, text
    assert len(runs_into(uninterrupted)) == 2


def strip_timings(value: Any) -> Any:
    """JSON without wall-clock fields (the only part of the outputs that may differ between runs)."""
    if isinstance(value, dict):
        return {k: strip_timings(v) for k, v in value.items() if k != "seconds"}
    if isinstance(value, list):
        return [strip_timings(v) for v in value]
    return value


def assert_same_outputs(got: Path, want: Path) -> None:
    files = sorted(p.name for p in want.iterdir())
    assert sorted(p.name for p in got.iterdir()) == files
    for name in files:
        a, b = got / name, want / name
        if name.endswith(".json"):
            assert strip_timings(json.loads(a.read_text())) == strip_timings(json.loads(b.read_text())), a
        elif name.endswith(".npy"):
            np.testing.assert_array_equal(np.load(a), np.load(b), err_msg=str(a))
        elif name.endswith(".npz"):
            with np.load(a) as za, np.load(b) as zb:
                assert sorted(za.files) == sorted(zb.files)
                for key in za.files:
                    np.testing.assert_array_equal(za[key], zb[key], err_msg=f"{a}:{key}")
        else:
            assert a.read_bytes() == b.read_bytes(), a


def test_node_loss_mid_batch_resumes_on_another_worker(
    cluster: Cluster, videos: Path, uninterrupted: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    out = tmp_path_factory.mktemp("out-killed")
    code, text = dv4d("submit", str(videos), "--pool", POOL, "-o", str(out), "--shard-size", "3")
    assert code == 0 and "3 submitted in 1 flow runs" in text, text
    [run] = runs_into(out)
    # worker-a (from the uninterrupted batch) takes the run; kill its node once the first video is
    # complete and the second has started (a small video may complete within the polling interval:
    # the batch is still mid-way as long as the last one has not).
    second_log = lambda: any((out / "_logs").glob(f"{NAMES[1]}-*.log"))  # noqa: E731
    wait_until(
        cluster,
        "the second video to start",
        lambda: status(out, NAMES[0]) == "complete" and second_log(),
        poll_s=0.05,
    )
    assert status(out, NAMES[2]) is None
    killed_flow_processes = cluster.kill_node("worker-a")
    assert killed_flow_processes >= 1
    cluster.start_worker("worker-b")

    [finished] = wait_finished(cluster, out)
    assert finished.id == run.id and finished.state is not None and finished.state.is_completed(), (
        cluster.tails()
    )
    assert finished.run_count >= 2
    with get_client(sync_client=True) as c:
        history = [s.name for s in c.read_flow_run_states(UUID(str(run.id)))]
    assert "Crashed" in history and "AwaitingRetry" in history, history
    for name in NAMES:
        assert_same_outputs(out / name, uninterrupted / name)
