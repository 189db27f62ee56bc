"""Packed micro-batches: ``PackingCollator`` concatenates whole samples into rows of up to ``pack_length`` tokens.

The window packed is the micro-batch the sampler gave (``micro_batch_size`` consecutive samples of
its order), so the packing is a pure function of the sampler's order: the epoch's sample set, the
position a checkpoint saves (samples consumed), a ``kill -9`` resume, a rollback's skips and a
change of world size all stay exactly what they are without packing, and every rank runs
``grad_accum`` micro-batches per step as before.  Within the window, ``first_fit_decreasing``
assigns samples to rows (longest first, each into the first row with room; ties by order); a row
holds its samples in the sampler's order, and rows are ordered by their first sample.

Isolation is the model's part: the batch carries ``position_ids`` that restart at 0 for every sample
(the padding at a row's end is one more run from 0) and ``packed=True``; the model turns that into
a block-diagonal causal mask (SDPA, transformers' packed-sequence mask) or ``cu_seqlens``
(flash-attn varlen).  The label at a sample's first position is set to -100: it is never a target
unpacked (the causal shift), and packed it would be predicted from the previous sample.  So the
label tokens of a packed micro-batch are exactly those of the same samples unpacked, and the loss
(sum over target tokens / target tokens of the optimizer step, ``training/trainer.py``) is unchanged.

Images are stacked in the order their placeholder runs appear in the rows (row by row, sample by
sample, each sample's images in its own order), the order the model fills them in.  A sample is
never cut here: the dataset truncates its text to fit ``pack_length`` (``app/train.sequence_length``)
and keeps image and template tokens whole, as without packing; one still longer than
``pack_length`` (a template longer than the budget) is a row of its own, as wide as it is, the way
a padded batch grows to its longest sample.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from openmind_core.data.collate import item_images
from openmind_core.prompting import IGNORE_INDEX


def first_fit_decreasing(lengths: Sequence[int], capacity: int) -> list[list[int]]:
    """Rows of item indices, each summing to at most ``capacity``: deterministic first-fit-decreasing.

    Items are taken longest first (ties: lower index first) and each goes into the first row that
    still has room, else a new row; an item longer than ``capacity`` is a row of its own.  A row
    lists its items in index order; rows are ordered by their first item."""
    if capacity < 1:
        raise ValueError(f"pack capacity must be a positive number of tokens, got {capacity}")
    rows: list[list[int]] = []
    room: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda k: (-int(lengths[k]), k)):
        n = int(lengths[i])
        for r, left in enumerate(room):
            if n <= left:
                rows[r].append(i)
                room[r] -= n
                break
        else:
            rows.append([i])
            room.append(capacity - n)
    return sorted((sorted(r) for r in rows), key=lambda r: r[0])


class PackingCollator:
    """Pack a micro-batch's items into rows of up to ``pack_length`` tokens (see the module docstring)."""

    def __init__(self, pad_token_id: int, pack_length: int) -> None:
        if pad_token_id is None:
            raise ValueError("PackingCollator needs a pad_token_id (the tokenizer has no pad token)")
        if pack_length is None or int(pack_length) < 1:
            raise ValueError(f"train.pack_length must be a positive number of tokens, got {pack_length!r}")
        self.pad_token_id = int(pad_token_id)
        self.pack_length = int(pack_length)

    def rows(self, items: Sequence[dict[str, Any]]) -> list[list[int]]:
        """The packing of ``items``: rows of item indices."""
        return first_fit_decreasing([len(it["input_ids"]) for it in items], self.pack_length)

    def __call__(self, items: Sequence[dict[str, Any]]) -> dict[str, Any]:
        if not items:
            raise ValueError("PackingCollator got an empty batch")
        rows = self.rows(items)
        width = max(sum(len(items[i]["input_ids"]) for i in row) for row in rows)
        n = len(rows)
        input_ids = torch.full((n, width), self.pad_token_id, dtype=torch.long)
        labels = torch.full((n, width), IGNORE_INDEX, dtype=torch.long)
        attention = torch.zeros((n, width), dtype=torch.long)
        position_ids = torch.zeros((n, width), dtype=torch.long)
        images: list[torch.Tensor] = []
        for r, row in enumerate(rows):
            at = 0
            for i in row:
                it = items[i]
                k = len(it["input_ids"])
                input_ids[r, at: at + k] = it["input_ids"]
                labels[r, at: at + k] = it["labels"]
                labels[r, at] = IGNORE_INDEX  # never a target: packed, it would be predicted across samples
                attention[r, at: at + k] = 1
                position_ids[r, at: at + k] = torch.arange(k)
                images.extend(item_images(it))
                at += k
            position_ids[r, at:] = torch.arange(width - at)  # the padding: one more run of its own
        return {
            "input_ids": input_ids,
            "attention_mask": attention,  # 1 on real tokens: what the loop counts; the model isolates by position_ids
            "position_ids": position_ids,
            "labels": labels,
            "pixel_values": torch.stack(images) if images else None,
            "sample_ids": [it["sample_id"] for it in items],
            "packed": True,
        }
