"""What a person watching sees: the tqdm bar on a terminal, and the caller's ``progress`` callback.

The bar shows rank 0's steps (loss, LR, tokens/s, seconds per step) when stderr is a terminal; it
jumps back after a rollback.  ``progress(info)`` (the pipeline's Prefect progress and its
stop-at-a-step-boundary check) gets every ``log_every``-th step record with ``total_steps`` added,
and a final ``{"step", "total_steps", "epoch", "loss", "lr", "tokens_per_s", "done": True}``.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

from tqdm.auto import tqdm

from openmind_core.training.callbacks.base import Callback
from openmind_core.training.state import TrainerState
from schemas.config import TrainConfig


class ConsoleProgress(Callback):
    """The tqdm bar (disabled unless rank 0 writes to a terminal)."""

    def __init__(self, state: TrainerState, total_steps: int, enabled: bool) -> None:
        self.state, self.total_steps, self.enabled = state, total_steps, enabled
        self.bar: tqdm | None = None

    def pre_train(self) -> None:
        self.bar = tqdm(total=self.total_steps, initial=self.state.step, desc="train", file=sys.stderr,
                        disable=not (self.enabled and sys.stderr.isatty()), dynamic_ncols=True)

    def post_step(self, record: dict[str, Any]) -> None:
        self.bar.update(1)
        self.bar.set_postfix(loss=f"{record['loss']:.4f}", lr=f"{record['lr']:.2e}",
                             tok_s=f"{record['tokens_per_s']:.0f}", s=f"{record['step_time']:.2f}")

    def post_rollback(self) -> None:
        self.bar.reset(total=self.total_steps)
        self.bar.update(self.state.step)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class ProgressReport(Callback):
    """The caller's ``progress`` callback (rank 0): every ``log_every`` steps, and once at the end."""

    def __init__(self, progress: Callable[[dict], None], cfg: TrainConfig, total_steps: int) -> None:
        self.progress, self.cfg, self.total_steps = progress, cfg, total_steps

    def post_step(self, record: dict[str, Any]) -> None:
        if record["step"] % self.cfg.log_every == 0:
            self.progress({**record, "total_steps": self.total_steps})

    def post_train(self, summary: dict[str, Any]) -> None:
        self.progress(summary)


class EveryStep(Callback):
    """The caller's ``at_step`` callback on every rank after every step (under torchrun: where the ranks
    agree to stop together when one of them was asked to)."""

    def __init__(self, fn: Callable[[dict], None]) -> None:
        self.fn = fn

    def post_step(self, record: dict[str, Any]) -> None:
        self.fn(record)
