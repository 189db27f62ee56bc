"""ProductionTrainer: the loop and the step; the rest is Stateful state, a strategy, or a callback.

One loop for one process, or under torchrun with DDP or FSDP2 (``strategies/``, chosen by
``TrainConfig.strategy``).  Each optimizer step:

1. take ``grad_accum`` micro-batches, count their label tokens (``labels[:, 1:] != -100``, all
   ranks summed) BEFORE backward, and weight each micro-batch's mean loss by its share, so the step
   loss is the mean over all the step's tokens (not the mean of micro-batch means);
2. backward each (gradients synchronised only after the last: the strategy's ``micro_batch``);
3. clip and read the pre-clip norm (under FSDP2 reduced over all ranks' shards) together with the
   step loss in ONE device sync;
4. spike detector on the unscaled loss (``guard.SpikeDetector``) -> ``Rollback``; gradient check ->
   skip (no ``optimizer.step``: parameters, Adam moments and Adam's step count untouched; the LR
   schedule still advances); ``spike.max_skipped_in_row`` counted skips in a row -> ``Rollback``;
5. the callbacks (``callbacks/``): metrics.jsonl, console, progress, wandb; evaluation and
   ``best/`` every ``eval_steps``; a checkpoint every ``save_steps`` optimizer steps.

Every piece of state is Stateful and the ``CheckpointManager`` gets them by name (``states=``):
the trainable weights and the optimizer state (through the strategy, which gathers them under
FSDP), the LR scheduler, the GradScaler, ``TrainerState``, the settings in effect
(``resume.RunSettings``), the sampler (position and skip ledger), the spike detector's window, and
per rank the RNG states and the recent sample ids.  Resume is automatic: the newest valid
checkpoint in ``run_dir/checkpoints`` is restored and, with unchanged settings, the run continues
as the unbroken run would have (bit for bit); the settings given to a resume take effect
(``resume``), and so may another number of processes (``resume.adopt_world_size``).  Frozen
weights are not checkpointed: the caller must rebuild the model identically (same seed /
pretrained weights) before resuming.  A fresh run writes a step-0 checkpoint so a spike before the
first periodic checkpoint can still roll back (``callbacks.rollback``).  Loader randomness: the
DataLoader's worker seed comes from a generator seeded with (seed, epoch); datasets should derive
any augmentation randomness from the sample, not from worker RNG, for resumes to be exact.
"""

from __future__ import annotations

import itertools
import logging
import math
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from openmind_core import interrupt
from openmind_core.data.sampler import ResumableSampler
from openmind_core.data.token_batches import TokenBudgetBatches, sample_lengths
from openmind_core.training.batches import batch_slots, batch_tokens, label_tokens, to_device
from openmind_core.training.callbacks import (CallbackList, Checkpointer, ConsoleProgress, EveryStep, Evaluator, FinalModel,
                                              KillPoints, MetricsLog, ProgressReport, SpikeRollback, WandbLog)
from openmind_core.training.checkpoint import CheckpointManager
from openmind_core.training.distributed import device_for
from openmind_core.training.errors import Rollback, TrainingError
from openmind_core.training.fingerprint import run_fingerprint
from openmind_core.training.guard import SpikeDetector, grad_ok
from openmind_core.training.metrics import MetricsWriter
from openmind_core.training.optim import LearningRates, build_optimizer, total_optimizer_steps, warmup_steps
from openmind_core.training.precision import autocast, make_scaler, resolve_amp
from openmind_core.training.resume import RunSettings, adopt_world_size, apply_settings, state_restore_check
from openmind_core.training.rng import RNGState, seed_everything
from openmind_core.training.state import RecentSampleIds, TrainerState
from openmind_core.training.strategies import make_strategy
from openmind_core.training.summary import summary_line
from openmind_core.training.validation_loss import validation_loss
from schemas.artifacts import TrainingResult
from schemas.config import TrainConfig

log = logging.getLogger(__name__)

__all__ = ["ProductionTrainer", "TrainingError", "seed_everything", "summary_line"]


def _sample_ids_of(dataset: Any) -> list[str]:
    ids = getattr(dataset, "sample_ids", None)
    if ids is not None:
        return [str(s) for s in ids]
    return [str(dataset[i]["sample_id"]) for i in range(len(dataset))]


class ProductionTrainer:
    """Train ``model`` on map-style datasets; see the module docstring for the guarantees."""

    def __init__(self, model: torch.nn.Module, train_dataset: Any, val_dataset: Any, collate_fn: Callable,
                 cfg: TrainConfig, run_dir: str | Path, *, seed: int = 0,
                 fingerprint: dict[str, str] | None = None, progress: Callable[[dict], None] | None = None,
                 rank: int = 0, world_size: int = 1,
                 materialise: Callable[[torch.nn.Module], None] | None = None,
                 at_step: Callable[[dict], None] | None = None) -> None:
        self.cfg, self.run_dir, self.seed = cfg, Path(run_dir), seed
        self.rank, self.world, self.is_main = rank, world_size, rank == 0
        self.train_dataset, self.val_dataset, self.collate_fn = train_dataset, val_dataset, collate_fn
        self.progress, self.at_step = progress, at_step
        if cfg.deterministic:
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
            torch.use_deterministic_algorithms(True)
        self.device = device_for(int(os.environ.get("LOCAL_RANK", rank)))
        self.amp = resolve_amp(cfg.amp, self.device)
        self.strategy = make_strategy(cfg.strategy, world_size, rank, self.device, self.amp)
        self.module = self.strategy.place(model, materialise)  # FSDP: sharded before it reaches the device
        self.model: torch.nn.Module = self.strategy.wrap(self.module)  # what runs the training forward
        self.trainable = [(n, p) for n, p in self.module.named_parameters() if p.requires_grad]
        self.optimizer = build_optimizer(self.module, cfg)
        ids = _sample_ids_of(train_dataset)
        if len(ids) == 0:
            raise TrainingError("the training dataset is empty")
        self.sampler = ResumableSampler(ids, seed=seed, shuffle=True, rank=rank, world_size=world_size)
        self.budget = None  # train.max_tokens_per_batch: micro-batches of a variable number of samples
        if cfg.max_tokens_per_batch:
            self.budget = TokenBudgetBatches(self.sampler, sample_lengths(train_dataset), cfg.max_tokens_per_batch)
        self.total_steps = total_optimizer_steps(cfg, math.ceil(len(ids) / world_size),
                                                 [self.budget.epoch_batches(e) for e in range(cfg.epochs)]
                                                 if self.budget and cfg.max_steps is None else None)
        self.lrs = LearningRates(self.optimizer, cfg, self.total_steps)  # builds the LR scheduler
        self.scheduler = self.lrs.scheduler
        self.scaler = make_scaler(self.amp)
        self.detector = SpikeDetector.from_config(cfg.spike, start_step=warmup_steps(cfg, self.total_steps))
        self.state = TrainerState()
        self.recent_ids = RecentSampleIds()  # optimizer step -> this rank's sample ids (for rollbacks)
        self.settings = RunSettings(cfg, self.scheduler, self.total_steps)
        self.metrics = MetricsWriter(self.run_dir / "metrics.jsonl", enabled=self.is_main)
        self.fingerprint = run_fingerprint(self.trainable, len(ids), cfg, world_size, seed, fingerprint)
        states = {  # every piece of state, by the name the checkpoint layout gives it (checkpoint.py)
            "model": self.strategy.weights_state(self.module, self.trainable),
            "optimizer": self.strategy.optimizer_state(self.module, self.optimizer),
            "scheduler": self.scheduler, "scaler": self.scaler, "trainer": self.state, "settings": self.settings,
            "sampler": self.sampler, "detector": self.detector, "rng": RNGState(), "step_ids": self.recent_ids,
        }
        self.checkpoints = CheckpointManager(self.run_dir / "checkpoints", keep_last=cfg.keep_last, states=states,
                                             fingerprint=self.fingerprint, rank=rank)
        self.callbacks = CallbackList(self._callbacks())
        self.checkpoints.on_phase = self.callbacks.checkpoint_phase
        self.resumed_from: int | None = None
        self._tokens_run = self._slots_run = 0
        self._time_run = 0.0

    def _callbacks(self) -> list:
        """The callbacks in the order they run (``callbacks/__init__`` says why this order)."""
        self.checkpointer = Checkpointer(self.checkpoints, self.state, self.recent_ids, self.cfg, self.metrics)
        self.final = FinalModel(self.run_dir, self.strategy, self.module, self.metrics, lambda: state_restore_check(
            self.checkpoints, self.state, self.sampler, self.scheduler,
            None if self.strategy.sharded else self.optimizer))
        wandb = WandbLog(self.cfg, self.run_dir, enabled=self.is_main)
        report = self.progress is not None and self.is_main
        return [c for c in (
            MetricsLog(self.metrics),
            ConsoleProgress(self.state, self.total_steps, enabled=self.is_main),
            EveryStep(self.at_step) if self.at_step is not None else None,
            ProgressReport(self.progress, self.cfg, self.total_steps) if report else None,
            wandb,
            Evaluator(self.evaluate, self.state, self.cfg, self.strategy, self.module, self.run_dir / "best",
                      self.metrics, wandb),
            self.checkpointer,
            SpikeRollback(self.cfg, self.state, self.checkpoints, self.restore, self.checkpointer, self.sampler,
                          self.recent_ids, self.lrs, self.metrics),
            self.final,
            KillPoints.from_env(),
        ) if c is not None]

    @property
    def rollbacks(self):
        return self.state.rollbacks

    def evaluate(self) -> float | None:
        """Mean token loss over the validation dataset (every rank evaluates all of it)."""
        return validation_loss(self.module, self.val_dataset, self.collate_fn, self.cfg.micro_batch_size,
                               self.amp, self.device)

    def save_checkpoint(self) -> Path | None:
        return self.checkpointer.save()

    def restore(self, path: Path, resuming: bool) -> None:
        """Load checkpoint ``path`` into every state; this run's settings apply from its step on.

        ``resuming``: a new process picking the run up (settings changes are recorded); False for a
        rollback inside the same run."""
        loaded = self.checkpoints.load_states(path)
        apply_settings(self.state, self.lrs, self.settings.saved, self.cfg, resuming=resuming, path=path,
                       metrics=self.metrics)
        if loaded.world_change is not None:
            adopt_world_size(loaded.world_change, loaded.rank_files, self.state, self.sampler, self.recent_ids,
                             metrics=self.metrics, path=path, total_steps=self.total_steps,
                             saved_total=self.settings.saved.get("total_steps"))

    def _resume_or_start(self) -> None:
        path = self.checkpoints.find_resumable()
        if path is not None:
            self.restore(path, resuming=True)  # a refused resume (ResumeError) has written nothing
            self.metrics.truncate_after(self.state.step)  # keeps the events restore wrote at this step
            self.resumed_from = self.state.step
            self.metrics.event("resume", self.state.step, path=str(path))
            log.info("resumed from %s (step %d, epoch %d)", path, self.state.step, self.state.epoch)
        else:
            self.metrics.start_fresh()
            seed_everything(self.seed + self.rank)
            self.checkpointer.save()  # step 0: a rollback target before the first periodic checkpoint

    def _loader(self) -> DataLoader:
        state = self.state
        self.sampler.set_epoch(state.epoch, start=state.consumed, offset=state.epoch_offset)
        g = torch.Generator()
        g.manual_seed(self.seed * 1_000_003 + state.epoch)
        batching = {"batch_sampler": self.budget} if self.budget else \
            {"batch_size": self.cfg.micro_batch_size, "sampler": self.sampler, "drop_last": False}
        return DataLoader(self.train_dataset, **batching, collate_fn=self.collate_fn, num_workers=self.cfg.num_workers,
                          generator=g, worker_init_fn=interrupt.ignore_in_worker if self.cfg.num_workers else None,
                          pin_memory=self.device.type == "cuda")

    def _reached_end(self) -> bool:
        if self.cfg.max_steps is not None and self.state.step >= self.cfg.max_steps:
            return True
        return self.state.epoch >= self.cfg.epochs

    # ----------------------------------------------------------------------- the loop

    def _run_epochs(self) -> None:
        state = self.state
        while not self._reached_end():
            batches = iter(self._loader())
            while not self._reached_end():
                t0 = time.perf_counter()
                micro = list(itertools.islice(batches, self.cfg.grad_accum))
                if not micro:
                    break
                self._train_step(micro, data_time=time.perf_counter() - t0, t0=t0)
            else:
                return
            state.epoch += 1
            state.consumed = state.epoch_offset = 0
            self.callbacks.post_epoch(state.epoch - 1)

    def _train_step(self, micro: list[dict[str, Any]], data_time: float, t0: float) -> None:
        state, step = self.state, self.state.step + 1
        ids = [str(s) for b in micro for s in b.pop("sample_ids")]
        sizes = [sum(batch_tokens(b) for b in micro), sum(batch_slots(b) for b in micro)]
        loss, norm, tokens, slots = self._forward_backward(micro, step, sizes)
        if not math.isfinite(loss):
            state.nan_or_inf += 1
        verdict = self.detector.check(step, loss)
        if verdict.spike:
            self.optimizer.zero_grad(set_to_none=True)
            if self.scaler is not None:
                self.scaler.update()
            mean = f"{verdict.mean:.4g}" if verdict.mean is not None else "n/a"
            raise Rollback(step, verdict.onset or step, f"loss spike at step {step}: {loss:.4g} vs rolling mean "
                           f"{mean}: {verdict.why} (onset step {verdict.onset})", loss, ids)
        applied, why, counts = self._optimizer_step(norm)
        self.callbacks.post_optim_step(step)
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        self.detector.commit(step, loss, verdict)
        if not applied:
            log.warning("step %d skipped: %s", step, why)
        cap = self.cfg.spike.max_skipped_in_row
        onset = state.count_update(step, applied, counts, cap)
        if onset is not None:
            raise Rollback(step, onset, f"{cap} skipped steps in a row (last: {why})", loss, ids)
        state.finish_step(step, len(ids), self.world, loss)
        self.recent_ids.record(step, ids)
        self.callbacks.post_step(self._step_record(step, loss, norm, applied, tokens, slots, data_time, t0))

    def _forward_backward(self, micro: list[dict[str, Any]], step: int,
                          sizes: list[int]) -> tuple[float, float, int, int]:
        """Token-weighted loss over the step's micro-batches, backward, clip: (loss, pre-clip norm, input tokens,
        slots); ``sizes``: this rank's [input tokens, slots], summed over the ranks with the label tokens."""
        counts = [label_tokens(b) for b in micro]
        weights = [float(c) for c in counts] if all(c is not None for c in counts) else [1.0] * len(micro)
        total, tokens, slots = self.strategy.global_sums([sum(weights), *sizes])
        total = total if total > 0 else 1.0
        loss_sum = torch.zeros((), dtype=torch.float32, device=self.device)
        for i, batch in enumerate(micro):
            batch = to_device(batch, self.device)
            last = i == len(micro) - 1
            with self.strategy.micro_batch(self.model, last):
                with autocast(self.amp):
                    out = self.model(**batch)
                loss = out.loss.float()
                scaled = loss * (weights[i] * self.world / total)
                (self.scaler.scale(scaled) if self.scaler is not None else scaled).backward()
            loss_sum += loss.detach() * weights[i]
            self.callbacks.post_micro_batch(step, i, last)
        self.strategy.sum_over_ranks_(loss_sum)
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        norm_t = self.strategy.clip_and_measure((p for _, p in self.trainable), self.cfg.clip_grad_norm)
        loss_val, norm_val = torch.stack([loss_sum / total, norm_t.detach().float().to(self.device)]).tolist()
        return loss_val, norm_val, int(tokens), int(slots)

    def _optimizer_step(self, norm: float) -> tuple[bool, str, bool]:
        """optimizer.step() unless the gradient check refuses: (applied, why not, counts toward a rollback)."""
        ok, why = grad_ok(norm, self.cfg.spike.grad_norm_threshold)
        counts = True
        if self.scaler is not None:
            if not math.isfinite(norm):
                self.scaler.step(self.optimizer)  # finds the inf and skips, as usual for fp16
                counts = False
            elif ok:
                self.scaler.step(self.optimizer)
            self.scaler.update()
        elif ok:
            self.optimizer.step()
        return ok, why, counts

    def _step_record(self, step: int, loss: float, norm: float, applied: bool, tokens: int, slots: int,
                     data_time: float, t0: float) -> dict[str, Any]:
        """The step's metrics.jsonl line (``tokens``/``slots``: all ranks'); adds the step to this process's throughput."""
        step_time = time.perf_counter() - t0
        tps = tokens / step_time if step_time > 0 else 0.0
        self._tokens_run += tokens
        self._slots_run += slots
        self._time_run += step_time
        return {"step": step, "epoch": self.state.epoch, "loss": loss, "lr": self.scheduler.get_last_lr()[0],
                "grad_norm": norm, "data_time": round(data_time, 6), "step_time": round(step_time, 6),
                "tokens_per_s": round(tps, 2), "tokens": tokens, "slots": slots, "skipped": not applied}

    # ----------------------------------------------------------------------- entry point

    def train(self) -> TrainingResult:
        """Run (or resume) training to the end; returns the TrainingResult."""
        t_start = time.time()
        self.run_dir.mkdir(parents=True, exist_ok=True)
        try:
            self.callbacks.on_start()
            if self.device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(self.device)
            self._resume_or_start()
            self.callbacks.pre_train()
            self.module.train()
            while True:
                try:
                    self._run_epochs()
                    break
                except Rollback as signal:
                    self.callbacks.on_rollback(signal)
                    self.callbacks.post_rollback()
            self.callbacks.finish()
            return self._result(t_start)
        finally:
            self.callbacks.close()
            self.metrics.close()

    def _result(self, t_start: float) -> TrainingResult:
        state = self.state
        recent = [x for x in state.recent_losses if math.isfinite(x)]
        tps = self._tokens_run / self._time_run if self._time_run else None
        self.callbacks.post_train({"step": state.step, "total_steps": self.total_steps, "epoch": state.epoch,
                                   "loss": recent[-1] if recent else None, "lr": self.scheduler.get_last_lr()[0],
                                   "tokens_per_s": tps, "done": True})
        best = self.run_dir / "best"
        result = TrainingResult(
            run_dir=str(self.run_dir), checkpoints_dir=str(self.checkpoints.root),
            best_dir=str(best) if best.exists() else None, final_dir=str(self.final.final_dir),
            metrics_path=str(self.metrics.path), loss_curve=str(self.final.curve) if self.final.curve else None,
            steps=state.step, epochs_completed=state.epoch, samples_seen=state.samples_seen,
            first_loss=state.first_loss, last_loss=sum(recent) / len(recent) if recent else None,
            first_val_loss=state.first_val, best_val_loss=state.best_val, final_val_loss=state.last_val,
            val_losses=list(state.val_losses), nan_or_inf_losses=state.nan_or_inf, skipped_steps=state.skipped_steps,
            rollbacks=list(state.rollbacks), resumed_from_step=self.resumed_from,
            settings_changes=list(state.settings_changes), state_restore_checked=self.final.restore_ok,
            wall_seconds=time.time() - t_start, tokens_per_second=tps, tokens=self._tokens_run, slots=self._slots_run,
            pad_fraction=1.0 - self._tokens_run / self._slots_run if self._slots_run else None,
            peak_memory_bytes=torch.cuda.max_memory_allocated(self.device) if self.device.type == "cuda" else None,
            device=str(self.device), amp=self.amp.name,
            checkpoints=[str(self.checkpoints.path(s)) for s in self.checkpoints.steps()],
        )
        if self.is_main:
            log.info("%s", summary_line(result))
        return result
