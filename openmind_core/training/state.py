"""The trainer's state: one typed dataclass, saved as ``trainer_state.json`` in every checkpoint.

Everything the loop counts lives here (position in the data, counters, validation history, the
rollbacks and settings changes so far); the sampler's ledger, the spike window and the LR schedule
are saved beside it by the trainer.  ``from_json`` ignores keys it does not know and fills missing
ones with their defaults, so checkpoints of older versions still load.
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

    def record_loss(self, loss: float) -> None:
        if self.first_loss is None:
            self.first_loss = loss
        self.recent_losses = (self.recent_losses + [loss])[-LAST_LOSS_WINDOW:]

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
