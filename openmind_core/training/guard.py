"""Guarding a run: the gradient check and the loss-spike detector.

``clip_and_measure`` returns the norm BEFORE clipping (what ``clip_grad_norm_`` returns) as a
tensor (under FSDP2 the norm over all ranks' shards); the trainer reads it together with the step
loss in one device sync.  ``grad_ok`` decides
whether the step may be applied (finite and under the threshold); a refused step never calls
``optimizer.step()``, so parameters, Adam moments and Adam's step count stay untouched.

``SpikeDetector`` watches the unscaled step loss (normalised over the step's tokens, never divided
by the accumulation count): a loss above ``factor`` x the mean of the last ``window`` good losses,
or a non-finite loss, is bad; ``patience`` bad steps in a row make a spike whose onset is the first
of them.  Bad losses never enter the window.  Its state is saved in checkpoints so the window
survives a resume.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass

import torch


def clip_and_measure(params: Iterable[torch.nn.Parameter], max_norm: float, sharded: bool = False) -> torch.Tensor:
    """Clip gradients to ``max_norm`` and return the pre-clip total norm (a 0-d tensor, no sync).

    ``sharded=True`` (FSDP2, gradients are DTensors): the norm of the local shards is reduced
    across ranks (``full_tensor()``, what torchtitan does) before clipping, so every rank gets the
    same plain-tensor total norm and clips with it.
    """
    if not sharded:
        return torch.nn.utils.clip_grad_norm_(list(params), max_norm, error_if_nonfinite=False)
    from torch.distributed.tensor import DTensor

    params = list(params)
    total = torch.nn.utils.get_total_norm([p.grad for p in params if p.grad is not None], 2.0,
                                          error_if_nonfinite=False)
    if isinstance(total, DTensor):
        total = total.full_tensor()
    torch.nn.utils.clip_grads_with_norm_(params, max_norm, total)
    return total


def grad_ok(norm: float, threshold: float) -> tuple[bool, str]:
    if not math.isfinite(norm):
        return False, f"non-finite gradient norm ({norm})"
    if norm > threshold:
        return False, f"gradient norm {norm:.4g} above threshold {threshold:.4g}"
    return True, ""


@dataclass
class SpikeVerdict:
    bad: bool
    spike: bool
    onset: int | None
    mean: float | None


class SpikeDetector:
    def __init__(self, factor: float, window: int, patience: int) -> None:
        self.factor = factor
        self.window = window
        self.patience = patience
        self.history: deque[float] = deque(maxlen=window)
        self.bad_run: list[int] = []  # steps of the current run of bad losses

    def mean(self) -> float | None:
        return sum(self.history) / len(self.history) if self.history else None

    def check(self, step: int, loss: float) -> SpikeVerdict:
        """Classify ``loss`` at ``step`` without changing state (see ``commit``)."""
        mean = self.mean()
        full = len(self.history) >= self.window
        bad = (not math.isfinite(loss)) or (full and mean is not None and loss > self.factor * mean)
        run = self.bad_run + [step] if bad else []
        spike = bad and len(run) >= self.patience
        return SpikeVerdict(bad, spike, run[0] if spike else None, mean)

    def commit(self, step: int, loss: float, verdict: SpikeVerdict) -> None:
        """Record a loss whose step went ahead (not called for the spike step itself)."""
        if verdict.bad:
            self.bad_run.append(step)
        else:
            self.bad_run = []
            self.history.append(float(loss))

    def state_dict(self) -> dict:
        return {"history": list(self.history), "bad_run": list(self.bad_run)}

    def load_state_dict(self, state: dict) -> None:
        self.history = deque((float(x) for x in state.get("history", [])), maxlen=self.window)
        self.bad_run = [int(s) for s in state.get("bad_run", [])]
