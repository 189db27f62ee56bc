"""Prefect's temporary server, started in its own session so that Ctrl-C does not kill it; or the configured one, checked.

With ``PREFECT_API_URL`` set (the environment or a profile), ``check_api()`` makes sure something
answers there before a command starts: a server that is down is one line naming the setting,
where it was set and how to go on, within seconds, instead of minutes of retries and a traceback.

Without ``PREFECT_API_URL`` Prefect starts a temporary ("ephemeral") API server as a child process
(``prefect.server.api.server.SubprocessASGIServer``).  That child shares the terminal's foreground
process group, so a Ctrl-C killed it together with the flow, and the flow's last API calls (the
Crashed state, the final logs) then retried for minutes against a dead server.  ``ensure_server()``
starts the same server the same way, but in a new session (no controlling terminal, so no Ctrl-C)
and registers it where Prefect looks for its ephemeral server: every client of this process uses it.

It still dies with this process: Prefect stops it at exit (atexit), and, were this process killed
with SIGKILL, the server notices its parent is gone (Linux: ``PR_SET_PDEATHSIG``; elsewhere a
1-second poll) and shuts down.  Run as ``python -m flows.ephemeral PARENT_PID UVICORN_ARGS...``
it is that server's entry point.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import threading
import time

from flows.preflight import UsageError


def check_api(timeout: float = 3.0) -> None:
    """A configured ``PREFECT_API_URL`` must answer (any HTTP reply will do): a ``UsageError`` naming the
    setting, where it comes from and how to go on, within ``timeout`` seconds, instead of Prefect's
    retries and its traceback."""
    # start-up cost: prefect and httpx load when a command runs a flow, never for a refused one
    import httpx
    from prefect.context import get_settings_context
    from prefect.settings import PREFECT_API_URL

    url = PREFECT_API_URL.value()
    if not url:
        return
    try:
        httpx.get(url.rstrip("/") + "/health", timeout=timeout)
        return
    except httpx.HTTPError:
        pass
    if os.environ.get("PREFECT_API_URL"):
        where, unset = "the environment variable", "`unset PREFECT_API_URL`"
    else:
        profile = get_settings_context().profile.name
        where, unset = f"Prefect profile {profile!r}", "`prefect config unset PREFECT_API_URL`"
    raise UsageError(f"no Prefect server answers at PREFECT_API_URL={url} (set by {where}): start it "
                     f"(`prefect server start --analytics-off`), or run without one: {unset}")


def ensure_server() -> str | None:
    """Start the temporary server in its own session unless an API URL is configured; its API URL."""
    # start-up cost: prefect loads when a command runs a flow, never for a refused one
    from prefect.settings import PREFECT_API_URL

    if PREFECT_API_URL.value():
        return None
    from prefect.server.api.server import SubprocessASGIServer  # start-up cost, as above

    class OwnSessionServer(SubprocessASGIServer):
        def _run_uvicorn_command(self) -> subprocess.Popen:
            import prefect  # start-up cost, as above
            from prefect.settings import get_current_settings

            env = {**os.environ, "PREFECT_UI_ENABLED": "0", "PREFECT__SERVER_EPHEMERAL": "1",
                   "PREFECT__SERVER_FINAL": "1", **get_current_settings().to_environment_variables(exclude_unset=True)}
            args = ["--app-dir", str(prefect.__module_path__.parent), "--factory",
                    "prefect.server.api.server:create_app", "--host", "127.0.0.1", "--port", str(self.port),
                    "--log-level", "error", "--lifespan", "on"]
            repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
            env["PYTHONPATH"] = os.pathsep.join(p for p in (repo, env.get("PYTHONPATH")) if p)
            return subprocess.Popen([sys.executable, "-m", "flows.ephemeral", str(os.getpid()), *args], env=env,
                                    start_new_session=True)

    existing = SubprocessASGIServer._instances.get(None)
    if existing is not None and existing.running:
        return existing.api_url
    server = OwnSessionServer()  # registered under port None: the instance Prefect's clients start and use
    server.start()
    return server.api_url


def _watch_parent(parent: int) -> None:
    """Stop this server (SIGTERM to itself: uvicorn's graceful shutdown) once ``parent`` is gone."""
    try:  # Linux: the kernel sends SIGTERM when the parent dies
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass

    def poll() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=poll, daemon=True, name="parent-watch").start()


if __name__ == "__main__":
    _watch_parent(int(sys.argv[1]))
    sys.argv = ["uvicorn", *sys.argv[2:]]
    from uvicorn.main import main as uvicorn_main

    uvicorn_main()
