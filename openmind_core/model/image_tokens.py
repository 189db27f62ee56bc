"""How many image tokens the projector emits: the one function the model and the collator share.

A SigLIP-So400M 384/14 tower gives a 27 x 27 grid (729 tokens).  Pooling 2 x 2 needs an even
grid, so it is padded to 28 x 28 (equivalently: ceil) -> 14 x 14 = 196 tokens; floor would give
13 x 13 = 169.  The guide's printed "182" is 729 // 4, a 1-D count that no 2-D pooling of a
27 x 27 grid produces.
"""

from __future__ import annotations

import math


def pooled_side(grid: int, kernel: int) -> int:
    """Patches per side after padding the grid to a multiple of ``kernel`` and pooling."""
    return math.ceil(grid / kernel)


def num_image_tokens(grid: int, projector_type: str, kernel: int = 2) -> int:
    """Tokens per image for a ``grid`` x ``grid`` patch grid through the given projector."""
    if grid < 1:
        raise ValueError(f"grid must be positive, got {grid}")
    if projector_type == "mlp":
        return grid * grid
    if projector_type in ("token_pooling", "pixel_shuffle"):
        return pooled_side(grid, kernel) ** 2
    raise ValueError(f"unknown projector type {projector_type!r}")


def tokens_for_config(model_cfg) -> int:
    """``num_image_tokens`` for a ``schemas.config.ModelConfig``."""
    v, p = model_cfg.vision, model_cfg.projector
    return num_image_tokens(v.img_size // v.patch_size, p.type, p.pooling_kernel)
