"""metrics.jsonl's step lines: one JSON object per optimizer step (the events come from the parts that cause them)."""

from __future__ import annotations

from typing import Any

from openmind_core.training.callbacks.base import Callback
from openmind_core.training.metrics import MetricsWriter


class MetricsLog(Callback):
    """Writes every step's record (``{"step", "epoch", "loss", "lr", "grad_norm", "data_time",
    "step_time", "tokens_per_s", "skipped"}``) to metrics.jsonl (rank 0's writer)."""

    def __init__(self, metrics: MetricsWriter) -> None:
        self.metrics = metrics

    def post_step(self, record: dict[str, Any]) -> None:
        self.metrics.write(record)
