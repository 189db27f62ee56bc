"""Launch a module under torchrun as a subprocess, streaming its output line by line.

``run_torchrun("openmind_core.some_entry", ["--config", path], nproc=2, on_line=logger.info)``
runs ``python -m torch.distributed.run --standalone --nproc_per_node 2 -m <module> <args...>`` in
its own process group, passes every output line (stdout and stderr merged) to ``on_line``, and
returns the exit code (124 on timeout, like ``timeout(1)``).  On timeout it sends SIGTERM (torchrun
forwards it to its workers), waits ``grace_s``, then SIGKILLs torchrun's group and every descendant
(torchrun starts each worker in a session of its own, so killing the group alone misses them).  A
stop the caller was asked for (``stop``: Ctrl-C, SIGTERM) is forwarded the same way, with time for
the workers to reach a step boundary.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable

log = logging.getLogger(__name__)

TIMEOUT_EXIT = 124


def _descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (Linux /proc; empty elsewhere)."""
    children: dict[int, list[int]] = {}
    try:
        entries = os.listdir("/proc")
    except OSError:
        return []
    for e in entries:
        if not e.isdigit():
            continue
        try:
            with open(f"/proc/{e}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(e))
    out, todo = [], [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            out.append(c)
            todo.append(c)
    return out


def _signal_all(pid: int, sig: int, extra: list[int]) -> None:
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass
    for p in extra:
        try:
            os.kill(p, sig)
        except (ProcessLookupError, PermissionError):
            pass


def torchrun_command(module: str, args: list[str], nproc: int) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
            "-m", module, *args]


def run_torchrun(module: str, args: list[str], nproc: int, on_line: Callable[[str], None],
                 timeout_s: float | None = None, env: dict[str, str] | None = None, grace_s: float = 5.0,
                 stop: Callable[[], int | None] | None = None, stop_grace_s: float = 60.0) -> int:
    """Run ``module`` under torchrun with ``nproc`` processes; returns its exit code.

    ``stop``: polled while it runs; once it returns a signal number (a Ctrl-C or SIGTERM the caller
    received), that signal is forwarded to torchrun, which sends SIGTERM to its workers (they stop at
    a step boundary, ``openmind_core.interrupt``); after ``stop_grace_s`` whatever is left is killed."""
    if nproc < 1:
        raise ValueError(f"nproc must be >= 1 (got {nproc})")
    cmd = torchrun_command(module, args, nproc)
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1,
                            env=full_env, start_new_session=True)
    timed_out = threading.Event()

    def _kill() -> None:
        timed_out.set()
        tree = _descendants(proc.pid)
        _signal_all(proc.pid, signal.SIGTERM, tree)
        try:
            proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            pass
        _signal_all(proc.pid, signal.SIGKILL, tree + _descendants(proc.pid))

    timer = threading.Timer(timeout_s, _kill) if timeout_s else None
    if timer:
        timer.daemon = True
        timer.start()
    done = threading.Event()

    def _forward() -> None:  # the caller was asked to stop: torchrun passes it on to its workers
        while not done.wait(0.2):
            signum = stop()
            if signum is None:
                continue
            log.info("forwarding %s to torchrun (its workers stop at the next step boundary)",
                     signal.Signals(signal.SIGTERM if signum == signal.SIGINT else signum).name)
            try:
                os.kill(proc.pid, signal.SIGTERM)  # torchrun's agent turns it into SIGTERM to every worker
            except ProcessLookupError:
                return
            if not done.wait(stop_grace_s):
                _signal_all(proc.pid, signal.SIGKILL, _descendants(proc.pid))
            return

    if stop is not None:
        threading.Thread(target=_forward, name="torchrun-stop", daemon=True).start()
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            on_line(line.rstrip("\n"))
        rc = proc.wait()
    finally:
        done.set()
        if timer:
            timer.cancel()
        if proc.poll() is None:
            _kill()
        proc.wait()
    if timed_out.is_set():
        log.error("torchrun %s timed out after %.0f s; process group killed", module, timeout_s)
        return TIMEOUT_EXIT
    return rc
