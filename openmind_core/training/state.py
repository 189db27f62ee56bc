"""The trainer's own state: ``TrainerState`` (saved as ``trainer_state.json``) and each rank's recent sample ids.

Both are Stateful (``state_dict`` / ``load_state_dict``, the protocol of
``torch.distributed.checkpoint.stateful``) and load in place, so every part that holds them (the
callbacks, the checkpoint manager) sees a restore.  ``TrainerState`` holds everything the loop
counts: the position in the data, counters, the validation history, the rollbacks and settings
changes so far; the sampler's ledger, the spike window and the LR schedule are states of their own
saved beside it.  Loading ignores keys it does not know and fills missing ones with their defaults,
so checkpoints of older versions still load.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from schemas.artifacts import RollbackEvent

LAST_LOSS_WINDOW = 5  # the train losses averaged into TrainingResult.last_loss


@dataclass
class TrainerState:
    step: int = 0  # optimizer steps done
    epoch: int = 0
    consumed: int = 0  # samples this rank has taken in this epoch (after epoch_offset)
    epoch_offset: int = 0  # global position in the epoch's order a world-size change resharded from
    samples_seen: int = 0  # all ranks
    first_loss: float | None = None
    recent_losses: list[float] = field(default_factory=list)
    skipped_steps: int = 0
    skipped_in_row: int = 0
    skipped_run_start: int | None = None
    nan_or_inf: int = 0
    lr_scale: float = 1.0  # product of spike.lr_factor over the rollbacks so far
    best_val: float | None = None
    best_step: int | None = None
    first_val: float | None = None
    last_val: float | None = None
    val_losses: list[float] = field(default_factory=list)
    last_eval_step: int | None = None
    last_ckpt_step: int | None = None
    rollbacks: list[RollbackEvent] = field(default_factory=list)
    settings_changes: list[dict[str, Any]] = field(default_factory=list)  # {step, key, old, new}

    def finish_step(self, step: int, samples: int, world_size: int, loss: float) -> None:
        """Step ``step`` went ahead with this rank's ``samples``: advance the position and the counters."""
        self.step = step
        self.consumed += samples
        self.samples_seen += samples * world_size
        self.record_loss(loss)

    def record_loss(self, loss: float) -> None:
        if self.first_loss is None:
            self.first_loss = loss
        self.recent_losses = (self.recent_losses + [loss])[-LAST_LOSS_WINDOW:]

    def count_update(self, step: int, applied: bool, counts: bool, max_in_row: int) -> int | None:
        """Count an applied or skipped update; the onset step when ``max_in_row`` counted skips in a
        row call for a rollback (the run of skips then starts afresh), else None.

        ``counts``: whether a skipped step counts toward the run (an fp16 overflow does not)."""
        if applied:
            self.skipped_in_row, self.skipped_run_start = 0, None
            return None
        self.skipped_steps += 1
        if not counts:
            return None
        self.skipped_in_row += 1
        self.skipped_run_start = self.skipped_run_start or step
        if self.skipped_in_row < max_in_row:
            return None
        onset = self.skipped_run_start
        self.skipped_in_row, self.skipped_run_start = 0, None
        return onset

    # -- Stateful ----------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        return self.to_json()

    def load_state_dict(self, data: dict[str, Any]) -> None:
        loaded = self.from_json(data)
        for f in dataclasses.fields(self):
            setattr(self, f.name, getattr(loaded, f.name))

    def to_json(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["rollbacks"] = [r.model_dump() for r in self.rollbacks]
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "TrainerState":
        names = {f.name for f in dataclasses.fields(cls)}
        kept = {k: v for k, v in data.items() if k in names}
        kept["rollbacks"] = [RollbackEvent.model_validate(r) for r in kept.get("rollbacks", [])]
        return cls(**kept)


class RecentSampleIds:
    """This rank's sample ids per recent optimizer step: what a rollback puts into the skip ledger.

    Saved in ``rank-<R>.pt`` (``step_ids``, JSON-style string keys); steps older than any checkpoint
    a rollback could still restore are forgotten before each save (``forget_through``)."""

    def __init__(self) -> None:
        self.by_step: dict[int, list[str]] = {}

    def record(self, step: int, ids: list[str]) -> None:
        self.by_step[step] = ids

    def forget_through(self, step: int) -> None:
        self.by_step = {s: v for s, v in self.by_step.items() if s > step}

    def since(self, step: int) -> list[str]:
        """The ids of every step after ``step``, in step order."""
        return [sid for s, v in self.by_step.items() if s > step for sid in v]

    def state_dict(self) -> dict[str, list[str]]:
        return {str(s): v for s, v in self.by_step.items()}

    def load_state_dict(self, state: dict[str, list[str]]) -> None:
        self.by_step = {int(s): list(v) for s, v in state.items()}
