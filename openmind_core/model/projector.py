"""The projector: patch features of the vision tower -> tokens in the language model's width.

Three types (``schemas.config.ProjectorConfig.type``):

* ``token_pooling`` (default): the grid x grid patch tokens are laid out as an image, padded at the
  bottom/right to a multiple of ``pooling_kernel`` by replicating the edge row/column, averaged
  over k x k windows, then mapped by a 2-layer GELU MLP.  SigLIP-So400M's 27 x 27 grid becomes
  28 x 28 -> 14 x 14 = 196 tokens (LLaVA-OneVision's count).  The guide prints "182": that is
  729 // 4, the number of tokens a 1-D pooling of the flat sequence would give, not a 2-D pooling
  of a 27 x 27 grid -- a 2 x 2 pooling gives 14 x 14 = 196 with padding/ceil or 13 x 13 = 169 with
  floor, and 182 = 2 x 7 x 13 is not a square.  Edge replication (rather than zeros) keeps the
  last row/column averages on the same scale as the others.
* ``mlp``: LLaVA-1.5's 2-layer GELU MLP on every patch token (729 tokens at full size).
* ``pixel_shuffle``: SmolVLM/Idefics3's space-to-depth: pad the grid to a multiple of k (27 -> 28),
  fold each k x k block into one token of width C * k * k (14 x 14 = 196 tokens), then the MLP.

The token count always comes from ``openmind_core.model.image_tokens.num_image_tokens`` -- the same
function the data collator uses to insert image placeholders -- and is asserted on every forward.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from openmind_core.model.image_tokens import num_image_tokens

PROJECTOR_TYPES = ("token_pooling", "mlp", "pixel_shuffle")


def _pad_grid(x: torch.Tensor, k: int) -> torch.Tensor:
    """[B, C, g, g] -> [B, C, g', g'] with g' = ceil(g / k) * k, replicating the last row/column."""
    g = x.shape[-1]
    pad = math.ceil(g / k) * k - g
    return F.pad(x, (0, pad, 0, pad), mode="replicate") if pad else x


class ImprovedProjector(nn.Module):
    """``[B, grid * grid, input_dim] -> [B, num_image_tokens(grid, type, k), output_dim]``."""

    def __init__(
        self,
        input_dim: int,
        output_dim: int,
        projector_type: str = "token_pooling",
        pooling_kernel: int = 2,
        hidden_dim: int | None = None,
    ) -> None:
        super().__init__()
        if projector_type not in PROJECTOR_TYPES:
            raise ValueError(f"projector_type {projector_type!r} is not one of {PROJECTOR_TYPES}")
        if pooling_kernel < 1:
            raise ValueError(f"pooling_kernel must be >= 1, got {pooling_kernel}")
        self.input_dim = input_dim
        self.output_dim = output_dim
        self.projector_type = projector_type
        self.pooling_kernel = pooling_kernel
        hidden = hidden_dim or output_dim
        mlp_in = input_dim * pooling_kernel**2 if projector_type == "pixel_shuffle" else input_dim
        self.linear_1 = nn.Linear(mlp_in, hidden)
        self.act = nn.GELU()
        self.linear_2 = nn.Linear(hidden, output_dim)

    @classmethod
    def from_config(cls, pcfg, input_dim: int, output_dim: int) -> "ImprovedProjector":
        """Build from a ``schemas.config.ProjectorConfig``."""
        return cls(input_dim, output_dim, pcfg.type, pcfg.pooling_kernel, pcfg.hidden_dim)

    def num_tokens(self, grid: int) -> int:
        return num_image_tokens(grid, self.projector_type, self.pooling_kernel)

    def _reduce(self, x: torch.Tensor, grid: int) -> torch.Tensor:
        b, n, c = x.shape
        k = self.pooling_kernel
        if self.projector_type == "mlp":
            return x
        img = x.transpose(1, 2).reshape(b, c, grid, grid)
        img = _pad_grid(img, k)
        if self.projector_type == "token_pooling":
            pooled = F.avg_pool2d(img, kernel_size=k, stride=k)  # [B, C, g'/k, g'/k]
            return pooled.flatten(2).transpose(1, 2)
        # pixel_shuffle: [B, C, g', g'] -> [B, C*k*k, (g'/k)^2]; each output token is one k x k block
        return F.pixel_unshuffle(img, k).flatten(2).transpose(1, 2)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        if features.dim() != 3 or features.shape[-1] != self.input_dim:
            raise ValueError(
                f"projector expects [B, grid*grid, {self.input_dim}] features, got {tuple(features.shape)}"
            )
        n = features.shape[1]
        grid = math.isqrt(n)
        if grid * grid != n:
            raise ValueError(f"projector expects a square patch grid, got {n} tokens")
        x = self._reduce(features, grid)
        x = self.linear_2(self.act(self.linear_1(x)))
        expected = self.num_tokens(grid)
        if x.shape[1] != expected:
            raise AssertionError(f"projector produced {x.shape[1]} tokens, num_image_tokens says {expected}")
        return x
