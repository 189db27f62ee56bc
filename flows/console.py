"""What the CLI's terminal shows, and the log file that keeps everything.

Quiet by default: Prefect's stage lines and the library's INFO lines reach the terminal, but an
error is said once, by the CLI, in one line (``openmind: error: ...``): Prefect's own error records
(a failed task, "Crash detected!", "Finished in state Failed") and every traceback go only to the
log file (``<lake>/logs/<command>-<time>.log``) and, inside a flow run, to the Prefect UI.  On a
terminal the training bar (tqdm) replaces the per-step log lines (they still reach the UI and the
log file).  ``--debug`` shows everything, tracebacks included.

``quiet_environment()`` sets defaults that must be in place before prefect, wandb or transformers
load; a value the user set wins.
"""

from __future__ import annotations

import atexit
import logging
import os
import shlex
import shutil
import signal
import sys
import threading
import traceback
from datetime import datetime
from pathlib import Path

from flows.ephemeral import check_api, ensure_server
from openmind_core import interrupt

PROGRESS = "openmind_progress"  # a log record with this attribute set is a per-step progress line
_NOISE = ("Starting temporary server on", "Stopping temporary server on")

_log_file: Path | None = None


def quiet_environment() -> None:
    """Telemetry off, wandb silent, ...: the defaults ``tasks/__init__.py`` sets (the one home, which a
    flow run under a worker imports too), before prefect or wandb load."""
    import tasks  # noqa: F401  (setting the environment is what importing it does)


class _ConsoleFilter(logging.Filter):
    def __init__(self, tty: bool):
        super().__init__()
        self.tty = tty

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name.startswith("openmind.cli"):
            return False  # the log file's own record of how the command ended
        if record.name.startswith("prefect") and (record.levelno >= logging.ERROR or _ended_badly(record)):
            return False  # the CLI says it once, in one line
        if self.tty and getattr(record, PROGRESS, False):
            return False  # the training bar shows it
        if record.name == "prefect" and str(record.msg).startswith(_NOISE):
            return False
        return True


def _ended_badly(record: logging.LogRecord) -> bool:
    msg = str(record.msg)
    return msg.startswith("Finished in state") and any(w in msg for w in ("Crashed", "Failed", "Cancelled"))


class _NoTraceback(logging.Formatter):
    """Formats like ``inner`` but without the exception or stack (the log file has them)."""

    def __init__(self, inner: logging.Formatter | None):
        super().__init__()
        self.inner = inner or logging.Formatter()

    def format(self, record: logging.LogRecord) -> str:
        saved = record.exc_info, record.exc_text, record.stack_info
        record.exc_info = record.exc_text = record.stack_info = None
        try:
            return self.inner.format(record)
        finally:
            record.exc_info, record.exc_text, record.stack_info = saved


def _console_handlers() -> list[logging.Handler]:
    out = []
    for name in (None, "uvicorn", "fastapi"):
        out += [h for h in logging.getLogger(name).handlers if type(h).__name__ == "PrefectConsoleHandler"]
    return out


def configure(debug: bool = False) -> None:
    """Quiet the terminal (after prefect has set up its logging); ``debug``: leave it as Prefect has it."""
    if debug:
        return
    tty = sys.stderr.isatty()
    for h in _console_handlers():
        if not any(isinstance(f, _ConsoleFilter) for f in h.filters):
            h.addFilter(_ConsoleFilter(tty))
            h.setFormatter(_NoTraceback(h.formatter))


def open_log_file(lake: Path, command: str) -> Path:
    """Everything from here on, tracebacks included, also goes to ``<lake>/logs/<command>-<time>.log``."""
    global _log_file
    logs = lake / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    path = logs / f"{command}-{datetime.now():%Y%m%d-%H%M%S}-{os.getpid()}.log"
    handler = logging.FileHandler(path, encoding="utf-8", delay=True)
    handler.setLevel(logging.INFO)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    logging.getLogger().addHandler(handler)
    cli = logging.getLogger("openmind.cli")
    cli.setLevel(logging.INFO)
    _log_file = path
    return path


def log_file() -> Path | None:
    return _log_file


def record_failure(exc: BaseException) -> None:
    """The full traceback of what ended the command, to the log file (never to the terminal unless --debug)."""
    logging.getLogger("openmind.cli").error("command failed: %s: %s", type(exc).__name__, exc, exc_info=exc)


# --------------------------------------------------------------------------- starting and ending a command


def begin(lake: Path, command: str, debug: bool = False) -> None:
    """Before a flow runs (every command that runs one: the same start-up): the configured Prefect API
    reachable, or Prefect's temporary server in its own session; a quiet terminal, the log file, and
    Ctrl-C / SIGTERM routed to ``openmind_core.interrupt`` (training stops at a step boundary)."""
    check_api()
    configure(debug)
    open_log_file(lake, command)
    ensure_server()
    interrupt.install()


_resume: tuple[str, Path | None] | None = None


def set_resume_hint(command: str, run_dir: Path | None = None) -> None:
    """What a stopped command prints: how to resume it, and (``run_dir``) the checkpoint it resumes from."""
    global _resume
    _resume = (command, run_dir)


def _hint() -> str:
    if _resume is None:
        return "; rerun the same command to go on (finished stages are reused)"
    command, run_dir = _resume
    ckpts = sorted(run_dir.glob("checkpoints/step-*")) if run_dir is not None else []
    kept = f"; newest checkpoint {ckpts[-1].name} kept" if ckpts else ""
    return f"{kept}; resume with: {command}"


def typed_program(argv0: str | None = None) -> str:
    """The program as the user most likely typed it: ``openmind`` when that name on PATH is this very
    script (the shell hands over its full path either way), else the path as given, relative to here
    when below it; ``python -m flows.cli`` for the module."""
    prog = sys.argv[0] if argv0 is None else argv0
    if os.path.basename(prog) != "openmind":
        return "python -m flows.cli"
    found = shutil.which("openmind")
    if found and os.path.realpath(found) == os.path.realpath(prog):
        return "openmind"
    rel = os.path.relpath(prog)
    return rel if not rel.startswith("..") else prog


def resume_command(argv: list[str], run_name: str | None) -> str:
    """The command line that resumes this one: the same arguments, with ``--run-name`` when it had none."""
    prog = typed_program()
    args = list(argv)
    if run_name and "--run-name" not in args and not any(a.startswith("--run-name=") for a in args):
        args += ["--run-name", run_name]
    return " ".join([prog, shlex.join(args)])


def _interrupted(exc: BaseException) -> int | None:
    """The stop signal, when ``exc`` is how a Ctrl-C / SIGTERM ended the command."""
    mod = sys.modules.get("openmind_core.interrupt")
    requested = mod.requested() if mod is not None else None
    if requested is not None:
        return requested
    if isinstance(exc, KeyboardInterrupt):
        return signal.SIGINT
    if type(exc).__name__ == "TerminationSignal":
        return getattr(exc, "signal", signal.SIGTERM)
    return None


def fail(exc: BaseException, debug: bool = False) -> int:
    """End the command after ``exc``: one line on stderr, the traceback to the log file; the exit code."""
    signum = _interrupted(exc)
    if _log_file is not None:
        if signum is None:
            record_failure(exc)
        else:
            logging.getLogger("openmind.cli").warning("stopped by %s", signal.Signals(signum).name)
    if debug:
        traceback.print_exception(exc)
    if signum is not None:
        name = "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name
        print(f"openmind: stopped by {name}{_hint()}", file=sys.stderr)
        return 128 + int(signum)
    text = str(exc).strip()
    msg = text.splitlines()[0] if text else ""
    where = f" (traceback in {_log_file})" if _log_file is not None and not debug else ""
    print(f"openmind: error: {type(exc).__name__}: {msg}{where}", file=sys.stderr)
    return 1


def flow_run_url(state) -> str:
    """`` at <UI URL>`` of the flow run behind ``state`` when a Prefect UI is configured, else ``""``."""
    try:
        from prefect.settings import PREFECT_UI_URL  # start-up cost: prefect loads only with a flow run

        ui = PREFECT_UI_URL.value()
        run_id = state.state_details.flow_run_id
    except Exception:
        return ""
    return f" at {ui}/runs/flow-run/{run_id}" if ui and run_id else ""


def exit_now(code: int) -> None:
    """End the process with ``code`` once everything Python's own exit runs has run (threads' exit hooks:
    Prefect's log and event workers drain; atexit: the temporary server stops, logging flushes), but
    without the interpreter's teardown of every module, which takes seconds with torch and transformers
    loaded (it made a Ctrl-C take 10 s)."""
    try:
        threading._shutdown()  # type: ignore[attr-defined]  (joins non-daemon threads, runs their exit hooks)
    except Exception:
        pass
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)
