"""Trainer events as Prefect events: rollbacks, skipped steps, checkpoints, resumes and the verdict.

openmind_core never imports prefect: the trainer writes its events as ``"event"`` lines in
``runs/<run>/metrics.jsonl`` (and a ``"skipped": true`` field on a skipped step's line).  This module
forwards them from the task layer with ``prefect.events.emit_event``.  ``MetricsEventForwarder``
polls the file from a thread while training runs (single process or torchrun: only the file
matters) and reads it once more at the end, so an event reaches the UI within ``interval`` seconds.

Every event concerns the resource ``openmind.run.<run name>``; the flow run and task run it
happened in are related resources (attached by Prefect from the run context, and the flow run also
explicitly, since the forwarding thread has no run context of its own).  Names:

    openmind.train.<event>         every trainer event line: rollback, rollback_refused, checkpoint,
                                   resume, eval, settings_changed, world_size_changed, skipped_step, ...
    openmind.train.skipped_step    a step line with ``"skipped": true`` (loss/grad not finite)
    openmind.train.finished        training returned (steps, losses, rollbacks)
    openmind.run.passed / .failed  the Week-1 verdict: every criterion met / some not met

``prefect event stream`` prints them live; automations match them by name (``automations/``).
"""

from __future__ import annotations

import contextvars
import json
import logging
import math
import os
import threading
from pathlib import Path
from typing import Any

from prefect.context import FlowRunContext, TaskRunContext
from prefect.events import emit_event

log = logging.getLogger(__name__)

TRAIN_PREFIX = "openmind.train."
RUN_PREFIX = "openmind.run."


def run_resource(run_name: str, run_dir: str | Path | None = None) -> dict[str, str]:
    res = {"prefect.resource.id": f"{RUN_PREFIX}{run_name}", "prefect.resource.name": run_name}
    if run_dir is not None:
        res["openmind.run-dir"] = str(run_dir)
    return res


def _flow_run_related() -> list[dict[str, str]]:
    """The current flow run as a related resource (empty outside a flow run)."""
    fctx, tctx = FlowRunContext.get(), TaskRunContext.get()
    run_id = getattr(getattr(fctx, "flow_run", None), "id", None) or \
        getattr(getattr(tctx, "task_run", None), "flow_run_id", None)
    if run_id is None:
        return []
    rel = {"prefect.resource.id": f"prefect.flow-run.{run_id}", "prefect.resource.role": "flow-run"}
    name = getattr(getattr(fctx, "flow_run", None), "name", None)
    if name:
        rel["prefect.resource.name"] = name
    return [rel]


def _jsonable(value: Any) -> Any:
    """NaN/inf (a skipped step's loss) become strings: JSON has no such numbers."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def event_for_record(rec: dict[str, Any]) -> tuple[str, dict[str, Any]] | None:
    """(event name, payload) for one metrics.jsonl record, or None for an ordinary step line."""
    if "event" in rec:
        payload = {k: v for k, v in rec.items() if k != "event"}
        return TRAIN_PREFIX + str(rec["event"]), _jsonable(payload)
    if rec.get("skipped"):
        keep = ("step", "epoch", "loss", "grad_norm", "lr")
        return TRAIN_PREFIX + "skipped_step", _jsonable({k: rec.get(k) for k in keep if k in rec})
    return None


def emit(name: str, run_name: str, payload: dict[str, Any], run_dir: str | Path | None = None,
         related: list[dict[str, str]] | None = None):
    """Emit one OpenMind event (a no-op returning None when Prefect emits no events)."""
    return emit_event(event=name, resource=run_resource(run_name, run_dir),
                      related=(related if related is not None else _flow_run_related()), payload=_jsonable(payload))


class MetricsEventForwarder:
    """Forward the event lines a trainer appends to ``metrics.jsonl`` as Prefect events.

    Lines already in the file when forwarding starts belong to an earlier attempt and are not sent
    again.  The trainer rewrites the file on a resume or rollback (``truncate_after``: lines after
    the restored step go); the lines kept are recognised as sent, and whatever is written after
    them is new, even a checkpoint at a step that was lived before the rollback.

        with MetricsEventForwarder(run_dir / "metrics.jsonl", run_name):
            train(...)
    """

    def __init__(self, path: str | Path, run_name: str, run_dir: str | Path | None = None,
                 interval: float = 2.0, skip_existing: bool = True, emitter=None, observers=()) -> None:
        self.path = Path(path)
        self.run_name = run_name
        self.run_dir = run_dir if run_dir is not None else self.path.parent
        self.interval = interval
        self.emitter = emitter or emit  # emit(name, run_name, payload, run_dir, related=...)
        self.observers = list(observers)  # each called with the new lines of every read (tasks/live.py's chart)
        self.sent: list[str] = []  # the file's complete lines as last read, in order (sent or existing)
        self.emitted = 0
        self._inode: int | None = None
        self._offset = 0
        self._seam = b""  # the last complete line read, which must still end the part already read
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._related = _flow_run_related()
        if skip_existing:
            self._read(emit_new=False)

    # ------------------------------------------------------------------ reading

    def _read(self, emit_new: bool = True) -> int:
        """Read what is new in the file; emit its events. Returns how many were emitted."""
        with self._lock:
            try:
                st = os.stat(self.path)
            except FileNotFoundError:
                return 0
            chunk = None
            if st.st_ino == self._inode and st.st_size >= self._offset:
                with open(self.path, "rb") as fh:  # appended to: read the tail (and check the seam)
                    fh.seek(self._offset - len(self._seam))
                    chunk = fh.read()
                if not chunk.startswith(self._seam):
                    chunk = None  # same inode number, other content: a rewrite
            if chunk is not None:
                lines, used = _complete_lines(chunk[len(self._seam):])
                self._offset += used
                new = lines
                self.sent.extend(lines)
            else:  # rewritten (resume / rollback) or first read: compare with what was seen
                data = self.path.read_bytes()
                lines, used = _complete_lines(data)
                common = 0
                for a, b in zip(self.sent, lines):
                    if a != b:
                        break
                    common += 1
                new = lines[common:]
                self.sent = lines
                self._inode, self._offset = st.st_ino, used
            self._seam = (self.sent[-1] + "\n").encode("utf-8") if self.sent else b""
            n = 0
            if emit_new:
                for line in new:
                    n += self._emit_line(line)
            self.emitted += n
        if emit_new and new:
            for observe in self.observers:
                try:
                    observe(new)
                except Exception as e:  # a view of the file never breaks forwarding
                    log.debug("metrics observer: %s", e)
        return n

    def _emit_line(self, line: str) -> int:
        try:
            rec = json.loads(line)
        except ValueError:
            return 0
        if not isinstance(rec, dict):
            return 0
        ev = event_for_record(rec)
        if ev is None:
            return 0
        self.emitter(ev[0], self.run_name, ev[1], self.run_dir, related=self._related)
        return 1

    # ------------------------------------------------------------------ thread

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self._read()
            except Exception as e:  # never let forwarding break training
                log.debug("event forwarding: %s", e)

    def start(self) -> "MetricsEventForwarder":
        ctx = contextvars.copy_context()  # the task's run context, so Prefect relates the events to it
        self._thread = threading.Thread(target=ctx.run, args=(self._loop,), name="openmind-events", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> int:
        """Stop polling and forward what is left; returns how many events were forwarded in all."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._read()
        return self.emitted

    def __enter__(self) -> "MetricsEventForwarder":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def _complete_lines(data: bytes) -> tuple[list[str], int]:
    """The newline-terminated lines of ``data`` (a torn last line waits) and the bytes they use."""
    end = data.rfind(b"\n")
    if end < 0:
        return [], 0
    text = data[: end + 1].decode("utf-8", errors="replace")
    return [ln for ln in text.split("\n")[:-1] if ln.strip()], end + 1


def forward_metrics(path: str | Path, run_name: str, run_dir: str | Path | None = None) -> int:
    """Forward every event line of an existing metrics.jsonl once (e.g. after a run outside Prefect)."""
    fwd = MetricsEventForwarder(path, run_name, run_dir, skip_existing=False)
    fwd._read()
    return fwd.emitted


def emit_training_finished(result, run_name: str, run_dir: str | Path) -> None:
    emit(TRAIN_PREFIX + "finished", run_name, {
        "steps": result.steps, "epochs": result.epochs_completed, "first_loss": result.first_loss,
        "last_loss": result.last_loss, "best_val_loss": result.best_val_loss,
        "final_val_loss": result.final_val_loss, "skipped_steps": result.skipped_steps,
        "rollbacks": len(result.rollbacks), "resumed_from_step": result.resumed_from_step,
        "final_dir": result.final_dir,
    }, run_dir)


def emit_verdict(report) -> None:
    """``openmind.run.passed`` (no criterion failed) or ``openmind.run.failed``, with each criterion's
    status (pass / fail / not measured) and the names of those that failed."""
    name = RUN_PREFIX + ("passed" if report.passed else "failed")
    emit(name, report.run_name, {
        "passed": report.passed,
        "criteria": {c.name: getattr(c, "status", "pass" if c.passed else "fail") for c in report.criteria},
        "failed": [c.name for c in report.criteria if getattr(c, "failed", not c.passed)],
        "report": str(Path(report.run_dir) / "report.json"),
    }, report.run_dir)
