"""How fast ``openmind run`` stops during training: Ctrl-C on a terminal, and SIGTERM from a scheduler.

README says a stop comes within a few seconds: training stops at the next step boundary (after at
most ``interrupt.GRACE`` = 3 s it stops where it is), then the command records the run's end and
exits (130 for Ctrl-C, 143 for SIGTERM).  This measures it as a user meets it, in a user's
environment (none of the test suite's settings): the CLI on a pseudo-terminal in Prefect's ephemeral
mode, Ctrl-C sent to the terminal's foreground process group once training has taken a few steps,
the time from the signal to the command's exit; then the rerun (which resumes) stopped by SIGTERM to
the CLI alone.  Baseline: one training step of the same run (the median ``step_time`` of its
metrics.jsonl), since a stop first waits for a step boundary.  Goal: the stop within 5 s.

tests/test_interrupt.py drives the same ``Terminal`` and checks the behaviour (exit code, one line
with the resume command, the newest checkpoint kept), never the time.

    python bench/bench_interrupt.py [--quick]
"""

from __future__ import annotations

import fcntl
import json
import os
import pty
import signal
import statistics
import struct
import subprocess
import sys
import tempfile
import termios
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

GOAL_S = 5.0
CONFIG = ["data.synthetic.num_captions=48", "data.synthetic.num_vqa=24", "train.micro_batch_size=4", "train.epochs=2",
          "train.save_steps=4", "train.eval_steps=100", "train.log_every=1", "inference.max_samples=4",
          "inference.max_new_tokens=2"]
# what the test suite or a CI job sets and a user's shell does not: a stop measured without them
NOT_A_USERS = ("PREFECT_", "WANDB_", "OPENMIND_", "HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE",
               "TOKENIZERS_PARALLELISM", "DO_NOT_TRACK")


def user_env(base: dict[str, str] | None = None, **extra: str) -> dict[str, str]:
    """``base`` (default: this process's environment) without what a test run or CI sets, plus ``extra``."""
    env = {k: v for k, v in (os.environ if base is None else base).items() if not k.startswith(NOT_A_USERS)}
    env.update(extra)
    return env


class Terminal:
    """A command on a pseudo-terminal, as a user's terminal runs it (its own session, the pty its
    controlling terminal); its output collected in a thread."""

    def __init__(self, argv: list[str], env: dict[str, str], cwd: str | Path = ROOT):
        self.out = bytearray()
        self.pid, self.fd = pty.fork()
        if self.pid == 0:  # the child: session leader, the pty its controlling terminal
            os.chdir(cwd)
            os.execve(argv[0], argv, env)
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

    def ctrl_c(self) -> float:
        """What the terminal does on ^C: SIGINT to its foreground process group.  Returns when it was sent."""
        os.killpg(os.tcgetpgrp(self.fd), signal.SIGINT)
        return time.monotonic()

    def wait(self, timeout: float) -> int | None:
        """The exit code, or None if the command still runs after ``timeout`` s."""
        deadline = time.monotonic() + timeout
        while True:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.ended = time.monotonic()
                self.reader.join(timeout=5)
                return os.waitstatus_to_exitcode(status)
            if time.monotonic() >= deadline:
                return None
            time.sleep(0.02)

    def kill(self) -> None:
        try:
            os.killpg(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def text(self) -> str:
        return self.out.decode("utf-8", "replace").replace("\r\n", "\n")


def steps_done(metrics: Path) -> int:
    """The highest step in a metrics.jsonl (0 if none yet)."""
    if not metrics.exists():
        return 0
    steps = [json.loads(x).get("step", 0) for x in metrics.read_text().splitlines() if x.strip().startswith("{")]
    return max(steps, default=0)


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "flows.cli", *args]


def measure(quick: bool = False) -> dict:
    """One Ctrl-C stop and one SIGTERM stop of a training run; seconds from each signal to the exit."""
    with tempfile.TemporaryDirectory(prefix="bench-interrupt-") as tmp:
        lake = Path(tmp) / "lake"
        args = cli("run", *sum((["--set", s] for s in CONFIG), []), "--run-name", "stop", "--lake", str(lake))
        env = user_env(PREFECT_HOME=str(Path(tmp) / "prefect-home"))
        metrics = lake / "runs" / "stop" / "metrics.jsonl"
        term = Terminal(args, env)
        try:
            deadline = time.monotonic() + 400
            while time.monotonic() < deadline and steps_done(metrics) < 6 and term.wait(0) is None:
                time.sleep(0.05)
            sent = term.ctrl_c()
            code = term.wait(120)
        finally:
            term.kill()
        if code != 130:
            raise RuntimeError(f"Ctrl-C: exit {code}, expected 130:\n{term.text()[-2000:]}")
        ctrl_c = term.ended - sent
        steps = [r["step_time"] for r in map(json.loads, metrics.read_text().splitlines()) if "step_time" in r]

        before = len(list((lake / "logs").glob("run-*.log")))
        proc = subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                start_new_session=True)
        try:
            deadline = time.monotonic() + 400
            # this run's own step lines in its command log (metrics.jsonl still has the first run's)
            while time.monotonic() < deadline and proc.poll() is None:
                logs = sorted((lake / "logs").glob("run-*.log"))
                if len(logs) > before and logs[-1].read_text(errors="replace").count("step ") >= 2:
                    break
                time.sleep(0.05)
            sent = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            out, _ = proc.communicate(timeout=120)
            sigterm = time.monotonic() - sent
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
        if proc.returncode != 143:
            raise RuntimeError(f"SIGTERM: exit {proc.returncode}, expected 143:\n{out[-2000:]}")
    return {"ctrl_c_s": ctrl_c, "sigterm_s": sigterm, "step_s": statistics.median(steps)}


def rows(m: dict) -> list[dict]:
    out = []
    for key, what in (("ctrl_c_s", "Ctrl-C on a terminal during training"),
                      ("sigterm_s", "SIGTERM to the CLI during training (a scheduler's stop)")):
        out.append({"name": f"{what}: signal to exit", "ours_s": m[key], "baseline_s": m["step_s"],
                    "ratio": m[key] / m["step_s"], "goal": f"ours <= {GOAL_S:g} s", "unit": "s",
                    "notes": "baseline: one training step of the same run; ratio: the stop in steps"})
    return out


def run(quick: bool = False) -> list[dict]:
    return rows(measure(quick))


if __name__ == "__main__":
    from bench import print_rows

    print_rows(run(quick="--quick" in sys.argv))
