"""The local Prefect API server of ``dv4d annotate`` ends with the run, even when the run is SIGKILLed."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dv4d.pipeline.synthetic import SceneConfig, render_scene, write_video

pytestmark = pytest.mark.slow

DV4D = Path(sys.executable).with_name("dv4d")
SERVER = b"prefect.server.api.server:create_app"


def children(pid: int) -> dict[int, bytes]:
    """{pid: command line} of the live processes whose parent is ``pid``."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            if int(fields[1]) == pid and fields[0] != "Z":
                found[int(entry.name)] = (entry / "cmdline").read_bytes()
        except (OSError, IndexError):
            continue  # the process ended while being read
    return found


def alive(pid: int) -> bool:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return False
    return fields[0] != "Z"


def wait_for(condition: "object", timeout: float) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if condition():  # type: ignore[operator]
            return True
        time.sleep(0.1)
    return False


@pytest.fixture(scope="module")
def video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("video") / "clip.mp4"
    scene = render_scene(SceneConfig(width=96, height=72, num_frames=40, seed=3, supersample=1))
    write_video(scene.frames, path, fps=10.0)
    return path


def annotate(video: Path, out: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [str(DV4D), "annotate", str(video), "-o", str(out), "--preset", "classical", "-q"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
        env={**os.environ, "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "300"},
    )


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc")
def test_server_stops_when_the_run_is_killed(video: Path, tmp_path: Path) -> None:
    proc = annotate(video, tmp_path / "out")
    servers: list[int] = []

    def server_started() -> bool:
        servers[:] = [p for p, cmd in children(proc.pid).items() if SERVER in cmd]
        return bool(servers) or proc.poll() is not None

    assert wait_for(server_started, 300) and servers, "no local Prefect server seen"
    time.sleep(0.2)  # the watchdog learns the server's pid within 10 ms of its start
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert wait_for(lambda: not alive(servers[0]), 30), "the local Prefect server outlived the killed run"


def test_nothing_left_after_a_normal_run(video: Path, tmp_path: Path) -> None:
    proc = annotate(video, tmp_path / "out")
    seen: dict[int, bytes] = {}

    def finished() -> bool:
        seen.update(children(proc.pid))
        return proc.poll() is not None

    assert wait_for(finished, 600)
    assert proc.returncode == 0 and seen
    assert wait_for(lambda: not any(alive(p) for p in seen), 30), "processes of the run outlived it"
