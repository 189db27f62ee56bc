"""Spike rollback: restore the newest checkpoint from before a spike, skip what was seen since, lower the LR.

The step raises ``Rollback`` (a loss spike, or ``max_skipped_in_row`` skipped steps); this callback
restores the newest checkpoint from before the onset, puts every sample id seen since it (all
ranks) into the sampler's persistent skip ledger, multiplies the LR by ``spike.lr_factor`` (the
scale compounds over rollbacks: ``TrainerState.lr_scale``), deletes the newer checkpoints, drops
their metrics lines, writes a ``rollback`` event and rewrites the restored checkpoint with the
ledger (so a crash right after a rollback does not forget it).  What the run has lived through
stays counted (skips, non-finite losses, the validation history and ``best/``, settings changes).
After ``spike.max_rollbacks`` the run stops with ``TrainingError`` (and a ``rollback_refused`` event).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from pathlib import Path

from openmind_core.data.sampler import ResumableSampler
from openmind_core.training.callbacks.base import Callback
from openmind_core.training.callbacks.checkpointer import Checkpointer
from openmind_core.training.checkpoint import CheckpointManager, step_of
from openmind_core.training.distributed import all_gather_objects
from openmind_core.training.errors import Rollback, TrainingError
from openmind_core.training.metrics import MetricsWriter
from openmind_core.training.optim import LearningRates
from openmind_core.training.state import RecentSampleIds, TrainerState
from schemas.artifacts import RollbackEvent
from schemas.config import TrainConfig

log = logging.getLogger(__name__)

#: what a rollback keeps from before the restore: the run lived through it
LIVED_THROUGH = ("skipped_steps", "nan_or_inf", "best_val", "best_step", "first_val", "last_val", "first_loss",
                 "settings_changes")


class SpikeRollback(Callback):
    """``restore(path, resuming=False)`` loads a checkpoint into the run (the trainer's restore)."""

    def __init__(self, cfg: TrainConfig, state: TrainerState, checkpoints: CheckpointManager,
                 restore: Callable[[Path, bool], None], checkpointer: Checkpointer, sampler: ResumableSampler,
                 recent_ids: RecentSampleIds, lrs: LearningRates, metrics: MetricsWriter) -> None:
        self.cfg, self.state, self.checkpoints, self.restore = cfg, state, checkpoints, restore
        self.checkpointer, self.sampler, self.recent_ids = checkpointer, sampler, recent_ids
        self.lrs, self.metrics = lrs, metrics

    def on_rollback(self, signal: Rollback) -> None:
        cap = self.cfg.spike.max_rollbacks
        done = list(self.state.rollbacks)
        if len(done) >= cap:
            self.metrics.event("rollback_refused", self.state.step, spike_step=signal.step, reason=signal.reason)
            raise TrainingError(
                f"step {signal.step}: {signal.reason}; the rollback cap train.spike.max_rollbacks={cap} is used up "
                f"({len(done)} done), so the run stops here. The checkpoints under {self.checkpoints.root} "
                "are intact; inspect metrics.jsonl, then resume with a higher cap or a lower learning rate.")
        target = self.checkpoints.find_latest(max_step=signal.onset - 1)
        if target is None:
            raise TrainingError(f"step {signal.step}: {signal.reason}; no valid checkpoint from before step "
                                f"{signal.onset} to roll back to in {self.checkpoints.root}")
        target_step = step_of(target)
        local_ids = self.recent_ids.since(target_step) + signal.ids
        seen = sorted({sid for part in all_gather_objects(local_ids) for sid in part})
        before = dataclasses.replace(self.state)
        carry_skip = dict(self.sampler.skip)
        self.restore(target, False)
        state = self.state
        for k in LIVED_THROUGH:
            setattr(state, k, getattr(before, k))
        state.lr_scale = before.lr_scale * self.cfg.spike.lr_factor
        self.lrs.rescale(state.lr_scale)
        self.sampler.skip = carry_skip
        n_before = len(self.sampler.skip)
        self.sampler.add_skip(seen, epoch=state.epoch, start=state.consumed, offset=state.epoch_offset)
        event = RollbackEvent(step=signal.step, restored_step=target_step, reason=signal.reason, loss=signal.loss,
                              skipped_samples=len(self.sampler.skip) - n_before, lr_scale=state.lr_scale)
        state.rollbacks = done + [event]
        log.warning("rollback %d/%d at step %d -> step %d: %s; %d samples added to the skip ledger; LR x %.3g",
                    len(state.rollbacks), cap, signal.step, target_step, signal.reason, event.skipped_samples,
                    state.lr_scale)
        if self.checkpoints.rank == 0:
            self.checkpoints.delete_after(target_step)
            self.metrics.truncate_after(target_step)
            self.metrics.event("rollback", target_step, spike_step=signal.step, restored_step=target_step,
                               reason=signal.reason, loss=signal.loss, skipped_samples=event.skipped_samples,
                               lr_scale=state.lr_scale)
        self.checkpointer.save()  # rewrite the restored step with the ledger: durable across a crash
