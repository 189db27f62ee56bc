"""Rollback: restore the newest checkpoint from before a spike, skip what was seen since, lower the LR.

The loop raises ``Rollback`` (a spike, or ``max_skipped_in_row`` skipped steps); ``roll_back``
restores the newest checkpoint from before the onset, puts every sample id seen since it (all
ranks) into the sampler's persistent skip ledger, multiplies the LR by ``spike.lr_factor`` (the
scale compounds over rollbacks: ``TrainerState.lr_scale``), deletes the newer checkpoints, drops
their metrics lines, writes a ``rollback`` event and rewrites the restored checkpoint with the
ledger (so a crash right after a rollback does not forget it).  After ``spike.max_rollbacks`` the
run stops with ``TrainingError`` (and a ``rollback_refused`` event).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

from openmind_core.training import distributed as D
from schemas.artifacts import RollbackEvent

if TYPE_CHECKING:
    from openmind_core.training.trainer import ProductionTrainer

log = logging.getLogger(__name__)


class TrainingError(RuntimeError):
    """The run cannot continue (e.g. the rollback cap is used up)."""


class Rollback(Exception):
    """Raised inside the loop: roll back from ``step`` to before ``onset``."""

    def __init__(self, step: int, onset: int, reason: str, loss: float | None, ids: list[str]) -> None:
        super().__init__(reason)
        self.step, self.onset, self.reason, self.loss, self.ids = step, onset, reason, loss, ids


def roll_back(t: "ProductionTrainer", rb: Rollback) -> None:
    cap = t.cfg.spike.max_rollbacks
    done = t.state.rollbacks
    if len(done) >= cap:
        t.metrics.event("rollback_refused", t.state.step, spike_step=rb.step, reason=rb.reason)
        raise TrainingError(
            f"step {rb.step}: {rb.reason}; the rollback cap train.spike.max_rollbacks={cap} is used up "
            f"({len(done)} done), so the run stops here. The checkpoints under {t.ckpt.root} "
            "are intact; inspect metrics.jsonl, then resume with a higher cap or a lower learning rate.")
    target = t.ckpt.latest_valid(max_step=rb.onset - 1) if t.is_main else None
    target = D.broadcast_object(str(target) if target else None)
    if target is None:
        raise TrainingError(f"step {rb.step}: {rb.reason}; no valid checkpoint from before step {rb.onset} "
                            f"to roll back to in {t.ckpt.root}")
    target_step = int(Path(target).name.split("-")[1])
    local_ids = [sid for s, v in t.step_ids.items() if s > target_step for sid in v] + rb.ids
    seen = sorted({sid for part in D.all_gather_objects(local_ids) for sid in part})
    before = t.state
    carry_skip = dict(t.sampler.skip)
    t.restore(Path(target), resuming=False)
    st = t.state
    # what the run has lived through stays counted (the validation history, best/, the settings changes)
    for k in ("skipped_steps", "nan_or_inf", "best_val", "best_step", "first_val", "last_val", "first_loss",
              "settings_changes"):
        setattr(st, k, getattr(before, k))
    st.lr_scale = before.lr_scale * t.cfg.spike.lr_factor
    t.set_lrs()
    t.sampler.skip = carry_skip
    n_before = len(t.sampler.skip)
    t.sampler.add_skip(seen, epoch=st.epoch, start=st.consumed, offset=st.epoch_offset)
    event = RollbackEvent(step=rb.step, restored_step=target_step, reason=rb.reason, loss=rb.loss,
                          skipped_samples=len(t.sampler.skip) - n_before, lr_scale=st.lr_scale)
    st.rollbacks = list(done) + [event]
    log.warning("rollback %d/%d at step %d -> step %d: %s; %d samples added to the skip ledger; LR x %.3g",
                len(st.rollbacks), cap, rb.step, target_step, rb.reason, event.skipped_samples, st.lr_scale)
    if t.is_main:
        t.ckpt.delete_after(target_step)
        t.metrics.truncate_after(target_step)
        t.metrics.event("rollback", target_step, spike_step=rb.step, restored_step=target_step,
                        reason=rb.reason, loss=rb.loss, skipped_samples=event.skipped_samples,
                        lr_scale=st.lr_scale)
    t.save_checkpoint()  # rewrite the restored step with the ledger: durable across a crash
