"""The end of a run: ``final/`` (the whole model), the state-restore check and the loss curve.

Runs after the last evaluation and the last checkpoint (the callbacks before it in the list).
``final/`` is a ``save_pretrained`` directory (under FSDP from a gathered state dict, every rank
joining); the state-restore check loads the newest checkpoint's trainer state into fresh objects
and compares it with the live ones (``resume.state_restore_check``); ``loss_curve.png`` is drawn
from metrics.jsonl (``metrics.plot_loss_curve``).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from openmind_core.training.callbacks.base import Callback
from openmind_core.training.distributed import barrier
from openmind_core.training.metrics import MetricsWriter, plot_loss_curve
from openmind_core.training.strategies import Strategy


class FinalModel(Callback):
    """After ``finish``: ``final_dir``, ``restore_ok`` (rank 0's check) and ``curve`` (the PNG, or None)."""

    def __init__(self, run_dir: Path, strategy: Strategy, module: torch.nn.Module, metrics: MetricsWriter,
                 check_restore: Callable[[], bool | None]) -> None:
        self.run_dir, self.strategy, self.module = run_dir, strategy, module
        self.metrics, self.check_restore = metrics, check_restore
        self.final_dir = run_dir / "final"
        self.restore_ok: bool | None = None
        self.curve: Path | None = None

    def finish(self) -> None:
        self.strategy.save_model(self.module, self.final_dir)
        if self.strategy.is_main:
            self.restore_ok = self.check_restore()
            self.metrics.close()
            self.curve = plot_loss_curve(self.metrics.path, self.run_dir / "loss_curve.png")
        barrier()
