"""Ctrl-C as a terminal sends it, SIGTERM as a scheduler does: the run stops, prints one line with the
resume command, keeps its checkpoints, and the rerun resumes.

The Ctrl-C case runs the CLI on a pseudo-terminal (its own session, the pty as its controlling
terminal) in Prefect's ephemeral mode, and sends SIGINT to the terminal's foreground process group
(``os.killpg(os.tcgetpgrp(fd))``), as the terminal driver does: the temporary Prefect server must not
be in that group (flows/ephemeral.py).  The commands run in a user's environment (``user_env``: none
of the suite's WANDB_MODE=disabled, telemetry or offline settings), so the checks for wandb and
telemetry noise can fail.  How fast a stop comes is bench/bench_interrupt.py's to measure (README's
performance table), not a test's: these check what happens.  Unit tests of
``openmind_core.interrupt`` first.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import REPO

sys.path.insert(0, str(REPO))
from bench.bench_interrupt import CONFIG as SMALL, Terminal, cli, steps_done, user_env  # noqa: E402

# ample for a stop that takes seconds: only a hang guard (the time is bench/bench_interrupt.py's)
HANG = 120


# --------------------------------------------------------------------------- unit: the stop flag


def test_deferred_stop_waits_for_the_step_boundary_then_raises():
    from openmind_core import interrupt

    interrupt.reset()
    interrupt.install()
    try:
        with interrupt.deferred():
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.05)  # the handler ran: only the flag is set
            assert interrupt.requested() == signal.SIGINT
            with pytest.raises(KeyboardInterrupt):
                interrupt.check()  # the step boundary
        assert interrupt.exit_code() == 130
    finally:
        interrupt.reset()
        for s in interrupt.SIGNALS:
            signal.signal(s, signal.default_int_handler if s == signal.SIGINT else signal.SIG_DFL)
        interrupt._state.installed = False


def test_deferred_stop_without_a_step_boundary_interrupts_after_the_grace(monkeypatch):
    from openmind_core import interrupt

    monkeypatch.setattr(interrupt, "GRACE", 0.2)
    interrupt.reset()
    interrupt.install()
    t0 = time.monotonic()
    finished = False
    try:
        with pytest.raises(KeyboardInterrupt), interrupt.deferred():
            os.kill(os.getpid(), signal.SIGTERM)
            assert interrupt.requested() == signal.SIGTERM  # only the flag so far
            while time.monotonic() - t0 < 60:  # a long evaluation: no check() ever comes
                time.sleep(0.01)
            finished = True
        assert not finished  # the grace timer interrupted it where it was
        assert interrupt.exit_code() == 143
    finally:
        interrupt.reset()
        for s in interrupt.SIGNALS:
            signal.signal(s, signal.default_int_handler if s == signal.SIGINT else signal.SIG_DFL)
        interrupt._state.installed = False


class _SlowItems:
    def __len__(self):
        return 8

    def __getitem__(self, i):
        time.sleep(0.3)
        return i


def test_loader_workers_outlive_a_group_stop_so_the_step_ends_at_its_boundary():
    """A terminal's Ctrl-C and torchrun's SIGTERM reach the loader workers too (the whole process group):
    with ``ignore_in_worker`` they keep serving the step in progress, and the loader yields every item."""
    from torch.utils.data import DataLoader

    from openmind_core import interrupt

    loader = DataLoader(_SlowItems(), batch_size=1, num_workers=2, worker_init_fn=interrupt.ignore_in_worker)
    batches = iter(loader)
    got = [int(next(batches))]
    for worker in batches._workers:  # the loader's own processes only (never the suite's Prefect server)
        os.kill(worker.pid, signal.SIGTERM)
    got += [int(item) for item in batches]
    assert got == list(range(8))


# --------------------------------------------------------------------------- end to end through the CLI


def _trained_steps(lake: Path, second: bool) -> int:
    """Step lines in the newest command log (``<lake>/logs/run-*.log``), once there are two logs if ``second``."""
    logs = sorted((lake / "logs").glob("run-*.log"))
    if len(logs) < (2 if second else 1):
        return 0
    return logs[-1].read_text(errors="replace").count("step ")


def _servers_of(parent: int, wait: float = 5.0) -> list[int]:
    """Pids of temporary servers (flows/ephemeral.py) started by ``parent`` still running after ``wait`` s."""
    deadline = time.monotonic() + wait
    while True:
        found = []
        for d in Path("/proc").iterdir():
            if d.name.isdigit():
                try:
                    argv = (d / "cmdline").read_bytes().split(b"\0")
                except OSError:
                    continue
                if b"flows.ephemeral" in argv and str(parent).encode() in argv:
                    found.append(int(d.name))
        if not found or time.monotonic() > deadline:
            return found
        time.sleep(0.2)


NOISE = ("Traceback", "Crash detected", "ConnectError", "Connection refused", "Error logging to API", "wandb:",
         "telemetry", "flash")


def _resumes(run_dir: Path) -> list[dict]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r.get("event") == "resume"]


def _newest_checkpoint(run_dir: Path) -> str:
    ckpts = sorted(p.name for p in (run_dir / "checkpoints").glob("step-*"))
    assert ckpts and ckpts[-1] != "step-00000000", ckpts
    return ckpts[-1]


@pytest.mark.slow
def test_ctrl_c_on_a_terminal_stops_the_run_and_the_rerun_resumes(prefect_server, tmp_path):
    lake = tmp_path / "lake"
    args = cli("run", *sum((["--set", s] for s in SMALL), []), "--run-name", "ctrlc", "--lake", str(lake))
    # a user's environment (wandb offline, as the config says; no telemetry settings); ephemeral Prefect:
    # no PREFECT_API_URL, the server it starts itself
    env = user_env(PREFECT_HOME=str(tmp_path / "prefect-home"))
    assert not {"WANDB_MODE", "WANDB_SILENT", "PREFECT_SERVER_ANALYTICS_ENABLED", "PREFECT_API_URL"} & set(env)
    metrics = lake / "runs" / "ctrlc" / "metrics.jsonl"
    term = Terminal(args, env)
    try:
        deadline = time.monotonic() + 400
        while time.monotonic() < deadline and steps_done(metrics) < 6 and term.wait(0) is None:
            time.sleep(0.05)
        assert steps_done(metrics) >= 6, term.text()[-3000:]
        term.ctrl_c()
        code = term.wait(HANG)
    finally:
        term.kill()
    out = term.text()
    assert code == 130, out[-3000:]
    # one line: how to resume; no traceback, no Prefect crash records, no connection errors, no wandb or
    # telemetry output
    stopped = [ln for ln in out.splitlines() if ln.startswith("openmind: stopped by Ctrl-C")]
    assert len(stopped) == 1, out[-3000:]
    assert "resume with:" in stopped[0] and "--run-name ctrlc" in stopped[0]
    for noise in NOISE:
        assert noise not in out, out[-3000:]
    # on a terminal: the training bar instead of per-step log lines
    assert "train:" in out and "%|" in out, out[-3000:]
    assert "step 3/" not in out
    run_dir = lake / "runs" / "ctrlc"
    assert list((run_dir / "wandb").glob("offline-run-*"))  # wandb ran (offline), quietly
    first = _newest_checkpoint(run_dir)
    assert f"newest checkpoint {first} kept" in stopped[0]
    assert not (run_dir / "report.json").exists()
    # the temporary server it started (in its own session) is gone with it
    assert not _servers_of(term.pid)
    logs = list((lake / "logs").glob("run-*.log"))
    assert logs and "stopped by SIGINT" in logs[0].read_text()

    # the rerun, stopped by SIGTERM to the CLI alone (as a scheduler does): the same, exit 143
    env2 = user_env(PREFECT_HOME=str(tmp_path / "prefect-home"), PREFECT_API_URL=prefect_server)
    proc = subprocess.Popen(args, cwd=REPO, env=env2, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and _trained_steps(lake, second=True) < 2 and proc.poll() is None:
            time.sleep(0.05)  # this run's own step lines (metrics.jsonl still has the first run's)
        proc.send_signal(signal.SIGTERM)
        out2, _ = proc.communicate(timeout=HANG)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 143, out2[-3000:]
    for noise in NOISE:
        assert noise not in out2, out2[-3000:]
    stopped = [ln for ln in out2.splitlines() if ln.startswith("openmind: stopped by SIGTERM")]
    assert len(stopped) == 1, out2[-3000:]
    newest = _newest_checkpoint(run_dir)
    assert f"newest checkpoint {newest} kept" in stopped[0]
    assert [r["step"] for r in _resumes(run_dir)] == [int(first.split("-")[1])]  # it had resumed from the first stop

    # and the rerun resumes from the newest checkpoint and finishes
    proc = subprocess.run(args, cwd=REPO, env=env2, capture_output=True, text=True, timeout=400)
    # exit 0: no criterion fails; this small run cannot measure the loss (one evaluation) nor the answers
    # (3 questions), and a CPU run not the 40 GB fit
    assert proc.returncode == 0, (proc.returncode, proc.stdout[-3000:], proc.stderr[-3000:])
    for noise in NOISE:
        assert noise not in proc.stdout + proc.stderr, (proc.stdout + proc.stderr)[-3000:]
    report = json.loads((run_dir / "report.json").read_text())
    assert report["passed"] is True
    assert [c["name"] for c in report["criteria"] if c["status"] == "not measured"] == [
        "Loss fell normally", "Inference generates text", "Training fits in 40 GB"]
    assert [c["status"] for c in report["criteria"]].count("pass") == 4
    assert report["training"]["resumed_from_step"] == int(newest.split("-")[1])
    assert report["training"]["epochs_completed"] == 2
