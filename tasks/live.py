"""What the Prefect UI shows while a stage works: a conversion's progress and the loss so far.

- ``conversion_progress(key)``: a ``report(done, total)`` callback for the core's conversion
  (``openmind_core.data.convert`` / ``parallel_convert``).  A conversion that lasts more than
  ``DELAY`` seconds gets a progress artifact (``key``), updated at most once a second; a short one
  gets none.
- ``LossChart``: the markdown artifact ``week1-training-loss``, a chart of the training loss per
  logged step and the validation loss (an SVG ``data:`` image, which the UI renders) above a
  line of figures.  It is created when training starts (showing the losses of an earlier attempt
  of the run, if any) and updated in place (same artifact, same key) each time ``metrics.jsonl``
  reaches another multiple of ``train.log_every`` steps, as the event forwarder reads the file
  (``tasks/events.py``: every 2 s, single process or torchrun alike).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

from prefect.artifacts import create_markdown_artifact, create_progress_artifact, update_progress_artifact
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import ArtifactUpdate

from openmind_core.charts import data_url, loss_svg
from openmind_core.progress import DELAY

log = logging.getLogger(__name__)

LOSS_KEY = "week1-training-loss"
UPDATE_EVERY = 1.0  # seconds between two updates of a conversion's progress artifact


def conversion_progress(key: str, description: str = "rows converted, percent", delay: float = DELAY,
                        clock: Callable[[], float] = time.monotonic) -> Callable[[int, int], None]:
    """A ``report(done, total)`` that shows a progress artifact once the work has lasted ``delay`` seconds."""
    start = clock()
    state: dict = {"id": None, "last": 0.0}
    lock = threading.Lock()

    def report(done: int, total: int) -> None:
        now = clock()
        pct = min(100.0, 100.0 * done / total) if total else 0.0
        finished = total and done >= total
        with lock:
            if state["id"] is None and now - start < delay:
                return
            if not finished and now - state["last"] < UPDATE_EVERY:
                return
            state["last"] = now
            try:
                if state["id"] is None:
                    state["id"] = create_progress_artifact(progress=pct, key=key, description=description)
                else:
                    update_progress_artifact(state["id"], pct)
            except Exception as e:  # the UI's view is never worth failing a conversion
                log.debug("progress artifact %s: %s", key, e)

    return report


def _losses(path: Path) -> tuple[list[tuple[float, float]], list[tuple[float, float]]]:
    """(step, loss) of the step lines and (step, val_loss) of the eval lines of ``metrics.jsonl``."""
    train, val = [], []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError:
        return train, val
    for line in lines:
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if not isinstance(rec, dict) or "step" not in rec:
            continue
        if rec.get("event") == "eval" and isinstance(rec.get("val_loss"), (int, float)):
            val.append((float(rec["step"]), float(rec["val_loss"])))
        elif "event" not in rec and isinstance(rec.get("loss"), (int, float)) and not rec.get("skipped"):
            train.append((float(rec["step"]), float(rec["loss"])))
    return train, val


class LossChart:
    """The loss so far as a markdown artifact, refreshed every ``log_every`` steps (see the module doc)."""

    def __init__(self, metrics_path: str | Path, run_name: str, log_every: int, total_steps: int | None = None):
        self.path = Path(metrics_path)
        self.run_name = run_name
        self.log_every = max(1, int(log_every))
        self.total_steps = total_steps
        self.artifact_id = None
        self.shown = -1  # the newest step drawn
        self.updates = 0

    def markdown(self) -> str:
        """The chart up to the newest multiple of ``log_every`` (or the last step, once training is done)."""
        train, val = _losses(self.path)
        if train:
            newest = int(train[-1][0])
            done = self.total_steps is not None and newest >= self.total_steps
            cut = newest if done else newest - newest % self.log_every
            train, val = [p for p in train if p[0] <= cut], [p for p in val if p[0] <= cut]
        svg = loss_svg(train, val, title=f"run {self.run_name}: loss so far")
        lines = [f"![loss so far]({data_url(svg)})", ""]
        if train:
            step, loss = train[-1]
            of = f"/{self.total_steps}" if self.total_steps else ""
            lines.append(f"**step {int(step)}{of}**: loss {loss:.4f} (first {train[0][1]:.4f}, lowest "
                         f"{min(v for _, v in train):.4f})"
                         + (f"; validation loss {val[-1][1]:.4f} at step {int(val[-1][0])}" if val else "")
                         + f". Updated {datetime.now():%H:%M:%S}, every {self.log_every} steps.")
        else:
            lines.append("Training has started; the first point comes with the first logged step.")
        self.shown = int(train[-1][0]) if train else 0
        return "\n".join(lines)

    def start(self) -> "LossChart":
        try:
            self.artifact_id = create_markdown_artifact(markdown=self.markdown(), key=LOSS_KEY,
                                                        description="training and validation loss so far")
        except Exception as e:
            log.debug("loss artifact: %s", e)
        return self

    def refresh(self) -> None:
        """Redraw the chart in place (same artifact)."""
        if self.artifact_id is None:
            return
        try:
            with get_client(sync_client=True) as client:
                client.update_artifact(self.artifact_id, ArtifactUpdate(data=self.markdown()))
            self.updates += 1
        except Exception as e:  # the UI's view is never worth failing training
            log.debug("loss artifact update: %s", e)

    def observe(self, lines: list[str]) -> None:
        """New ``metrics.jsonl`` lines (from the event forwarder): redraw once another log interval is reached."""
        newest = None
        for line in lines:
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            if isinstance(rec, dict) and "event" not in rec and isinstance(rec.get("step"), int):
                newest = rec["step"]
        if newest is None:
            return
        done = self.total_steps is not None and newest >= self.total_steps
        if newest // self.log_every > max(self.shown, 0) // self.log_every or done or newest < self.shown:
            self.refresh()
