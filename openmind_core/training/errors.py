"""Why a run stops or turns back: ``TrainingError``, ``ResumeError`` and the ``Rollback`` signal.

``TrainingError`` and ``ResumeError`` reach the caller; ``Rollback`` never does: the step raises it
and the trainer hands it to the spike-rollback callback (``callbacks.rollback``), which restores an
earlier checkpoint or, with the rollback cap used up, raises ``TrainingError``.
"""

from __future__ import annotations


class TrainingError(RuntimeError):
    """The run cannot continue (e.g. the rollback cap is used up)."""


class ResumeError(RuntimeError):
    """A checkpoint exists but cannot be resumed from (e.g. the model or data changed)."""


class Rollback(Exception):
    """Raised inside the step: roll back from ``step`` to a checkpoint from before ``onset``.

    ``ids``: this rank's sample ids of the step that raised it (they join the skip ledger)."""

    def __init__(self, step: int, onset: int, reason: str, loss: float | None, ids: list[str]) -> None:
        super().__init__(reason)
        self.step, self.onset, self.reason, self.loss, self.ids = step, onset, reason, loss, ids
