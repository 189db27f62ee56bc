"""The callback interface: what the trainer tells the parts that are not the step, and when (after OLMo-core).

A callback overrides the hooks it needs; ``CallbackList`` calls, for each hook, only the callbacks
that override it, in list order, so a step costs a loop over a handful of bound methods.  Hooks in
the order a run meets them:

``on_start()``                        the run begins, before a checkpoint is looked for
``pre_train()``                       resumed or freshly started (step 0 checkpointed), before the first step
``post_micro_batch(step, i, last)``   micro-batch ``i`` of optimizer step ``step`` went through backward
``post_optim_step(step)``             the update of ``step`` is applied (or skipped), its bookkeeping not done
``post_step(record)``                 step ``record["step"]`` is done: ``record`` is its metrics.jsonl line
``post_epoch(epoch)``                 epoch ``epoch`` is done (the state already points at the next)
``on_rollback(signal)``               the step raised ``errors.Rollback``: restore an earlier state
``post_rollback()``                   the rollback is done; the state is the restored one
``checkpoint_phase(phase, step)``     an instant inside a checkpoint write (``CheckpointManager.on_phase``)
``finish()``                          the last step is done: what a finished run still owes (eval, save)
``post_train(summary)``               the run is finished; ``summary``: the final progress payload
``close()``                           always, last (also after an error)
"""

from __future__ import annotations

from typing import Any

from openmind_core.training.errors import Rollback

HOOKS = ("on_start", "pre_train", "post_micro_batch", "post_optim_step", "post_step", "post_epoch", "on_rollback",
         "post_rollback", "checkpoint_phase", "finish", "post_train", "close")


class Callback:
    """Does nothing at every hook; subclasses override what they need."""

    def on_start(self) -> None: ...

    def pre_train(self) -> None: ...

    def post_micro_batch(self, step: int, index: int, last: bool) -> None: ...

    def post_optim_step(self, step: int) -> None: ...

    def post_step(self, record: dict[str, Any]) -> None: ...

    def post_epoch(self, epoch: int) -> None: ...

    def on_rollback(self, signal: Rollback) -> None: ...

    def post_rollback(self) -> None: ...

    def checkpoint_phase(self, phase: str, step: int) -> None: ...

    def finish(self) -> None: ...

    def post_train(self, summary: dict[str, Any]) -> None: ...

    def close(self) -> None: ...


class CallbackList:
    """Calls each hook on the callbacks that override it, in order."""

    def __init__(self, callbacks: list[Callback]) -> None:
        self.callbacks = list(callbacks)
        for hook in HOOKS:
            base = getattr(Callback, hook)
            bound = [getattr(cb, hook) for cb in self.callbacks if getattr(type(cb), hook) is not base]
            setattr(self, f"_{hook}", bound)

    def on_start(self) -> None:
        for fn in self._on_start:
            fn()

    def pre_train(self) -> None:
        for fn in self._pre_train:
            fn()

    def post_micro_batch(self, step: int, index: int, last: bool) -> None:
        for fn in self._post_micro_batch:
            fn(step, index, last)

    def post_optim_step(self, step: int) -> None:
        for fn in self._post_optim_step:
            fn(step)

    def post_step(self, record: dict[str, Any]) -> None:
        for fn in self._post_step:
            fn(record)

    def post_epoch(self, epoch: int) -> None:
        for fn in self._post_epoch:
            fn(epoch)

    def on_rollback(self, signal: Rollback) -> None:
        if not self._on_rollback:
            raise signal  # nothing can roll back: the signal is the error
        for fn in self._on_rollback:
            fn(signal)

    def post_rollback(self) -> None:
        for fn in self._post_rollback:
            fn()

    def checkpoint_phase(self, phase: str, step: int) -> None:
        for fn in self._checkpoint_phase:
            fn(phase, step)

    def finish(self) -> None:
        for fn in self._finish:
            fn()

    def post_train(self, summary: dict[str, Any]) -> None:
        for fn in self._post_train:
            fn(summary)

    def close(self) -> None:
        for fn in self._close:
            fn()
