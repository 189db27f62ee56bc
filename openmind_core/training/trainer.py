"""ProductionTrainer: AdamW + cosine warmup, amp, accumulation, guards, crash-safe resume, rollback.

One loop for one process, or under torchrun with DDP or FSDP2 (``TrainConfig.strategy``: ``auto``
= DDP when ``world_size > 1``; ``fsdp`` shards the model with ``distributed.shard_model`` — LM
decoder layers, LM, then the root — before the optimizer is built).  Each optimizer step:

1. take ``grad_accum`` micro-batches, count their label tokens (``labels[:, 1:] != -100``, all
   ranks summed) BEFORE backward, and weight each micro-batch's mean loss by its share, so the step
   loss is the mean over all the step's tokens (not the mean of micro-batch means);
2. backward each (no gradient sync on all but the last micro-batch: DDP's ``no_sync``, FSDP2's
   ``set_requires_gradient_sync(False)``);
3. clip and read the pre-clip norm (under FSDP2 reduced over all ranks' shards) together with the
   step loss in ONE device sync;
4. spike detector on the unscaled loss (``guard.SpikeDetector``) -> roll back; gradient check ->
   skip (no ``optimizer.step``: parameters, Adam moments and Adam's step count untouched; the LR
   schedule still advances);
5. log (metrics.jsonl, tqdm, progress callback, wandb); evaluate every ``eval_steps``; checkpoint
   every ``save_steps`` optimizer steps (never on micro-batches, never at step 0's loop entry).

Resume is automatic: the newest valid checkpoint in ``run_dir/checkpoints`` is restored (weights,
optimizer, scheduler, scaler, RNG, loader position, skip ledger, spike window) and, with
unchanged settings, the run continues as the unbroken run would have.  Frozen weights are not checkpointed: the caller must
rebuild the model identically (same seed / pretrained weights) before resuming.  A fresh run
writes a step-0 checkpoint so a spike before the first periodic checkpoint can still roll back.
Under FSDP2 every rank joins the gathers (``distributed.full_model_state_dict`` /
``full_optimizer_state_dict``) and rank 0 writes the same files as one process would, so a
checkpoint resumes under DDP or FSDP alike, and with another number of processes: a changed world
size (and with it, if wanted, micro_batch_size / grad_accum) is resumed with a warning and a
``world_size_changed`` metrics event; the job's global position in the epoch is resharded over the
new ranks (``epoch_offset``), so no sample of that epoch is seen twice or skipped, but the data
order and the global batch then differ from an uninterrupted run.  Under FSDP loads broadcast from
rank 0, and the model is sharded before it reaches the device (``distributed.shard_model``: each
rank materialises only its shards; ``materialise=`` fills parameters built on the meta device).
``best/`` and ``final/`` of a sharded model are written from a gathered full state dict
(``save_model_dir(..., state_dict=...)``).  fp16 + FSDP is refused (use bf16).

The settings given to a resume take effect (new LRs, a rebuilt LR schedule, ...; see
``resume``), each change a ``settings_changed`` event.  Rollback: see ``rollback``.  Loader
randomness: the DataLoader's worker seed comes from a generator seeded with (seed, epoch); datasets
should derive any augmentation randomness from the sample, not from worker RNG, for resumes to be
exact.

The parts live in their own modules: ``state`` (the typed ``TrainerState``), ``rng``,
``evaluation``, ``rollback``, ``resume`` (checkpoint contents, restore, new settings,
``check_resume``), ``checkpoint`` (the crash-safe files), ``guard``, ``optim``, ``precision``,
``distributed``, ``metrics``.  This file is the loop.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from openmind_core.data.sampler import ResumableSampler
from openmind_core.training import distributed as D
from openmind_core.training.checkpoint import CheckpointManager, kill_point, save_model_dir
from openmind_core.training.evaluation import batch_tokens, label_tokens, to_device, validation_loss
from openmind_core.training.guard import SpikeDetector, clip_and_measure, grad_ok
from openmind_core.training.metrics import MetricsWriter, WandbLogger, plot_loss_curve
from openmind_core.training.optim import (build_optimizer, build_scheduler, schedule_of, set_schedule,
                                          total_optimizer_steps, warmup_steps)
from openmind_core.training.precision import autocast, make_scaler, resolve_amp
from openmind_core.training.resume import (restore_trainer_checkpoint, save_trainer_checkpoint,
                                           state_restore_check)
from openmind_core.training.rng import seed_everything
from openmind_core.training.rollback import Rollback, TrainingError, roll_back
from openmind_core.training.state import TrainerState
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
                 materialise: Callable[[torch.nn.Module], None] | None = None) -> None:
        self.cfg, self.run_dir, self.seed = cfg, Path(run_dir), seed
        self.rank, self.world, self.is_main = rank, world_size, rank == 0
        self.train_dataset, self.val_dataset, self.collate_fn = train_dataset, val_dataset, collate_fn
        self.progress = progress
        if cfg.deterministic:
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
            torch.use_deterministic_algorithms(True)
        self.device = D.device_for(int(os.environ.get("LOCAL_RANK", rank)))
        self.amp = resolve_amp(cfg.amp, self.device)
        self.strategy = D.resolve_strategy(cfg.strategy, world_size)
        if cfg.strategy == "fsdp" and world_size == 1:
            log.info("train.strategy=fsdp with one process: nothing to shard, training unsharded")
        if world_size > 1 and not D.is_distributed():
            raise TrainingError(f"world_size={world_size} but torch.distributed is not initialised: "
                                "call openmind_core.training.distributed.init_from_env() under torchrun")
        if self.strategy == "fsdp" and self.amp.name == "fp16":
            raise TrainingError("train.strategy=fsdp with fp16: GradScaler's overflow check is per rank "
                                "and not supported with FSDP2 shards here; set train.amp to bf16 (or off)")
        self.fsdp = self.strategy == "fsdp"
        if self.fsdp:  # shard first: each rank puts only its shards on the device, never the model
            self.module = D.shard_model(model, device=self.device, materialise=materialise)
        else:
            self.module = D.place_model(model, self.device, materialise=materialise)
        self.model: torch.nn.Module = D.wrap_ddp(self.module, self.device) if self.strategy == "ddp" else self.module
        self.trainable = [(n, p) for n, p in self.module.named_parameters() if p.requires_grad]
        self.optimizer = build_optimizer(self.module, cfg)
        # the settings' own hyperparameters per group: a resume applies them over the checkpoint's
        self.group_settings = [{k: g[k] for k in ("lr", "weight_decay", "betas")} for g in self.optimizer.param_groups]
        ids = _sample_ids_of(train_dataset)
        if len(ids) == 0:
            raise TrainingError("the training dataset is empty")
        self.sampler = ResumableSampler(ids, seed=seed, shuffle=True, rank=rank, world_size=world_size)
        self.total_steps = total_optimizer_steps(cfg, math.ceil(len(ids) / world_size))
        self.scheduler = build_scheduler(self.optimizer, cfg, self.total_steps)
        self.scaler = make_scaler(self.amp)
        self.detector = SpikeDetector.from_config(cfg.spike, start_step=warmup_steps(cfg, self.total_steps))
        self.ckpt = CheckpointManager(self.run_dir / "checkpoints", keep_last=cfg.keep_last)
        self.metrics = MetricsWriter(self.run_dir / "metrics.jsonl", enabled=self.is_main)
        shapes = ";".join(f"{n}:{tuple(p.shape)}:{p.dtype}" for n, p in self.trainable)
        self.fingerprint = {
            "trainable_params": hashlib.sha256(shapes.encode()).hexdigest()[:16],
            "train_samples": str(len(ids)),
            "batch": f"{cfg.micro_batch_size}x{cfg.grad_accum}",
            "world_size": str(world_size),  # may change on resume (full state dicts); see resume.adopt_world_size
            "seed": str(seed),
            **{k: str(v) for k, v in (fingerprint or {}).items()},
        }
        self.state = TrainerState()
        self.step_ids: dict[int, list[str]] = {}  # optimizer step -> this rank's sample ids (for rollbacks)
        self.resumed_from: int | None = None
        self._pbar: tqdm | None = None
        self._tokens_run = 0
        self._time_run = 0.0

    @property
    def rollbacks(self):
        return self.state.rollbacks

    # ----------------------------------------------------------------------- pieces the loop calls

    def base_lrs(self, scale: float) -> list[float]:
        return [g["lr"] * scale for g in self.group_settings]

    def set_lrs(self) -> None:
        """The configured LRs x the rollbacks' scale, on the current schedule."""
        set_schedule(self.optimizer, self.scheduler, schedule_of(self.scheduler), self.base_lrs(self.state.lr_scale))

    def save_checkpoint(self) -> None:
        save_trainer_checkpoint(self)

    def restore(self, path: Path, resuming: bool) -> None:
        restore_trainer_checkpoint(self, path, resuming)

    def evaluate(self) -> float | None:
        """Mean token loss over the validation dataset (every rank evaluates all of it)."""
        return validation_loss(self.module, self.val_dataset, self.collate_fn, self.cfg.micro_batch_size,
                               self.amp, self.device)

    def _save_model_dir(self, dest: Path) -> None:
        """Rank 0 writes the whole model; under FSDP from a full state dict every rank helps gather."""
        full = D.full_model_state_dict(self.module) if self.fsdp else None
        if self.is_main:
            save_model_dir(self.module, dest, state_dict=full)

    def _evaluate_and_keep_best(self) -> None:
        st = self.state
        val = self.evaluate()
        st.last_eval_step = st.step
        if val is None:
            return
        st.last_val = val
        st.val_losses = st.val_losses + [val]
        if st.first_val is None:
            st.first_val = val
        is_best = math.isfinite(val) and (st.best_val is None or val < st.best_val)
        if self.fsdp:  # the save below is collective: all ranks must take the same branch
            is_best = D.broadcast_object(is_best)
        if is_best:
            st.best_val, st.best_step = val, st.step
            self._save_model_dir(self.run_dir / "best")
        self.metrics.event("eval", st.step, val_loss=val, best=is_best)
        self.wandb.log({"val/loss": val}, step=st.step)

    def _setup(self) -> None:
        if self.is_main:
            self.ckpt.cleanup_stale()
        D.barrier()
        path = self.ckpt.latest_valid() if self.is_main else None
        path = D.broadcast_object(str(path) if path else None)
        if path is not None:
            self.restore(Path(path), resuming=True)  # a refused resume (ResumeError) has written nothing
            self.metrics.truncate_after(self.state.step)  # keeps the events restore wrote at this step
            self.resumed_from = self.state.step
            self.metrics.event("resume", self.state.step, path=path)
            log.info("resumed from %s (step %d, epoch %d)", path, self.state.step, self.state.epoch)
        else:
            if self.is_main and self.metrics.path.exists():
                self.metrics.path.unlink()
            seed_everything(self.seed + self.rank)
            self.save_checkpoint()  # step 0: a rollback target before the first periodic checkpoint

    def _loader(self) -> DataLoader:
        st = self.state
        self.sampler.set_epoch(st.epoch, start=st.consumed, offset=st.epoch_offset)
        g = torch.Generator()
        g.manual_seed(self.seed * 1_000_003 + st.epoch)
        return DataLoader(self.train_dataset, batch_size=self.cfg.micro_batch_size, sampler=self.sampler,
                          collate_fn=self.collate_fn, num_workers=self.cfg.num_workers, generator=g,
                          pin_memory=self.device.type == "cuda", drop_last=False)

    def _done(self) -> bool:
        if self.cfg.max_steps is not None and self.state.step >= self.cfg.max_steps:
            return True
        return self.state.epoch >= self.cfg.epochs

    # ----------------------------------------------------------------------- the loop

    def _run_epochs(self) -> None:
        st = self.state
        while not self._done():
            it = iter(self._loader())
            while not self._done():
                t0 = time.perf_counter()
                micro = []
                for _ in range(self.cfg.grad_accum):
                    try:
                        micro.append(next(it))
                    except StopIteration:
                        break
                if not micro:
                    break
                self._train_step(micro, data_time=time.perf_counter() - t0, t0=t0)
            else:
                return
            st.epoch += 1
            st.consumed = st.epoch_offset = 0
            kill_point("epoch-end", st.epoch - 1)  # test-only

    def _forward_backward(self, micro: list[dict[str, Any]], step: int) -> tuple[float, float, list[float]]:
        """Token-weighted loss over the step's micro-batches, backward, clip: (loss, pre-clip norm, weights)."""
        counts = [label_tokens(b) for b in micro]
        local = [float(c) for c in counts] if all(c is not None for c in counts) else [1.0] * len(micro)
        total = float(D.all_reduce_sum(torch.tensor([sum(local)], dtype=torch.float64))[0]) if self.world > 1 else sum(local)
        total = total if total > 0 else 1.0
        loss_sum = torch.zeros((), dtype=torch.float32, device=self.device)
        ddp = self.world > 1 and not self.fsdp
        for i, batch in enumerate(micro):
            batch = to_device(batch, self.device)
            last = i == len(micro) - 1
            if self.fsdp:
                self.module.set_requires_gradient_sync(last)  # reduce-scatter only after the last micro-batch
            with self.model.no_sync() if ddp and not last else contextlib.nullcontext():
                with autocast(self.amp):
                    out = self.model(**batch)
                loss = out.loss.float()
                scaled = loss * (local[i] * self.world / total)
                (self.scaler.scale(scaled) if self.scaler is not None else scaled).backward()
            loss_sum += loss.detach() * local[i]
            if i == 0 and not last:
                kill_point("micro", step)  # test-only: crash mid-accumulation
        if self.world > 1:
            D.all_reduce_sum(loss_sum)
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        norm_t = clip_and_measure((p for _, p in self.trainable), self.cfg.clip_grad_norm, sharded=self.fsdp)
        loss_val, norm_val = torch.stack([loss_sum / total, norm_t.detach().float().to(self.device)]).tolist()
        return loss_val, norm_val, local

    def _apply(self, norm: float) -> tuple[bool, str, bool]:
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

    def _train_step(self, micro: list[dict[str, Any]], data_time: float, t0: float) -> None:
        st, spike = self.state, self.cfg.spike
        step = st.step + 1
        ids = [str(s) for b in micro for s in b.pop("sample_ids")]
        tokens = sum(batch_tokens(b) for b in micro)
        loss, norm, _ = self._forward_backward(micro, step)
        if not math.isfinite(loss):
            st.nan_or_inf += 1
        verdict = self.detector.check(step, loss)
        if verdict.spike:
            self.optimizer.zero_grad(set_to_none=True)
            if self.scaler is not None:
                self.scaler.update()
            mean = f"{verdict.mean:.4g}" if verdict.mean is not None else "n/a"
            raise Rollback(step, verdict.onset or step, f"loss spike at step {step}: {loss:.4g} vs rolling mean "
                           f"{mean}: {verdict.why} (onset step {verdict.onset})", loss, ids)
        ok, why, counts = self._apply(norm)
        kill_point("step", step)  # test-only: crash mid-step (after the update, before bookkeeping)
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        self.detector.commit(step, loss, verdict)
        if ok:
            st.skipped_in_row, st.skipped_run_start = 0, None
        else:
            st.skipped_steps += 1
            log.warning("step %d skipped: %s", step, why)
            if counts:
                st.skipped_in_row += 1
                st.skipped_run_start = st.skipped_run_start or step
                if st.skipped_in_row >= spike.max_skipped_in_row:
                    onset = st.skipped_run_start
                    st.skipped_in_row, st.skipped_run_start = 0, None
                    raise Rollback(step, onset, f"{spike.max_skipped_in_row} skipped steps in a row "
                                   f"(last: {why})", loss, ids)
        st.step = step
        st.consumed += len(ids)
        st.samples_seen += len(ids) * self.world
        self.step_ids[step] = ids
        st.record_loss(loss)
        self._log_step(step, loss, norm, ok, tokens, data_time, t0)
        if step % self.cfg.eval_steps == 0:
            self._evaluate_and_keep_best()
        if step % self.cfg.save_steps == 0:
            self.save_checkpoint()

    def _log_step(self, step: int, loss: float, norm: float, ok: bool, tokens: int, data_time: float,
                  t0: float) -> None:
        step_time = time.perf_counter() - t0
        tps = tokens * self.world / step_time if step_time > 0 else 0.0
        self._tokens_run += tokens * self.world
        self._time_run += step_time
        lr = self.scheduler.get_last_lr()[0]
        rec = {"step": step, "epoch": self.state.epoch, "loss": loss, "lr": lr, "grad_norm": norm,
               "data_time": round(data_time, 6), "step_time": round(step_time, 6), "tokens_per_s": round(tps, 2),
               "skipped": not ok}
        self.metrics.write(rec)
        if self._pbar is not None:
            self._pbar.update(1)
            self._pbar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}", tok_s=f"{tps:.0f}", s=f"{step_time:.2f}")
        if step % self.cfg.log_every == 0:
            if self.progress is not None and self.is_main:
                self.progress({**rec, "total_steps": self.total_steps})
            self.wandb.log({f"train/{k}": v for k, v in rec.items() if isinstance(v, (int, float))}, step=step)

    # ----------------------------------------------------------------------- entry point

    def train(self) -> TrainingResult:
        """Run (or resume) training to the end; returns the TrainingResult."""
        t_start = time.time()
        self.run_dir.mkdir(parents=True, exist_ok=True)
        wb = self.cfg.wandb
        self.wandb = WandbLogger(wb.mode, wb.project, wb.name, self.run_dir, self.cfg.model_dump(mode="json"),
                                 enabled=self.is_main)
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        try:
            self._setup()
            self._pbar = tqdm(total=self.total_steps, initial=self.state.step, desc="train", file=sys.stderr,
                              disable=not (self.is_main and sys.stderr.isatty()), dynamic_ncols=True)
            self.module.train()
            while True:
                try:
                    self._run_epochs()
                    break
                except Rollback as rb:
                    roll_back(self, rb)
                    self._pbar.reset(total=self.total_steps)
                    self._pbar.update(self.state.step)
            return self._finish(t_start)
        finally:
            if self._pbar is not None:
                self._pbar.close()
            self.metrics.close()
            self.wandb.finish()

    def _finish(self, t_start: float) -> TrainingResult:
        st = self.state
        if st.last_eval_step != st.step:
            self._evaluate_and_keep_best()
        if st.last_ckpt_step != st.step:
            self.save_checkpoint()
        final_dir = self.run_dir / "final"
        curve = None
        self._save_model_dir(final_dir)
        restore_ok = state_restore_check(self) if self.is_main else None
        if self.is_main:
            self.metrics.close()
            curve = plot_loss_curve(self.metrics.path, self.run_dir / "loss_curve.png")
        D.barrier()
        recent = [x for x in st.recent_losses if math.isfinite(x)]
        tps = self._tokens_run / self._time_run if self._time_run else None
        if self.progress is not None and self.is_main:
            self.progress({"step": st.step, "total_steps": self.total_steps, "epoch": st.epoch,
                           "loss": recent[-1] if recent else None, "lr": self.scheduler.get_last_lr()[0],
                           "tokens_per_s": tps, "done": True})
        best = self.run_dir / "best"
        result = TrainingResult(
            run_dir=str(self.run_dir), checkpoints_dir=str(self.ckpt.root),
            best_dir=str(best) if best.exists() else None, final_dir=str(final_dir),
            metrics_path=str(self.metrics.path), loss_curve=str(curve) if curve else None,
            steps=st.step, epochs_completed=st.epoch, samples_seen=st.samples_seen,
            first_loss=st.first_loss, last_loss=sum(recent) / len(recent) if recent else None,
            first_val_loss=st.first_val, best_val_loss=st.best_val, final_val_loss=st.last_val,
            val_losses=list(st.val_losses), nan_or_inf_losses=st.nan_or_inf, skipped_steps=st.skipped_steps,
            rollbacks=list(st.rollbacks), resumed_from_step=self.resumed_from,
            settings_changes=list(st.settings_changes), state_restore_checked=restore_ok,
            wall_seconds=time.time() - t_start, tokens_per_second=tps,
            peak_memory_bytes=torch.cuda.max_memory_allocated(self.device) if self.device.type == "cuda" else None,
            device=str(self.device), amp=self.amp.name,
            checkpoints=[str(self.ckpt.path(s)) for s in self.ckpt.steps()],
        )
        if self.is_main:
            log.info("%s", summary_line(result))
        return result


def summary_line(r: TrainingResult) -> str:
    """One line: steps, losses, and every rollback and settings change (the log's and the CLI's summary)."""
    def f(x):
        return "n/a" if x is None else f"{x:.4g}"

    parts = [f"trained {r.steps} steps ({r.epochs_completed} epochs): loss {f(r.first_loss)} -> {f(r.last_loss)}, "
             f"val {f(r.first_val_loss)} -> {f(r.final_val_loss)}"]
    if r.skipped_steps:
        parts.append(f"{r.skipped_steps} skipped steps")
    parts.append(f"{len(r.rollbacks)} rollbacks" + (": " + "; ".join(
        f"step {e.step} -> {e.restored_step} ({e.skipped_samples} samples skipped, LR x {e.lr_scale:.3g})"
        for e in r.rollbacks) if r.rollbacks else ""))
    if r.settings_changes:
        parts.append("settings changed on resume: " + ", ".join(
            f"{c['key']} {c['old']!r} -> {c['new']!r} at step {c['step']}" for c in r.settings_changes))
    return "; ".join(parts)
