"""The validation loss: the mean token loss over the validation dataset (every rank evaluates all of it)."""

from __future__ import annotations

from typing import Any

import torch
from torch.utils.data import DataLoader

from openmind_core.training.batches import label_tokens, to_device
from openmind_core.training.precision import AmpSettings, autocast


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
