"""Weights & Biases: train/* every ``log_every`` steps, val/loss at each evaluation (rank 0; offline by default)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from openmind_core.training.callbacks.base import Callback
from openmind_core.training.metrics import WandbLogger
from schemas.config import TrainConfig


class WandbLog(Callback):
    """Starts the wandb run when training starts (``mode: disabled`` never imports wandb) and ends it."""

    def __init__(self, cfg: TrainConfig, run_dir: Path, enabled: bool) -> None:
        self.cfg, self.run_dir, self.enabled = cfg, run_dir, enabled
        self.logger: WandbLogger | None = None

    def on_start(self) -> None:
        wb = self.cfg.wandb
        self.logger = WandbLogger(wb.mode, wb.project, wb.name, self.run_dir, self.cfg.model_dump(mode="json"),
                                  enabled=self.enabled)

    def log(self, data: dict[str, Any], step: int) -> None:
        if self.logger is not None:
            self.logger.log(data, step=step)

    def post_step(self, record: dict[str, Any]) -> None:
        step = record["step"]
        if step % self.cfg.log_every == 0:
            self.log({f"train/{k}": v for k, v in record.items() if isinstance(v, (int, float))}, step=step)

    def close(self) -> None:
        if self.logger is not None:
            self.logger.finish()
