"""Periodic checkpoints: every ``save_steps`` optimizer steps and at the end, and ``save`` for whoever needs one.

The trainer saves step 0 of a fresh run with ``save`` (a rollback target before the first periodic
checkpoint), and a rollback rewrites the restored step with its ledger.  Each save records the step
in the state first (so the checkpoint knows it was saved), forgets the sample ids of steps no
checkpoint a rollback could reach still needs, keeps ``best/``'s step from pruning, and writes a
``checkpoint`` event.  Never on micro-batches, never at a resume's loop entry.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from openmind_core.training.callbacks.base import Callback
from openmind_core.training.checkpoint import CheckpointManager
from openmind_core.training.metrics import MetricsWriter
from openmind_core.training.state import RecentSampleIds, TrainerState
from schemas.config import TrainConfig


class Checkpointer(Callback):
    def __init__(self, checkpoints: CheckpointManager, state: TrainerState, recent_ids: RecentSampleIds,
                 cfg: TrainConfig, metrics: MetricsWriter) -> None:
        self.checkpoints, self.state, self.recent_ids = checkpoints, state, recent_ids
        self.cfg, self.metrics = cfg, metrics

    def save(self) -> Path | None:
        """Checkpoint the current step (every rank calls; rank 0 writes and gets the path)."""
        state = self.state
        state.last_ckpt_step = state.step
        self.recent_ids.forget_through(state.step - (self.cfg.keep_last + 1) * self.cfg.save_steps)
        path = self.checkpoints.save_states(state.step, protect={state.best_step} if state.best_step is not None else set())
        if path is not None:
            self.metrics.event("checkpoint", state.step, path=str(path))
        return path

    def post_step(self, record: dict[str, Any]) -> None:
        if record["step"] % self.cfg.save_steps == 0:
            self.save()

    def finish(self) -> None:
        if self.state.last_ckpt_step != self.state.step:
            self.save()
