"""A real ``prefect server start`` in a subprocess (free port, own PREFECT_HOME), for the operations tests.

The session's ``prefect_test_harness`` serves most tests; these need a server started the way the
README starts one: with an auth string, on PostgreSQL, with the automation services running.
Each start costs ~10 s here, so tests share one per module.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def client_env(api_url: str, home: Path, auth: str | None = None) -> dict[str, str]:
    """Environment for a client subprocess (CLI, flow) talking to ``api_url``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(PREFECT_API_URL=api_url, PREFECT_HOME=str(home), PREFECT_SERVER_ANALYTICS_ENABLED="false",
               PREFECT_LOGGING_EXTRA_LOGGERS="openmind_core", PREFECT_RESULTS_LOCAL_STORAGE_PATH=str(home / "results"))
    if auth:
        env["PREFECT_API_AUTH_STRING"] = auth
    return env


@contextmanager
def prefect_server(home: Path, auth: str | None = None, database_url: str | None = None, timeout: float = 180,
                   ui: bool = False):
    """Yield the API URL of a ``prefect server start`` subprocess (``ui``: with its web UI); stop it afterwards."""
    home.mkdir(parents=True, exist_ok=True)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(PREFECT_HOME=str(home), PREFECT_SERVER_ANALYTICS_ENABLED="false",
               PREFECT_SERVER_UI_ENABLED="true" if ui else "false", PREFECT_LOGGING_SERVER_LEVEL="WARNING")
    if auth:
        env["PREFECT_SERVER_API_AUTH_STRING"] = auth
    if ui:  # the UI calls the API where the browser can reach it: this port, not the default 4200
        env["PREFECT_UI_API_URL"] = f"http://127.0.0.1:{port}/api"
    if database_url:
        env["PREFECT_SERVER_DATABASE_CONNECTION_URL"] = database_url
    log = open(home / "server.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1",
                             "--port", str(port)], env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    api = f"http://127.0.0.1:{port}/api"
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"prefect server exited {proc.returncode}:\n{(home / 'server.log').read_text()[-3000:]}")
            try:
                if httpx.get(f"{api}/health", timeout=2).status_code in (200, 401):
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"prefect server not up in {timeout} s:\n{(home / 'server.log').read_text()[-3000:]}")
            time.sleep(0.5)
        yield api
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
