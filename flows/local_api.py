"""The local Prefect API of ``dv4d annotate``, stopped however the run ends.

Without ``PREFECT_API_URL`` a flow run talks to Prefect's ephemeral API server, a subprocess that
Prefect stops at a normal interpreter exit only: a ``kill -9`` (or the OOM killer) of the run leaves it
serving forever. ``start_local_api`` starts a tiny watchdog process first, in a session of its own (a
Ctrl-C of the terminal does not reach it), then the server, and hands the server's pid to the watchdog
the moment the server process exists; the watchdog stops the server as soon as this process is gone,
whatever the cause.
"""

import subprocess
import sys
import threading
import time

WATCHDOG = """
import os, select, signal, sys, time
parent, server = os.getppid(), None
while os.getppid() == parent:
    if server is None and select.select([sys.stdin], [], [], 0.2)[0]:
        line = sys.stdin.readline()
        server = int(line) if line.strip() else server
    else:
        time.sleep(0.2)
if server is not None:
    try:
        os.kill(server, signal.SIGTERM)
    except ProcessLookupError:
        pass
"""
"""Reads the server's pid from stdin and polls its parent; once re-parented (the parent ended), sends
SIGTERM to the server."""


def start_local_api() -> int | None:
    """Start Prefect's ephemeral API server under a watchdog; the server's pid, or None when
    ``PREFECT_API_URL`` names a server (nothing to start). The flow's client later finds this same
    server (Prefect keeps one per process)."""
    from prefect.server.api.server import SubprocessASGIServer
    from prefect.settings import PREFECT_API_URL

    if PREFECT_API_URL.value():
        return None
    watchdog = subprocess.Popen(
        [sys.executable, "-c", WATCHDOG],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    server = SubprocessASGIServer()
    errors: list[BaseException] = []

    def start() -> None:
        try:
            server.start()
        except BaseException as exc:  # re-raised in the calling thread
            errors.append(exc)

    starter = threading.Thread(target=start, name="dv4d-local-api")
    starter.start()
    while server.server_process is None and starter.is_alive():
        time.sleep(0.01)
    if server.server_process is not None and watchdog.stdin is not None:
        watchdog.stdin.write(f"{server.server_process.pid}\n".encode())
        watchdog.stdin.flush()
    starter.join()
    if errors:
        raise errors[0]
    if server.server_process is None:
        raise RuntimeError("Prefect's local API server did not start")
    return server.server_process.pid
