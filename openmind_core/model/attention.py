"""Attention backend selection for the vision and language towers.

flash-attn 2 is used only when the ``flash_attn`` package imports, the tensors are on CUDA and the
dtype is fp16/bf16; in every other case PyTorch's SDPA (which itself picks flash / memory-efficient
kernels on CUDA and a fused kernel on CPU).  A caller that asked for flash attention and cannot
have it gets one log line per module instance, never an error.
"""

from __future__ import annotations

import importlib.util
import logging
from functools import lru_cache

import torch

logger = logging.getLogger(__name__)

BACKENDS = ("flash_attention_2", "sdpa", "eager")


@lru_cache(maxsize=1)
def flash_attn_available() -> bool:
    """True when the optional ``flash_attn`` package is importable."""
    return importlib.util.find_spec("flash_attn") is not None


def flash_attn_unusable_reason(device: torch.device, dtype: torch.dtype) -> str | None:
    """Why flash-attn 2 cannot run on ``device``/``dtype`` (None: it can)."""
    if not flash_attn_available():
        return "the flash_attn package is not installed"
    if device.type != "cuda":
        return f"tensors are on {device.type}, flash-attn needs CUDA"
    if dtype not in (torch.float16, torch.bfloat16):
        return f"dtype is {dtype}, flash-attn needs float16 or bfloat16"
    return None


def select_backend(use_flash_attn: bool, device: torch.device, dtype: torch.dtype) -> tuple[str, str | None]:
    """(transformers ``attn_implementation``, reason flash was refused or None)."""
    if not use_flash_attn:
        return "sdpa", None
    reason = flash_attn_unusable_reason(device, dtype)
    return ("sdpa", reason) if reason else ("flash_attention_2", None)


def check_backend(name: str) -> str:
    if name not in BACKENDS:
        raise ValueError(f"attn_implementation {name!r} is not one of {BACKENDS}")
    return name
