"""Validation loss and the batch helpers the loop shares with it."""

from __future__ import annotations

from typing import Any

import torch
from torch.utils.data import DataLoader

from openmind_core.training.precision import AmpSettings, autocast


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


def to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    nb = device.type == "cuda"
    return {k: v.to(device, non_blocking=nb) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


@torch.no_grad()
def validation_loss(module: torch.nn.Module, dataset: Any, collate_fn, batch_size: int, amp: AmpSettings,
                    device: torch.device) -> float | None:
    """Mean token loss over ``dataset`` (every rank evaluates all of it); None when it has no labels."""
    if dataset is None or len(dataset) == 0:
        return None
    was_training = module.training
    module.eval()
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collate_fn, num_workers=0)
    tot = torch.zeros((), dtype=torch.float64, device=device)
    n_tot = 0.0
    for batch in loader:
        batch.pop("sample_ids", None)
        n = label_tokens(batch)
        n = 1.0 if n is None else float(n)
        if n == 0:
            continue
        with autocast(amp):
            out = module(**to_device(batch, device))
        tot += out.loss.detach().double() * n
        n_tot += n
    module.train(was_training)
    return float(tot / n_tot) if n_tot else None
