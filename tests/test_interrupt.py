"""Ctrl-C as a terminal sends it, SIGTERM as a scheduler does: the run stops within seconds, prints one
line with the resume command, keeps its checkpoints, and the rerun resumes.

The Ctrl-C case runs the CLI on a pseudo-terminal (its own session, the pty as its controlling
terminal) in Prefect's ephemeral mode, and sends SIGINT to the terminal's foreground process group
(``os.killpg(os.tcgetpgrp(fd))``), as the terminal driver does: the temporary Prefect server must not
be in that group (flows/ephemeral.py).  Unit tests of ``openmind_core.interrupt`` first.
"""

from __future__ import annotations

import json
import os
import pty
import fcntl
import signal
import struct
import subprocess
import termios
import sys
import threading
import time
from pathlib import Path

import pytest

from conftest import REPO

SMALL = [
    "data.synthetic.num_captions=48", "data.synthetic.num_vqa=24", "train.micro_batch_size=4", "train.epochs=2",
    "train.save_steps=4", "train.eval_steps=100", "train.log_every=1", "inference.max_samples=4",
    "inference.max_new_tokens=2",
]


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
    try:
        with pytest.raises(KeyboardInterrupt), interrupt.deferred():
            os.kill(os.getpid(), signal.SIGTERM)
            while time.monotonic() - t0 < 10:  # a long evaluation: no check() ever comes
                time.sleep(0.01)
        assert time.monotonic() - t0 < 5
        assert interrupt.exit_code() == 143
    finally:
        interrupt.reset()
        for s in interrupt.SIGNALS:
            signal.signal(s, signal.default_int_handler if s == signal.SIGINT else signal.SIG_DFL)
        interrupt._state.installed = False


# --------------------------------------------------------------------------- end to end through the CLI


def _steps(metrics: Path) -> int:
    if not metrics.exists():
        return 0
    steps = [json.loads(x).get("step", 0) for x in metrics.read_text().splitlines() if x.strip().startswith("{")]
    return max(steps, default=0)


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


class _Pty:
    """The CLI on a pseudo-terminal, as a user's terminal runs it; output collected in a thread."""

    def __init__(self, args: list[str], env: dict):
        self.out = bytearray()
        self.pid, self.fd = pty.fork()
        if self.pid == 0:  # the child: session leader, the pty its controlling terminal
            os.chdir(REPO)
            os.execve(sys.executable, [sys.executable, "-m", "flows.cli", *args], env)
        # a terminal's size (a new pty has 0 x 0, where tqdm draws nothing)
        fcntl.ioctl(self.fd, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 160, 0, 0))
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        while True:
            try:
                data = os.read(self.fd, 65536)
            except OSError:
                return
            if not data:
                return
            self.out += data

    def ctrl_c(self) -> None:
        os.killpg(os.tcgetpgrp(self.fd), signal.SIGINT)  # what the terminal does on ^C

    def wait(self, timeout: float) -> int | None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.reader.join(timeout=5)
                return os.waitstatus_to_exitcode(status)
            time.sleep(0.05)
        return None

    def kill(self) -> None:
        try:
            os.killpg(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def text(self) -> str:
        return self.out.decode("utf-8", "replace").replace("\r\n", "\n")


@pytest.mark.slow
def test_ctrl_c_on_a_terminal_stops_within_5_s_and_the_rerun_resumes(prefect_server, tmp_path):
    lake = tmp_path / "lake"
    args = ["run", *sum((["--set", s] for s in SMALL), []), "--run-name", "ctrlc", "--lake", str(lake)]
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}  # ephemeral: the server it starts itself
    env["PREFECT_HOME"] = str(tmp_path / "prefect-home")
    metrics = lake / "runs" / "ctrlc" / "metrics.jsonl"
    term = _Pty(args, env)
    try:
        deadline = time.monotonic() + 400
        while time.monotonic() < deadline and _steps(metrics) < 6 and term.wait(0) is None:
            time.sleep(0.05)
        assert _steps(metrics) >= 6, term.text()[-3000:]
        t0 = time.monotonic()
        term.ctrl_c()
        code = term.wait(30)
        took = time.monotonic() - t0
    finally:
        term.kill()
    out = term.text()
    assert code == 130, out[-3000:]
    assert took < 5, f"took {took:.1f} s to stop:\n{out[-3000:]}"
    # one line: how to resume; no traceback, no Prefect crash records, no connection errors
    stopped = [ln for ln in out.splitlines() if ln.startswith("openmind: stopped by Ctrl-C")]
    assert len(stopped) == 1, out[-3000:]
    assert "resume with:" in stopped[0] and "--run-name ctrlc" in stopped[0]
    for noise in ("Traceback", "Crash detected", "ConnectError", "Connection refused", "Error logging to API",
                  "wandb:", "telemetry", "flash"):
        assert noise not in out, out[-3000:]
    # on a terminal: the training bar instead of per-step log lines
    assert "train:" in out and "%|" in out, out[-3000:]
    assert "step 3/" not in out
    run_dir = lake / "runs" / "ctrlc"
    ckpts = sorted(p.name for p in (run_dir / "checkpoints").glob("step-*"))
    assert ckpts and ckpts[-1] != "step-00000000", ckpts
    assert f"newest checkpoint {ckpts[-1]} kept" in stopped[0]
    assert not (run_dir / "report.json").exists()
    # the temporary server it started (in its own session) is gone with it
    assert not _servers_of(term.pid)
    logs = list((lake / "logs").glob("run-*.log"))
    assert logs and "stopped by SIGINT" in logs[0].read_text()

    # the rerun, stopped by SIGTERM to the CLI alone (as a scheduler does): the same, exit 143
    env2 = dict(os.environ, PREFECT_API_URL=prefect_server)
    resumed_from = int(ckpts[-1].split("-")[1])
    proc = subprocess.Popen([sys.executable, "-m", "flows.cli", *args], cwd=REPO, env=env2, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and _trained_steps(lake, second=True) < 2 and proc.poll() is None:
            time.sleep(0.05)  # this run's own step lines (metrics.jsonl still has the first run's)
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        out2, _ = proc.communicate(timeout=30)
        took = time.monotonic() - t0
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 143, out2[-3000:]
    assert took < 5, f"took {took:.1f} s to stop:\n{out2[-3000:]}"
    assert "Traceback" not in out2, out2[-3000:]
    assert len([ln for ln in out2.splitlines() if ln.startswith("openmind: stopped by SIGTERM")]) == 1, out2[-3000:]

    # and the rerun resumes from the newest checkpoint and finishes
    proc = subprocess.run([sys.executable, "-m", "flows.cli", *args], cwd=REPO, env=env2, capture_output=True,
                          text=True, timeout=400)
    assert proc.returncode in (0, 1), proc.stderr[-3000:]  # 1: a criterion of the tiny run not met
    report = json.loads((run_dir / "report.json").read_text())
    assert report["training"]["resumed_from_step"] >= resumed_from
    assert report["training"]["epochs_completed"] == 2
