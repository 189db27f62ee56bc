"""The vision tower: SigLIP's architecture (transformers' ``SiglipVisionModel``), weight-compatible.

``ImprovedVisionEncoder`` is the guide's name for a SigLIP-So400M-shaped ViT (384 px, patch 14 ->
a 27 x 27 grid = 729 tokens, width 1152, 27 layers, 16 heads of 72).  It wraps transformers'
``SiglipVisionModel`` so a real ``google/siglip-so400m-patch14-384`` checkpoint (a full SigLIP
model with its text tower, or a vision-only save) loads with ``from_pretrained``.

The projector reads one hidden layer, ``feature_layer`` (LLaVA's ``vision_feature_layer``,
indexing ``hidden_states`` where index 0 is the patch embeddings: -1 = the last layer's output,
-2 = the second to last).  Rather than running every layer with ``output_hidden_states=True`` and
keeping all of them, the encoder's layer list is truncated to the layers that feed that output,
and the unused post-layernorm and pooling head are removed: no wasted compute, no wasted memory.
As in LLaVA the selected hidden state is taken before SigLIP's post-layernorm.

Attention: SDPA by default; flash-attn 2 at forward time when it is installed and the input is
fp16/bf16 on CUDA (``openmind_core.model.attention``).  ``use_flash_attn=True`` elsewhere falls
back to SDPA with a single log line.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path

import torch
from torch import nn
from transformers import SiglipVisionConfig, SiglipVisionModel
from transformers.utils import logging as hf_logging

from openmind_core.model.attention import check_backend, select_backend
from openmind_core.hub import hub_access, unreachable_error
from openmind_core.progress import hf_bars, weight_bytes

logger = logging.getLogger(__name__)
_FALLBACKS_LOGGED: set[str] = set()


def enable_checkpointing(model) -> None:
    """Non-reentrant activation checkpointing of every layer of a transformers model (v4 and v5 names)."""
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


def siglip_config(img_size: int, patch_size: int, embed_dim: int, depth: int, num_heads: int, mlp_dim: int,
                  layer_norm_eps: float) -> SiglipVisionConfig:
    """A SigLIP vision tower's config from OpenMind's ``model.vision`` fields (no pooling head)."""
    return SiglipVisionConfig(
        image_size=img_size,
        patch_size=patch_size,
        hidden_size=embed_dim,
        num_hidden_layers=depth,
        num_attention_heads=num_heads,
        intermediate_size=mlp_dim,
        layer_norm_eps=layer_norm_eps,
        hidden_act="gelu_pytorch_tanh",
        vision_use_head=False,
    )


def random_siglip(config: SiglipVisionConfig, dtype: torch.dtype | None = None,
                  device: torch.device | None = None) -> SiglipVisionModel:
    """The one way a SigLIP tower with random weights is made, with SDPA attention (the encoder picks
    flash-attn at forward time).

    With ``dtype`` it is created directly in that dtype (recorded in ``config.dtype``, as
    ``from_pretrained`` does) and, with ``device``, directly on that device: no fp32 copy, no move.
    Without, in torch's default dtype and device, the config's ``dtype`` left as it is.
    """
    config._attn_implementation = "sdpa"
    with torch.device(device) if device is not None else contextlib.nullcontext():
        if dtype is None:
            return SiglipVisionModel(config)
        return SiglipVisionModel._from_config(config, dtype=dtype)


def kept_layers(depth: int, feature_layer: int) -> int:
    """How many encoder layers feed ``hidden_states[feature_layer]`` of a ``depth``-layer tower."""
    if feature_layer == 0 or not -depth <= feature_layer <= depth:
        raise ValueError(f"feature_layer {feature_layer} must be in 1..{depth} or -{depth}..-1")
    return feature_layer if feature_layer > 0 else depth + 1 + feature_layer


class ImprovedVisionEncoder(nn.Module):
    """SigLIP vision tower returning one hidden layer: ``[B, 3, H, W] -> [B, grid * grid, embed_dim]``."""

    def __init__(
        self,
        img_size: int = 384,
        patch_size: int = 14,
        embed_dim: int = 1152,
        depth: int = 27,
        num_heads: int = 16,
        mlp_dim: int = 4304,
        use_flash_attn: bool = True,
        qkv_bias: bool = True,
        layer_norm_eps: float = 1e-6,
        feature_layer: int = -2,
        attn_implementation: str | None = None,
        _siglip: SiglipVisionModel | None = None,
    ) -> None:
        super().__init__()
        if not qkv_bias:
            raise ValueError("ImprovedVisionEncoder: SigLIP always has qkv biases; qkv_bias=False is not supported")
        if _siglip is None:
            _siglip = random_siglip(siglip_config(img_size, patch_size, embed_dim, depth, num_heads, mlp_dim,
                                                  layer_norm_eps))
        cfg = _siglip.config
        self.img_size = cfg.image_size
        self.patch_size = cfg.patch_size
        self.embed_dim = cfg.hidden_size
        self.depth = cfg.num_hidden_layers
        self.num_heads = cfg.num_attention_heads
        self.grid = cfg.image_size // cfg.patch_size
        self.feature_layer = feature_layer
        self.use_flash_attn = use_flash_attn
        self.forced_backend = check_backend(attn_implementation) if attn_implementation else None
        self._fallback_logged = False

        keep = kept_layers(self.depth, feature_layer)
        _siglip.encoder.layers = _siglip.encoder.layers[:keep]
        _siglip.post_layernorm = nn.Identity()  # LLaVA reads hidden states before the final norm
        if getattr(_siglip, "head", None) is not None:
            del _siglip.head
        _siglip.use_head = False
        cfg.vision_use_head = False
        self.num_layers_run = keep
        self.siglip = _siglip
        self._set_backend(self.forced_backend or "sdpa")

    # ------------------------------------------------------------------ construction

    @classmethod
    def from_config(cls, vcfg, attn_implementation: str | None = None) -> "ImprovedVisionEncoder":
        """Build from a ``schemas.config.VisionConfig`` (random init; see ``from_pretrained``)."""
        return cls(
            img_size=vcfg.img_size,
            patch_size=vcfg.patch_size,
            embed_dim=vcfg.embed_dim,
            depth=vcfg.depth,
            num_heads=vcfg.num_heads,
            mlp_dim=vcfg.mlp_dim,
            use_flash_attn=vcfg.use_flash_attn,
            qkv_bias=vcfg.qkv_bias,
            layer_norm_eps=vcfg.layer_norm_eps,
            feature_layer=vcfg.feature_layer,
            attn_implementation=attn_implementation,
        )

    @classmethod
    def from_pretrained(
        cls,
        path_or_hub_id: str | Path,
        feature_layer: int = -2,
        use_flash_attn: bool = True,
        attn_implementation: str | None = None,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
    ) -> "ImprovedVisionEncoder":
        """Load SigLIP weights from a directory or hub id (full SigLIP or vision-only checkpoint).

        Loaded in ``dtype`` (default: the checkpoint's) straight onto ``device`` (default CPU): the
        weights are never materialised twice.
        """
        src = str(path_or_hub_id)
        kw = {"attn_implementation": "sdpa", "dtype": dtype if dtype is not None else "auto"}
        if device is not None and torch.device(device).type != "cpu":
            kw["device_map"] = str(device)
        verbosity = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()  # a full SigLIP checkpoint lists every text-tower key as unused
        unreachable = None
        try:
            with hub_access(src) as unreachable, hf_bars(weight_bytes(src)):
                siglip = SiglipVisionModel.from_pretrained(src, **kw)
        except (OSError, ValueError) as e:
            if unreachable:
                raise unreachable_error(f"a SigLIP vision tower from {src!r}", unreachable, "use a local directory") from e
            where = "local directory" if Path(src).exists() else "hub id (is the hub reachable? set HF_HUB_OFFLINE=0 or use a local path)"
            raise OSError(f"cannot load a SigLIP vision tower from {src!r} ({where}): {e}") from e
        finally:
            hf_logging.set_verbosity(verbosity)
        return cls(feature_layer=feature_layer, use_flash_attn=use_flash_attn,
                   attn_implementation=attn_implementation, _siglip=siglip)

    # ------------------------------------------------------------------ attention backend

    def _set_backend(self, name: str) -> None:
        self.siglip.config._attn_implementation = name
        self.backend = name

    def _choose_backend(self, x: torch.Tensor) -> None:
        if self.forced_backend:
            return
        dtype = self.siglip.embeddings.patch_embedding.weight.dtype
        if x.device.type in ("cuda", "cpu") and torch.is_autocast_enabled(x.device.type):
            dtype = torch.get_autocast_dtype(x.device.type)
        name, reason = select_backend(self.use_flash_attn, x.device, dtype)
        if reason and not self._fallback_logged:
            # one line per process and reason, not per model instance; on a CPU the fallback is expected
            level = logging.DEBUG if reason in _FALLBACKS_LOGGED or x.device.type != "cuda" else logging.INFO
            _FALLBACKS_LOGGED.add(reason)
            logger.log(level, "vision encoder: use_flash_attn=True but %s; using PyTorch SDPA", reason)
            self._fallback_logged = True
        if name != self.backend:
            self._set_backend(name)

    # ------------------------------------------------------------------ forward

    def gradient_checkpointing_enable(self) -> None:
        enable_checkpointing(self.siglip)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        if pixel_values.dim() != 4 or pixel_values.shape[1] != 3:
            raise ValueError(f"pixel_values must be [B, 3, H, W], got {tuple(pixel_values.shape)}")
        if pixel_values.shape[-2:] != (self.img_size, self.img_size):
            raise ValueError(
                f"pixel_values are {tuple(pixel_values.shape[-2:])}, the vision tower expects "
                f"{self.img_size} x {self.img_size} (preprocess with openmind_core.imaging.preprocess_images)"
            )
        self._choose_backend(pixel_values)
        hidden = self.siglip.embeddings(pixel_values)
        hidden = self.siglip.encoder(inputs_embeds=hidden).last_hidden_state
        return hidden
