"""TEST-ONLY crash injection: SIGKILL this process at a named instant of a run.

``OPENMIND_TEST_KILL_AT="phase:n,phase:n"`` makes ``kill_point(phase, n)`` SIGKILL the process
(tests/test_resume_kill.py and the DDP/FSDP resume tests simulate crashes with it); with
``OPENMIND_TEST_KILL_MARKERS=<dir>`` each point fires once (a marker file, fsynced, records it).
Never set it in real runs: without it the trainer does not even add the ``KillPoints`` callback.

The instants (``n`` is the optimizer step, or the epoch for ``epoch-end``):

``micro``        after the first micro-batch's backward of a step with gradient accumulation
``step``         after the update is applied, before the step's bookkeeping
``epoch-end``    after an epoch ends, before the next one's loader starts
``ckpt-write``   a checkpoint's weights written, the rest not (``CheckpointManager.on_phase``)
``ckpt-commit``  a checkpoint renamed into place, before pruning
``prune``        an old checkpoint renamed to ``.del-``, not yet deleted
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

from openmind_core.io import fsync_dir
from openmind_core.training.callbacks.base import Callback

KILL_ENV = "OPENMIND_TEST_KILL_AT"
KILL_MARKERS_ENV = "OPENMIND_TEST_KILL_MARKERS"


def kill_point(phase: str, n: int) -> None:
    """SIGKILL this process if ``phase:n`` is in ``$OPENMIND_TEST_KILL_AT`` (and has not fired yet)."""
    spec = os.environ.get(KILL_ENV)
    if not spec:
        return
    for item in spec.split(","):
        p, _, v = item.strip().partition(":")
        if p != phase or not v or int(v) != n:
            continue
        markers = os.environ.get(KILL_MARKERS_ENV)
        if markers:
            marker = Path(markers) / f"{phase}-{n}"
            if marker.exists():
                continue
            marker.parent.mkdir(parents=True, exist_ok=True)
            with open(marker, "w") as f:
                f.flush()
                os.fsync(f.fileno())
            fsync_dir(marker.parent)
        os.kill(os.getpid(), signal.SIGKILL)


class KillPoints(Callback):
    """The kill points as trainer hooks; ``from_env()`` is None unless the test env var is set."""

    @classmethod
    def from_env(cls) -> "KillPoints | None":
        return cls() if os.environ.get(KILL_ENV) else None

    def post_micro_batch(self, step: int, index: int, last: bool) -> None:
        if index == 0 and not last:
            kill_point("micro", step)

    def post_optim_step(self, step: int) -> None:
        kill_point("step", step)

    def post_epoch(self, epoch: int) -> None:
        kill_point("epoch-end", epoch)

    def checkpoint_phase(self, phase: str, step: int) -> None:
        kill_point(phase, step)
