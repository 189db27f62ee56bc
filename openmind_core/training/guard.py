"""Guarding a run: the gradient check and the loss-spike detector.

``clip_and_measure`` returns the norm BEFORE clipping (what ``clip_grad_norm_`` returns) as a
tensor (under FSDP2 the norm over all ranks' shards); the trainer reads it together with the step
loss in one device sync.  ``grad_ok`` decides
whether the step may be applied (finite and under the threshold); a refused step never calls
``optimizer.step()``, so parameters, Adam moments and Adam's step count stay untouched.

``SpikeDetector`` watches the unscaled step loss (normalised over the step's tokens, never divided
by the accumulation count): a z-score against a rolling window with a floor on the deviation,
confirmed over ``patience`` steps, after the warm-up; see its docstring for what it follows.
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
    from torch.distributed.tensor import DTensor  # imported here: start-up cost (FSDP only)

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
    z: float | None = None  # deviations above the rolling mean (None: not judged)
    why: str = ""


class SpikeDetector:
    """A loss-spike detector that spares clean runs.

    What it follows:

    * OLMo-core's ``SkipStepOptimizer`` (``olmo_core/optim/skip_step_optimizer.py``): the z-score
      of the step loss against the mean and standard deviation of a rolling window of the previous
      losses (128 there), 6 sigma by default, and no verdict until enough history exists (there
      ``max(20, window // 2)`` losses): ``z_threshold``, ``window``, ``min_history``;
    * llm-foundry's ``KillLossSpike`` callback: an outlier acts only after ``patience``
      consecutive outlier steps (4 there; 8 here: clean digit scans at micro-batch 8 showed a bump
      of 4 steps at 9-13 sigma that recovered by itself within 10 steps, and a divergence stays),
      so noisy batches and self-recovering bumps are never a spike; the delay costs nothing, the
      rollback goes back to before the onset;
    * Megatron-LM's check of a loss far above anything seen recently (10x the max there): a single
      loss above ``factor`` x the largest loss in the window, or a non-finite loss, is a spike at
      once (a poisoned batch; NaN);
    * a floor on the deviation, ``max(std, rel_floor x mean)``: on a flat window (memorised data,
      std near 0) small wiggles are not many sigmas.

    The statistic is the z-score of the raw step loss; the confirmation over ``patience`` steps
    plays the part a smoothed loss would (a smoothed loss dilutes and delays a short spike and blurs
    its onset).  Steps up to ``start_step`` (the LR warm-up) are neither judged nor recorded: the
    fast early fall would only inflate the deviation.  Bad losses never enter the window; a spike's
    onset is the first step of its run of bad losses.  The state is saved in checkpoints so the
    window survives a resume.
    """

    def __init__(self, z_threshold: float = 6.0, window: int = 64, patience: int = 8, *, min_history: int = 16,
                 rel_floor: float = 0.05, factor: float = 10.0, start_step: int = 0) -> None:
        self.z_threshold, self.window, self.patience = z_threshold, window, patience
        self.min_history = min(min_history, window)
        self.rel_floor, self.factor, self.start_step = rel_floor, factor, start_step
        self.history: deque[float] = deque(maxlen=window)
        self.bad_run: list[int] = []  # steps of the current run of bad losses

    @classmethod
    def from_config(cls, spike, start_step: int = 0) -> "SpikeDetector":
        """From a ``schemas.config.SpikeConfig``."""
        return cls(spike.z_threshold, spike.window, spike.patience, min_history=spike.min_history,
                   rel_floor=spike.rel_floor, factor=spike.factor, start_step=start_step)

    def mean(self) -> float | None:
        return sum(self.history) / len(self.history) if self.history else None

    def check(self, step: int, loss: float) -> SpikeVerdict:
        """Classify ``loss`` at ``step`` without changing state (see ``commit``)."""
        mean = self.mean()
        if not math.isfinite(loss):
            run = self.bad_run + [step]
            return SpikeVerdict(True, True, run[0], mean, None, f"non-finite loss ({loss})")
        if step <= self.start_step or len(self.history) < self.min_history or mean is None:
            return SpikeVerdict(False, False, None, mean)
        n = len(self.history)
        std = math.sqrt(sum((x - mean) ** 2 for x in self.history) / (n - 1)) if n > 1 else 0.0
        dev = max(std, self.rel_floor * abs(mean), 1e-12)
        z = (loss - mean) / dev
        top = max(self.history)
        if loss > self.factor * top:
            run = self.bad_run + [step]
            return SpikeVerdict(True, True, run[0], mean, z, f"{loss:.4g} is above {self.factor:g} x the window's "
                                f"largest loss {top:.4g}")
        bad = z > self.z_threshold
        run = self.bad_run + [step] if bad else []
        spike = bad and len(run) >= self.patience
        why = (f"{len(run)} steps in a row more than {self.z_threshold:g} deviations above the rolling mean "
               f"{mean:.4g} (this one {z:.1f})") if spike else ""
        return SpikeVerdict(bad, spike, run[0] if spike else None, mean, z, why)

    def commit(self, step: int, loss: float, verdict: SpikeVerdict) -> None:
        """Record a loss whose step went ahead (not called for the spike step itself)."""
        if verdict.bad:
            self.bad_run.append(step)
            return
        self.bad_run = []
        if step > self.start_step and math.isfinite(loss):
            self.history.append(float(loss))

    def state_dict(self) -> dict:
        return {"history": list(self.history), "bad_run": list(self.bad_run)}

    def load_state_dict(self, state: dict) -> None:
        self.history = deque((float(x) for x in state.get("history", [])), maxlen=self.window)
        self.bad_run = [int(s) for s in state.get("bad_run", [])]


def replay(losses: list[float], detector: SpikeDetector) -> list[tuple[int, int, str]]:
    """Run ``detector`` over a loss trace (step 1 = ``losses[0]``) as the trainer would, without a
    rollback: every spike's (step, onset, reason); after a spike the bad run starts afresh."""
    out = []
    for step, loss in enumerate(losses, start=1):
        v = detector.check(step, loss)
        if v.spike:
            out.append((step, v.onset or step, v.why))
            detector.bad_run = []
            continue
        detector.commit(step, loss, v)
    return out
