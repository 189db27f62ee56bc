"""Mixed precision: resolve ``train.amp`` to an autocast dtype and an optional GradScaler.

``auto`` = bf16 autocast on CUDA devices that support bf16, fp16 autocast + ``torch.amp.GradScaler``
on older CUDA devices, and plain fp32 on CPU (bf16 autocast measured ~3x slower than fp32 on the
project's CPUs).  On CPU, 16-bit autocast happens only when asked for: ``amp: bf16``, or
``amp: fp16`` (CPU fp16 autocast with a CPU ``GradScaler``: slow, but the same loss-scaling path
as on CUDA, which is how the tests exercise it without a GPU).  fp16 always gets a GradScaler, on
either device.  Uses the ``torch.amp`` API (``torch.cuda.amp`` is deprecated).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import ContextManager

import torch


@dataclass(frozen=True)
class AmpSettings:
    name: str  # "bf16" | "fp16" | "off"
    dtype: torch.dtype | None
    device_type: str

    @property
    def enabled(self) -> bool:
        return self.dtype is not None

    @property
    def needs_scaler(self) -> bool:
        return self.dtype == torch.float16


def resolve_amp(amp: str, device: torch.device) -> AmpSettings:
    """Turn ``auto | bf16 | fp16 | off`` into concrete settings for ``device``."""
    dt = device.type
    if amp == "off":
        return AmpSettings("off", None, dt)
    if amp == "auto":
        if dt == "cuda":
            if torch.cuda.is_bf16_supported():
                return AmpSettings("bf16", torch.bfloat16, dt)
            return AmpSettings("fp16", torch.float16, dt)
        return AmpSettings("off", None, dt)
    if amp == "bf16":
        return AmpSettings("bf16", torch.bfloat16, dt)
    if amp == "fp16":
        return AmpSettings("fp16", torch.float16, dt)
    raise ValueError(f"train.amp must be auto, bf16, fp16 or off (got {amp!r})")


def autocast(settings: AmpSettings) -> ContextManager:
    """The autocast context for a forward pass (a no-op when amp is off)."""
    if not settings.enabled:
        return contextlib.nullcontext()
    return torch.autocast(device_type=settings.device_type, dtype=settings.dtype)


def make_scaler(settings: AmpSettings) -> torch.amp.GradScaler | None:
    """A ``torch.amp.GradScaler`` for the settings' device when the dtype is fp16, else None."""
    if not settings.needs_scaler:
        return None
    return torch.amp.GradScaler(settings.device_type)
