"""Batches of ``VLMDataset`` items: ``Collator`` pads them to the longest and stacks their images.

Sequences are right-padded (``input_ids`` with the pad token, ``labels`` with -100, the attention
mask 0).  The images of the rows that have one are stacked in row order, LLaVA's layout: the model
fills the image tokens in order, so a batch may mix image and text-only rows.  An item's
``pixel_values`` is None (text-only), ``[3, H, W]`` (one image) or ``[k, 3, H, W]`` (k images, in
tag order).  ``packing.PackingCollator`` is the padding-free alternative (``train.packing``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from openmind_core.prompting import IGNORE_INDEX


def item_images(item: dict[str, Any]) -> list[torch.Tensor]:
    """An item's images as a list of ``[3, H, W]`` tensors: ``pixel_values`` None (text-only),
    ``[3, H, W]`` (one image) or ``[k, 3, H, W]`` (k images, in tag order)."""
    px = item.get("pixel_values")
    if px is None:
        return []
    if px.dim() == 3:
        return [px]
    if px.dim() == 4:
        return list(px.unbind(0))
    raise ValueError(f"sample {item.get('sample_id')!r}: pixel_values must be [3, H, W] or [k, 3, H, W], "
                     f"got shape {tuple(px.shape)}")


class Collator:
    """Right-pad a list of ``VLMDataset`` items into a batch; stack the images of the rows that have one."""

    def __init__(self, pad_token_id: int) -> None:
        if pad_token_id is None:
            raise ValueError("Collator needs a pad_token_id (the tokenizer has no pad token)")
        self.pad_token_id = int(pad_token_id)

    def __call__(self, items: Sequence[dict[str, Any]]) -> dict[str, Any]:
        if not items:
            raise ValueError("Collator got an empty batch")
        longest = max(len(it["input_ids"]) for it in items)
        n = len(items)
        input_ids = torch.full((n, longest), self.pad_token_id, dtype=torch.long)
        labels = torch.full((n, longest), IGNORE_INDEX, dtype=torch.long)
        attention = torch.zeros((n, longest), dtype=torch.long)
        for i, it in enumerate(items):
            k = len(it["input_ids"])
            input_ids[i, :k] = it["input_ids"]
            labels[i, :k] = it["labels"]
            attention[i, :k] = 1
        images = [img for it in items for img in item_images(it)]
        return {
            "input_ids": input_ids,
            "attention_mask": attention,
            "labels": labels,
            # [images in the batch, 3, H, W] in row order (a row's own in tag order); None when all are text-only
            "pixel_values": torch.stack(images) if images else None,
            "sample_ids": [it["sample_id"] for it in items],
        }
