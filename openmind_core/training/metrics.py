"""Training telemetry: ``metrics.jsonl``, the loss-curve PNG and wandb.

``metrics.jsonl`` holds one JSON object per optimizer step (``{"step", "loss", "lr", "grad_norm",
"data_time", "step_time", "tokens_per_s", "skipped"}``) and event lines (``{"event": "eval" |
"checkpoint" | "rollback" | "rollback_refused" | "resume" | "settings_changed" |
"world_size_changed" | "auto_resume", "step", ...}``; a ``checkpoint`` event per checkpoint written, with its
``path``).  Every line has the trainer's ``step`` when it was written, so on resume (or rollback)
``truncate_after(step)`` drops what the restored state has not lived yet and the file never holds
duplicates.  Only rank 0 writes.

wandb: ``mode: disabled`` never imports wandb; otherwise ``wandb.init`` with the project and run
name from the config (no entity: wandb's own default), offline by default.  No keys are logged.
"""

from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path
from typing import Any

from openmind_core.io import atomic_write_text, staged_file

log = logging.getLogger(__name__)

RUN_EVENTS = {"auto_resume"}  # written by the app before training starts (openmind_core.app.auto_resume)


class MetricsWriter:
    def __init__(self, path: str | Path, enabled: bool = True) -> None:
        self.path = Path(path)
        self.enabled = enabled
        self._fh = None

    def _open(self):
        if self._fh is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fh = open(self.path, "a", encoding="utf-8")
        return self._fh

    def write(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        fh = self._open()
        fh.write(json.dumps(record, allow_nan=True) + "\n")
        fh.flush()

    def event(self, event: str, step: int, **fields: Any) -> None:
        self.write({"event": event, "step": step, **fields})

    def start_fresh(self) -> None:
        """A run without a checkpoint: drop what an earlier run left in the file, but for the lines
        about the run rather than its training (``RUN_EVENTS``: an automatic resume)."""
        self._keep(lambda rec: isinstance(rec, dict) and rec.get("event") in RUN_EVENTS, remove_if_empty=True)

    def truncate_after(self, step: int) -> None:
        """Drop lines written at a step later than ``step`` (and a torn last line)."""
        self._keep(lambda rec: int(rec.get("step", 0)) <= step)

    def _keep(self, keep, remove_if_empty: bool = False) -> None:
        """Rewrite the file with the parsed lines ``keep`` accepts (a line torn by a crash goes)."""
        if not self.enabled or not self.path.exists():
            return
        self.close()
        kept = []
        for line in self.path.read_text(encoding="utf-8").splitlines():
            try:
                rec = json.loads(line)
            except ValueError:
                continue  # a line torn by a crash
            if keep(rec):
                kept.append(line)
        if kept or not remove_if_empty:
            atomic_write_text(self.path, "".join(k + "\n" for k in kept))
        else:
            self.path.unlink()

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    p = Path(path)
    if not p.exists():
        return []
    return [json.loads(line) for line in p.read_text(encoding="utf-8").splitlines() if line.strip()]


def plot_loss_curve(metrics_path: str | Path, out_png: str | Path) -> Path | None:
    """Train loss per step, validation loss per eval, rollbacks (red) and resumes with new settings
    (gray) as vertical lines, each named in the legend (matplotlib Agg)."""
    records = read_metrics(metrics_path)
    steps = [(r["step"], r["loss"]) for r in records if "event" not in r and r.get("loss") is not None
             and math.isfinite(r["loss"])]
    if not steps:
        return None
    import matplotlib  # imported here: start-up cost (only the end of a run draws)

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # after use("Agg"): no display backend is probed

    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot([s for s, _ in steps], [v for _, v in steps], label="train loss", linewidth=1)
    evals = [(r["step"], r["val_loss"]) for r in records if r.get("event") == "eval"]
    if evals:
        ax.plot([s for s, _ in evals], [v for _, v in evals], "o-", label="val loss")
    for r in records:  # each rollback a dashed line at its spike, named in the legend
        if r.get("event") == "rollback":
            spike = r.get("spike_step", r["step"])
            ax.axvline(spike, color="red", linestyle="--", linewidth=0.8,
                       label=f"rollback: spike at step {spike} -> step {r.get('restored_step', r['step'])}")
    for r in records:
        if r.get("event") == "settings_changed":
            ax.axvline(r["step"], color="gray", linestyle=":", linewidth=0.8, label=f"resume: {r['key']} changed")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss")
    handles, labels = ax.get_legend_handles_labels()
    unique = dict(zip(labels, handles))  # one entry per label (several keys changed at one resume)
    ax.legend(unique.values(), unique.keys(), fontsize="small")
    fig.tight_layout()
    out_png = Path(out_png)
    with staged_file(out_png) as tmp:  # a crash leaves the old curve or the new one
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)
    return out_png


class WandbLogger:
    """Thin wandb wrapper; ``mode='disabled'``, ``$WANDB_MODE=disabled`` or rank != 0 never imports wandb.

    Offline runs are written under ``<run_dir>/wandb/`` (upload later with ``wandb sync``).
    """

    def __init__(self, mode: str, project: str, name: str | None, run_dir: str | Path,
                 config: dict[str, Any] | None = None, enabled: bool = True) -> None:
        self.run = None
        if mode == "disabled" or os.environ.get("WANDB_MODE") == "disabled" or not enabled:
            return
        try:
            import wandb  # imported here: optional, and start-up cost (mode disabled never imports it)
        except ImportError:
            log.warning("wandb is not installed; train.wandb.mode=%s ignored", mode)
            return
        self.run = wandb.init(project=project, name=name, mode=mode, dir=str(run_dir), config=config or {},
                              resume="allow")

    def log(self, data: dict[str, Any], step: int) -> None:
        if self.run is not None:
            self.run.log(data, step=step)

    def finish(self) -> None:
        if self.run is not None:
            self.run.finish()
            self.run = None
