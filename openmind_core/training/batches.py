"""What the loop reads off a batch: label tokens (the loss weights), input tokens and slots (throughput, the pad
fraction), device moves."""

from __future__ import annotations

from typing import Any

import torch


def label_tokens(batch: dict[str, Any]) -> int | None:
    """Tokens that carry a label after the causal shift (``labels[:, 1:] != -100``); None without labels."""
    labels = batch.get("labels")
    if not isinstance(labels, torch.Tensor):
        return None
    return int((labels[:, 1:] != -100).sum())


def batch_tokens(batch: dict[str, Any]) -> int:
    """Input tokens of a batch (for tokens/s): the attention mask's sum, else input_ids' size."""
    for key in ("attention_mask", "input_ids"):
        t = batch.get(key)
        if isinstance(t, torch.Tensor):
            return int(t.sum()) if key == "attention_mask" else t.numel()
    return 0


def batch_slots(batch: dict[str, Any]) -> int:
    """Positions a batch computes, padding included (``input_ids``' size): with ``batch_tokens``, the pad fraction."""
    t = batch.get("input_ids")
    return t.numel() if isinstance(t, torch.Tensor) else 0


def to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    nb = device.type == "cuda"
    return {k: v.to(device, non_blocking=nb) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
