"""RNG state for bit-exact resumes: Python, numpy, torch and CUDA states as weights_only-loadable objects.

``RNGState`` is the Stateful face of ``capture_rng`` / ``restore_rng``: one per process, saved in
that rank's ``rank-<R>.pt``, so every rank resumes its own dropout and augmentation draws.
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch


def capture_rng() -> dict[str, Any]:
    """Every RNG state a training step may draw from (dropout, augmentation, the sampler's helpers)."""
    ver, pstate, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    out: dict[str, Any] = {
        "python_version": ver, "python_state": torch.tensor(pstate, dtype=torch.int64), "python_gauss": gauss,
        "numpy_name": name, "numpy_keys": torch.from_numpy(keys.astype(np.int64)), "numpy_pos": int(pos),
        "numpy_has_gauss": int(has_gauss), "numpy_cached": float(cached),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        out["cuda"] = torch.cuda.get_rng_state_all()
    return out


def restore_rng(s: dict[str, Any]) -> None:
    random.setstate((s["python_version"], tuple(s["python_state"].tolist()), s["python_gauss"]))
    np.random.set_state((s["numpy_name"], s["numpy_keys"].numpy().astype(np.uint32), s["numpy_pos"],
                         s["numpy_has_gauss"], s["numpy_cached"]))
    torch.set_rng_state(s["torch"])
    if "cuda" in s and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(s["cuda"])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class RNGState:
    """Stateful: this process's RNG states (``capture_rng`` on save, ``restore_rng`` on load)."""

    def state_dict(self) -> dict[str, Any]:
        return capture_rng()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        restore_rng(state)
