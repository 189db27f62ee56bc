"""Automatic resumes of a crashed run, counted in its run directory, and the lock that keeps one process per run.

A run started from a self-healing deployment that crashes is started again by an automation
(``automations/resume-crashed.yaml``) with the same parameters and ``auto_resume_of`` naming the
crashed flow run.  ``admit(run_dir, crashed, flow_run, limit)`` decides whether it may go on:

* ``<run>/auto_resumes.jsonl`` holds one line per start of the run: ``{"kind": "start"}`` for a
  start by hand (the CLI, ``prefect deployment run``, a schedule) and ``{"kind": "auto_resume",
  "attempt", "crashed_flow_run", ...}`` for an automatic one.  The automatic resumes since the last
  start by hand are counted; past ``limit`` (``run.max_auto_resumes``, default 3) the resume is
  refused (``AutoResumeRefused``: the flow run fails, which crashes nothing, so the loop stops).
  The same crashed flow run admitted twice (a retried flow run) counts once.
* an admitted resume is also an ``auto_resume`` event line in ``metrics.jsonl`` (at the step of the
  newest checkpoint, so the trainer's resume keeps it), besides the Prefect event and the report
  line that the flow adds.

``hold(run_dir)`` holds an exclusive ``flock`` on ``<run>/.lock`` while a run works in the
directory: a second process (a run taken for dead that is in fact alive, a user's rerun while the
scheduled one trains) is refused at once instead of writing the same checkpoints.  The kernel
drops the lock when the holder dies, SIGKILL included, so a crashed run never leaves it behind.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator

from openmind_core.run_layout import AUTO_RESUMES_FILE, LOCK_FILE, METRICS_FILE, STEP_RE, checkpoint_dirs
from schemas import ConfigError


class AutoResumeRefused(ConfigError):
    """The run was resumed automatically ``limit`` times already: one line saying so and what to do."""


class RunDirBusy(ConfigError):
    """Another live process works in this run directory."""


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def read_ledger(run_dir: str | Path) -> list[dict]:
    """The run's starts, oldest first (a torn last line, left by a crash, is skipped)."""
    path = Path(run_dir) / AUTO_RESUMES_FILE
    out = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError:
        return []
    for line in lines:
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if isinstance(rec, dict):
            out.append(rec)
    return out


def _append(run_dir: Path, record: dict) -> None:
    path = run_dir / AUTO_RESUMES_FILE
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(record, sort_keys=True) + "\n")
        fh.flush()
        os.fsync(fh.fileno())


def since_last_start(ledger: list[dict]) -> list[dict]:
    """The automatic resumes after the last start by hand."""
    last = max((i for i, r in enumerate(ledger) if r.get("kind") == "start"), default=-1)
    return [r for r in ledger[last + 1:] if r.get("kind") == "auto_resume"]


def record_start(run_dir: str | Path, flow_run: str | None = None) -> None:
    """A start by hand: the count of automatic resumes begins again."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    _append(run_dir, {"kind": "start", "flow_run": flow_run, "time": _now()})


def newest_step(run_dir: str | Path) -> int:
    """The step of the newest checkpoint (0 when there is none)."""
    for ck in checkpoint_dirs(run_dir):
        m = STEP_RE.match(ck.name)
        if m:
            return int(m.group(1))
    return 0


def admit(run_dir: str | Path, crashed: str, flow_run: str | None, limit: int) -> dict:
    """Admit an automatic resume of ``crashed`` (a flow run id) as flow run ``flow_run``; returns its
    record (``attempt``, ``max``, ``from_step``, ...).  Raises ``AutoResumeRefused`` past ``limit``."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    done = since_last_start(read_ledger(run_dir))
    for rec in done:
        if rec.get("crashed_flow_run") == crashed:
            return rec  # this crash was admitted already (the resuming flow run is being retried)
    if len(done) >= limit:
        raise AutoResumeRefused(
            f"run {run_dir.name} crashed and was resumed automatically {len(done)} time(s) "
            f"(run.max_auto_resumes {limit}): not resuming it again after flow run {crashed}; "
            f"see {run_dir / AUTO_RESUMES_FILE}, fix the cause, then rerun it by hand with the same run name")
    rec = {"kind": "auto_resume", "attempt": len(done) + 1, "max": limit, "crashed_flow_run": crashed,
           "flow_run": flow_run, "from_step": newest_step(run_dir), "time": _now()}
    _append(run_dir, rec)
    event = {"event": "auto_resume", "step": rec["from_step"],
             **{k: rec[k] for k in ("attempt", "max", "crashed_flow_run", "flow_run", "time")}}
    with open(run_dir / METRICS_FILE, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(event) + "\n")
    return rec


def auto_resumes(run_dir: str | Path) -> list[dict]:
    """The automatic resumes since the last start by hand (for the report)."""
    return since_last_start(read_ledger(run_dir))


@contextmanager
def hold(run_dir: str | Path) -> Iterator[Path]:
    """Hold ``<run>/.lock`` (``flock``, exclusive) for the block; ``RunDirBusy`` if a live process has it."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / LOCK_FILE
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode("utf-8", "replace").strip() or "another process"
            raise RunDirBusy(f"run directory {run_dir} is in use by {holder}: a run of this name is still "
                             f"working; wait for it to end, or use another --run-name") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
        yield run_dir
    finally:
        os.close(fd)  # releases the lock


def check_free(run_dir: str | Path) -> None:
    """``RunDirBusy`` when a live process holds the run directory (checked and released at once)."""
    if (Path(run_dir) / LOCK_FILE).exists():
        with hold(run_dir):
            pass
