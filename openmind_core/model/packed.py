"""The language model's inputs for a packed batch (``openmind_core.data.packing``): samples isolated.

A packed batch holds several samples per row; ``position_ids`` restart at 0 at each sample (and at
the padding after a row's last sample) and ``attention_mask`` is 1 on real tokens.  What the LM gets:

- flash-attn 2/3 (``attn_implementation`` names flash): the rows are flattened into one row of real
  tokens (no padding at all) and transformers' varlen path gets ``cu_seq_lens_q/k`` and
  ``max_length_q/k`` computed once here (no host sync per layer, nothing inferred per layer);
- everything else (SDPA, eager, flex): ``attention_mask=None`` with the restarting ``position_ids``;
  transformers' ``create_causal_mask`` then finds the packed sequences
  (``masking_utils.find_packed_sequence_indices``) and builds the block-diagonal causal mask for the
  backend (a boolean 4-D mask for SDPA).  RoPE reads the same restarting positions.

Either way a token attends only to the earlier tokens of its own sample, at the positions it has
unpacked, so each sample's logits (and loss, and gradients) equal the unpacked ones.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers.modeling_flash_attention_utils import prepare_fa_kwargs_from_position_ids


def uses_flash(attn_implementation: str | None) -> bool:
    return "flash" in str(attn_implementation or "")


def varlen_kwargs(position_ids: torch.Tensor) -> dict[str, Any]:
    """``cu_seq_lens_q/k`` and ``max_length_q/k`` of one flattened row ``[1, T]`` whose positions
    restart at 0 at each sample: transformers' own derivation, the max lengths as ints (computed once
    here, not per layer)."""
    (cu_q, cu_k), (max_q, max_k) = prepare_fa_kwargs_from_position_ids(position_ids)
    return {"cu_seq_lens_q": cu_q, "cu_seq_lens_k": cu_k, "max_length_q": int(max_q), "max_length_k": int(max_k)}


def packed_lm_inputs(attn_implementation: str | None, inputs_embeds: torch.Tensor,
                     attention_mask: torch.Tensor | None, position_ids: torch.Tensor | None,
                     labels: torch.Tensor | None) -> dict[str, Any]:
    """The LM keywords for a packed batch: ``inputs_embeds``, ``attention_mask``, ``position_ids``,
    ``labels`` and, for flash-attn, the varlen keywords."""
    if position_ids is None:
        raise ValueError("a packed batch needs position_ids that restart at 0 at each sample "
                         "(openmind_core.data.packing.PackingCollator makes them)")
    if position_ids.shape != inputs_embeds.shape[:2]:
        raise ValueError(f"packed batch: position_ids {tuple(position_ids.shape)} do not match the input's "
                         f"{tuple(inputs_embeds.shape[:2])}")
    if not uses_flash(attn_implementation):
        return {"inputs_embeds": inputs_embeds, "attention_mask": None, "position_ids": position_ids,
                "labels": labels}
    keep = attention_mask.bool() if attention_mask is not None else torch.ones_like(position_ids, dtype=torch.bool)
    pos = position_ids[keep].unsqueeze(0)
    return {"inputs_embeds": inputs_embeds[keep].unsqueeze(0), "attention_mask": None, "position_ids": pos,
            "labels": labels[keep].unsqueeze(0) if labels is not None else None, **varlen_kwargs(pos)}
