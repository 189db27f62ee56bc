"""Evaluation and the best model: the validation loss every ``eval_steps`` and at the end; ``best/`` kept.

``best/`` is rewritten whenever a finite validation loss beats the best so far (a whole-model
directory, as ``final/``); under FSDP the decision is rank 0's, since the save is a collective.
Each evaluation is a metrics.jsonl ``eval`` event (``val_loss``, ``best``) and a wandb ``val/loss``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from openmind_core.training.callbacks.base import Callback
from openmind_core.training.callbacks.wandb_log import WandbLog
from openmind_core.training.metrics import MetricsWriter
from openmind_core.training.state import TrainerState
from openmind_core.training.strategies import Strategy
from schemas.config import TrainConfig


class Evaluator(Callback):
    """``evaluate()``: the validation loss (None without labels); ``module``: what ``best/`` saves."""

    def __init__(self, evaluate: Callable[[], float | None], state: TrainerState, cfg: TrainConfig,
                 strategy: Strategy, module: torch.nn.Module, best_dir: Path, metrics: MetricsWriter,
                 wandb: WandbLog) -> None:
        self.evaluate, self.state, self.cfg = evaluate, state, cfg
        self.strategy, self.module, self.best_dir = strategy, module, best_dir
        self.metrics, self.wandb = metrics, wandb

    def post_step(self, record: dict[str, Any]) -> None:
        if record["step"] % self.cfg.eval_steps == 0:
            self.evaluate_and_keep_best()

    def finish(self) -> None:
        if self.state.last_eval_step != self.state.step:
            self.evaluate_and_keep_best()

    def evaluate_and_keep_best(self) -> None:
        state = self.state
        val = self.evaluate()
        state.last_eval_step = state.step
        if val is None:
            return
        state.last_val = val
        state.val_losses = state.val_losses + [val]
        if state.first_val is None:
            state.first_val = val
        is_best = self.strategy.agree(math.isfinite(val) and (state.best_val is None or val < state.best_val))
        if is_best:
            state.best_val, state.best_step = val, state.step
            self.strategy.save_model(self.module, self.best_dir)
        self.metrics.event("eval", state.step, val_loss=val, best=is_best)
        self.wandb.log({"val/loss": val}, step=state.step)
