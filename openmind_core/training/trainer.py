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
4. spike detector on the unscaled loss -> roll back; gradient check -> skip (no ``optimizer.step``:
   parameters, Adam moments and Adam's step count untouched; the LR schedule still advances);
5. log (metrics.jsonl, tqdm, progress callback, wandb); evaluate every ``eval_steps``; checkpoint
   every ``save_steps`` optimizer steps (never on micro-batches, never at step 0's loop entry).

Resume is automatic: the newest valid checkpoint in ``run_dir/checkpoints`` is restored (weights,
optimizer, scheduler, scaler, RNG, loader position, skip ledger, spike window) and the run
continues as the unbroken run would have.  Frozen weights are not checkpointed: the caller must
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

Rollback: on a spike (or ``max_skipped_in_row`` skipped steps) the newest checkpoint from before
the onset is restored, every sample id seen since it goes into the persistent skip ledger, the LR
is optionally lowered, newer checkpoints are deleted and the restored one is rewritten with the
ledger (so a crash right after a rollback does not forget it).  After ``max_rollbacks`` the run
stops with ``TrainingError``.  Loader randomness: the DataLoader's worker seed comes from a
generator seeded with (seed, epoch); datasets should derive any augmentation randomness from the
sample, not from worker RNG, for resumes to be exact.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import random
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from openmind_core.data.sampler import ResumableSampler
from openmind_core.training import distributed as D
from openmind_core.training.checkpoint import (
    CheckpointManager,
    ResumeError,
    check_fingerprint,
    kill_point,
    save_model_dir,
    WorldSizeChange,
)
from openmind_core.training.guard import SpikeDetector, clip_and_measure, grad_ok
from openmind_core.training.metrics import MetricsWriter, WandbLogger, plot_loss_curve
from openmind_core.training.optim import build_optimizer, build_scheduler, scale_lr, total_optimizer_steps
from openmind_core.training.precision import autocast, make_scaler, resolve_amp
from schemas.artifacts import RollbackEvent, TrainingResult
from schemas.config import TrainConfig

log = logging.getLogger(__name__)

LAST_LOSS_WINDOW = 5


class TrainingError(RuntimeError):
    """The run cannot continue (e.g. the rollback cap is used up)."""


class _Rollback(Exception):
    def __init__(self, step: int, onset: int, reason: str, loss: float | None, ids: list[str]) -> None:
        super().__init__(reason)
        self.step, self.onset, self.reason, self.loss, self.ids = step, onset, reason, loss, ids


# --------------------------------------------------------------------------- RNG


def capture_rng() -> dict[str, Any]:
    """Python, numpy, torch (and CUDA) RNG states as weights_only-loadable objects."""
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


# --------------------------------------------------------------------------- helpers


def _label_tokens(batch: dict[str, Any]) -> int | None:
    labels = batch.get("labels")
    if not isinstance(labels, torch.Tensor):
        return None
    return int((labels[:, 1:] != -100).sum())


def _batch_tokens(batch: dict[str, Any]) -> int:
    for key in ("attention_mask", "input_ids"):
        t = batch.get(key)
        if isinstance(t, torch.Tensor):
            return int(t.sum()) if key == "attention_mask" else t.numel()
    return 0


def _to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    nb = device.type == "cuda"
    return {k: v.to(device, non_blocking=nb) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


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
        self.cfg = cfg
        self.run_dir = Path(run_dir)
        self.seed = seed
        self.rank, self.world = rank, world_size
        self.is_main = rank == 0
        self.train_dataset, self.val_dataset, self.collate_fn = train_dataset, val_dataset, collate_fn
        self.progress = progress
        if cfg.deterministic:
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
            torch.use_deterministic_algorithms(True)
        local_rank = int(os.environ.get("LOCAL_RANK", rank))
        self.device = D.device_for(local_rank)
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
        if self.strategy == "fsdp":  # shard first: each rank puts only its shards on the device, never the model
            self.module = D.shard_model(model, device=self.device, materialise=materialise)
        else:
            self.module = D.place_model(model, self.device, materialise=materialise)
        self.model: torch.nn.Module = self.module
        if self.strategy == "ddp":
            self.model = D.wrap_ddp(self.module, self.device)
        self.fsdp = self.strategy == "fsdp"
        self.trainable = [(n, p) for n, p in self.module.named_parameters() if p.requires_grad]
        self.optimizer = build_optimizer(self.module, cfg)
        ids = _sample_ids_of(train_dataset)
        if len(ids) == 0:
            raise TrainingError("the training dataset is empty")
        self.sampler = ResumableSampler(ids, seed=seed, shuffle=True, rank=rank, world_size=world_size)
        self.total_steps = total_optimizer_steps(cfg, math.ceil(len(ids) / world_size))
        self.scheduler = build_scheduler(self.optimizer, cfg, self.total_steps)
        self.scaler = make_scaler(self.amp)
        self.detector = SpikeDetector(cfg.spike.factor, cfg.spike.window, cfg.spike.patience)
        self.ckpt = CheckpointManager(self.run_dir / "checkpoints", keep_last=cfg.keep_last)
        self.metrics = MetricsWriter(self.run_dir / "metrics.jsonl", enabled=self.is_main)
        shapes = ";".join(f"{n}:{tuple(p.shape)}:{p.dtype}" for n, p in self.trainable)
        import hashlib

        self.fingerprint = {
            "trainable_params": hashlib.sha256(shapes.encode()).hexdigest()[:16],
            "train_samples": str(len(ids)),
            "batch": f"{cfg.micro_batch_size}x{cfg.grad_accum}",
            "world_size": str(world_size),  # may change on resume (full state dicts); see _restore
            "seed": str(seed),
            **{k: str(v) for k, v in (fingerprint or {}).items()},
        }
        self.state = self._fresh_state()
        self.step_ids: dict[int, list[str]] = {}
        self.resumed_from: int | None = None
        self.rollbacks: list[RollbackEvent] = []
        self._pbar: tqdm | None = None
        self._tokens_run = 0
        self._time_run = 0.0

    # ----------------------------------------------------------------------- state

    @staticmethod
    def _fresh_state() -> dict[str, Any]:
        return {
            "step": 0, "epoch": 0, "consumed": 0, "epoch_offset": 0, "samples_seen": 0, "first_loss": None,
            "recent_losses": [], "skipped_steps": 0, "skipped_in_row": 0, "skipped_run_start": None, "nan_or_inf": 0,
            "rollbacks": [], "lr_scale": 1.0, "best_val": None, "best_step": None, "first_val": None,
            "last_val": None, "last_eval_step": None, "last_ckpt_step": None,
        }

    def _state_json(self) -> dict[str, Any]:
        return {**self.state, "sampler": self.sampler.state_dict(), "detector": self.detector.state_dict(),
                "rollbacks": [r.model_dump() for r in self.rollbacks], "total_steps": self.total_steps}

    # ----------------------------------------------------------------------- checkpoints

    def _save_checkpoint(self) -> None:
        step = self.state["step"]
        self.state["last_ckpt_step"] = step
        horizon = step - (self.cfg.keep_last + 1) * self.cfg.save_steps
        self.step_ids = {s: v for s, v in self.step_ids.items() if s > horizon}
        rank_state = {"rng": capture_rng(), "step_ids": {str(s): v for s, v in self.step_ids.items()}}
        all_ranks = D.all_gather_objects(rank_state)
        if self.fsdp:  # collectives: every rank gathers, rank 0 receives full CPU tensors
            weights = D.full_model_state_dict(self.module, trainable_only=True)
            optim_state = D.full_optimizer_state_dict(self.module, self.optimizer)
        else:
            weights = {n: p for n, p in self.trainable}
            optim_state = self.optimizer.state_dict() if self.is_main else {}
        if self.is_main:
            torch_files: dict[str, Any] = {"optimizer.pt": optim_state,
                                           "scheduler.pt": self.scheduler.state_dict()}
            if self.scaler is not None:
                torch_files["scaler.pt"] = self.scaler.state_dict()
            for r, st in enumerate(all_ranks):
                torch_files[f"rank-{r}.pt"] = st
            path = self.ckpt.save(step, weights, torch_files,
                                  {"trainer_state.json": self._state_json(), "fingerprint.json": self.fingerprint})
            protect = {self.state["best_step"]} if self.state["best_step"] is not None else set()
            self.ckpt.prune(protect)
            self.metrics.event("checkpoint", step, path=str(path))
        D.barrier()

    def _weights_mismatch(self, weights: dict[str, torch.Tensor], path: Path) -> str | None:
        names = {n for n, _ in self.trainable}
        if set(weights) != names:
            return (f"cannot resume from {path}: trainable parameters differ "
                    f"(missing {sorted(names - set(weights))[:5]}, unexpected {sorted(set(weights) - names)[:5]})")
        for n, p in self.trainable:
            if weights[n].shape != p.shape:  # a DTensor's shape is the global one
                return f"cannot resume from {path}: {n} has shape {tuple(weights[n].shape)} there, {tuple(p.shape)} now"
        return None

    def _restore(self, path: Path) -> None:
        # under FSDP only rank 0 reads the tensors; the others receive their shards by broadcast
        heavy = {"model.safetensors", "optimizer.pt"} if self.fsdp and not self.is_main else set()
        ck = self.ckpt.load(path, skip=heavy)
        change = check_fingerprint(ck.json_files.get("fingerprint.json", {}), self.fingerprint, path)
        if self.fsdp:
            err = D.broadcast_object(self._weights_mismatch(ck.weights, path) if self.is_main else None)
            if err:
                raise ResumeError(err)
            D.load_full_model_state_dict(self.module, ck.weights if self.is_main else None)
            D.load_full_optimizer_state_dict(self.module, self.optimizer,
                                             ck.torch_files["optimizer.pt"] if self.is_main else None)
        else:
            err = self._weights_mismatch(ck.weights, path)
            if err:
                raise ResumeError(err)
            with torch.no_grad():
                for n, p in self.trainable:
                    p.copy_(ck.weights[n].to(p.device, p.dtype))
            self.optimizer.load_state_dict(ck.torch_files["optimizer.pt"])
        self.scheduler.load_state_dict(ck.torch_files["scheduler.pt"])
        if self.scaler is not None and "scaler.pt" in ck.torch_files:
            self.scaler.load_state_dict(ck.torch_files["scaler.pt"])
        st = dict(ck.json_files["trainer_state.json"])
        self.sampler.load_state_dict(st.pop("sampler"))
        self.detector.load_state_dict(st.pop("detector"))
        self.rollbacks = [RollbackEvent.model_validate(r) for r in st.pop("rollbacks")]
        saved_total = st.pop("total_steps", None)
        self.state = {**self._fresh_state(), **st}
        if change is not None:
            self._adopt_world_size(change, ck.torch_files, path, saved_total)
            return
        rank_file = ck.torch_files.get(f"rank-{self.rank}.pt")
        if rank_file is None:
            raise ResumeError(f"cannot resume from {path}: it has no state for rank {self.rank}")
        restore_rng(rank_file["rng"])
        self.step_ids = {int(s): list(v) for s, v in rank_file["step_ids"].items()}

    def _adopt_world_size(self, change: WorldSizeChange, torch_files: dict[str, Any], path: Path,
                          saved_total: Any) -> None:
        """Resume a checkpoint written by another number of processes (its state dicts are full ones).

        Position: the old ranks had together consumed the global prefix ``epoch_offset + consumed *
        old_world`` of the epoch's order; that becomes the new offset and the new ranks shard the rest
        (nothing seen twice, nothing skipped).  RNG: a rank that existed restores its own state, a new
        one is seeded from (seed, rank, step); the states of ranks that are gone are ignored.  The
        recent sample ids of all old ranks go to rank 0 (rollbacks take their union over the ranks).
        """
        st = self.state
        old_world = change.saved_world
        g = self.sampler.global_position(start=st["consumed"], offset=st["epoch_offset"], world_size=old_world,
                                         epoch=st["epoch"])
        st["epoch_offset"], st["consumed"] = g, 0
        rank_file = torch_files.get(f"rank-{self.rank}.pt")
        if rank_file is None:  # a new rank; one that existed restores its own RNG state last, below
            seed_everything(self.seed + self.rank + 1_000_003 * (st["step"] + 1))
        merged: dict[int, list[str]] = {}
        if self.is_main:
            for r in range(old_world):
                for s_, v in (torch_files.get(f"rank-{r}.pt") or {}).get("step_ids", {}).items():
                    merged.setdefault(int(s_), []).extend(v)
        self.step_ids = dict(sorted(merged.items()))
        old_gb, new_gb = change.global_batch(saved=True), change.global_batch()
        left = len(self.sampler.global_order(st["epoch"])) - g
        if old_gb == new_gb:
            batch = (f"the global batch stays {new_gb} (micro_batch_size x grad_accum x processes "
                     f"{change.saved_batch}x{old_world} -> {change.batch}x{self.world})")
        else:
            batch = (f"the global batch changes from {old_gb} to {new_gb} samples per optimizer step "
                     f"({change.saved_batch}x{old_world} -> {change.batch}x{self.world})")
        sched = (f"; the LR schedule now spans {self.total_steps} optimizer steps (was {saved_total})"
                 if saved_total is not None and saved_total != self.total_steps else "")
        if self.is_main:
            log.warning("resuming %s, written by %d processes, with %d: from step %d on the data order differs "
                        "from an uninterrupted run with %d (the %d samples left in epoch %d are resharded from "
                        "position %d); %s%s", path.name, old_world, self.world, st["step"], self.world, left,
                        st["epoch"], g, batch, sched)
        self.metrics.event("world_size_changed", st["step"], path=str(path), saved_world_size=old_world,
                           world_size=self.world, global_batch_before=old_gb, global_batch=new_gb,
                           epoch=st["epoch"], epoch_position=g, total_steps=self.total_steps,
                           saved_total_steps=saved_total)
        if rank_file is not None:
            restore_rng(rank_file["rng"])

    def _setup(self) -> None:
        if self.is_main:
            self.ckpt.cleanup_stale()
        D.barrier()
        path = self.ckpt.latest_valid() if self.is_main else None
        path = D.broadcast_object(str(path) if path else None)
        if path is not None:
            self._restore(Path(path))
            self.resumed_from = self.state["step"]
            self.metrics.truncate_after(self.state["step"])
            self.metrics.event("resume", self.state["step"], path=path)
            log.info("resumed from %s (step %d, epoch %d)", path, self.state["step"], self.state["epoch"])
        else:
            if self.is_main and self.metrics.path.exists():
                self.metrics.path.unlink()
            seed_everything(self.seed + self.rank)
            self._save_checkpoint()  # step 0: a rollback target before the first periodic checkpoint

    # ----------------------------------------------------------------------- data

    def _loader(self) -> DataLoader:
        self.sampler.set_epoch(self.state["epoch"], start=self.state["consumed"], offset=self.state["epoch_offset"])
        g = torch.Generator()
        g.manual_seed(self.seed * 1_000_003 + self.state["epoch"])
        return DataLoader(self.train_dataset, batch_size=self.cfg.micro_batch_size, sampler=self.sampler,
                          collate_fn=self.collate_fn, num_workers=self.cfg.num_workers, generator=g,
                          pin_memory=self.device.type == "cuda", drop_last=False)

    def _done(self) -> bool:
        if self.cfg.max_steps is not None and self.state["step"] >= self.cfg.max_steps:
            return True
        return self.state["epoch"] >= self.cfg.epochs

    # ----------------------------------------------------------------------- loop

    def _run_epochs(self) -> None:
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
            self.state["epoch"] += 1
            self.state["consumed"] = self.state["epoch_offset"] = 0
            kill_point("epoch-end", self.state["epoch"] - 1)  # test-only

    def _train_step(self, micro: list[dict[str, Any]], data_time: float, t0: float) -> None:
        step = self.state["step"] + 1
        ids = [str(s) for b in micro for s in b.pop("sample_ids")]
        counts = [_label_tokens(b) for b in micro]
        use_tokens = all(c is not None for c in counts)
        local = [float(c) for c in counts] if use_tokens else [1.0] * len(micro)
        total = float(D.all_reduce_sum(torch.tensor([sum(local)], dtype=torch.float64))[0]) if self.world > 1 else sum(local)
        if total <= 0:
            total = 1.0
        tokens = sum(_batch_tokens(b) for b in micro)
        loss_sum = torch.zeros((), dtype=torch.float32, device=self.device)
        ddp = self.world > 1 and not self.fsdp
        for i, batch in enumerate(micro):
            batch = _to_device(batch, self.device)
            last = i == len(micro) - 1
            if self.fsdp:
                self.module.set_requires_gradient_sync(last)  # reduce-scatter only after the last micro-batch
            sync = self.model.no_sync() if ddp and not last else contextlib.nullcontext()
            with sync:
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

        if not math.isfinite(loss_val):
            self.state["nan_or_inf"] += 1
        verdict = self.detector.check(step, loss_val)
        if verdict.spike:
            self.optimizer.zero_grad(set_to_none=True)
            if self.scaler is not None:
                self.scaler.update()
            mean = f"{verdict.mean:.4g}" if verdict.mean is not None else "n/a"
            raise _Rollback(step, verdict.onset or step, f"loss spike: {loss_val:.4g} vs rolling mean {mean} "
                            f"(factor {self.cfg.spike.factor}, onset step {verdict.onset})", loss_val, ids)
        ok, why = grad_ok(norm_val, self.cfg.spike.grad_norm_threshold)
        counts_toward_rollback = True
        if self.scaler is not None:
            if not math.isfinite(norm_val):
                self.scaler.step(self.optimizer)  # finds the inf and skips, as usual for fp16
                counts_toward_rollback = False
            elif ok:
                self.scaler.step(self.optimizer)
            self.scaler.update()
        elif ok:
            self.optimizer.step()
        kill_point("step", step)  # test-only: crash mid-step (after the update, before bookkeeping)
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        self.detector.commit(step, loss_val, verdict)

        st = self.state
        if ok:
            st["skipped_in_row"], st["skipped_run_start"] = 0, None
        else:
            st["skipped_steps"] += 1
            log.warning("step %d skipped: %s", step, why)
            if counts_toward_rollback:
                st["skipped_in_row"] += 1
                st["skipped_run_start"] = st["skipped_run_start"] or step
                if st["skipped_in_row"] >= self.cfg.spike.max_skipped_in_row:
                    onset = st["skipped_run_start"]
                    st["skipped_in_row"], st["skipped_run_start"] = 0, None
                    raise _Rollback(step, onset, f"{self.cfg.spike.max_skipped_in_row} skipped steps in a row "
                                    f"(last: {why})", loss_val, ids)
        n_local = len(ids)
        st["step"] = step
        st["consumed"] += n_local
        st["samples_seen"] += n_local * self.world
        self.step_ids[step] = ids
        if st["first_loss"] is None:
            st["first_loss"] = loss_val
        st["recent_losses"] = (st["recent_losses"] + [loss_val])[-LAST_LOSS_WINDOW:]
        step_time = time.perf_counter() - t0
        tps = tokens * self.world / step_time if step_time > 0 else 0.0
        self._tokens_run += tokens * self.world
        self._time_run += step_time
        lr = self.scheduler.get_last_lr()[0]
        rec = {"step": step, "epoch": st["epoch"], "loss": loss_val, "lr": lr, "grad_norm": norm_val,
               "data_time": round(data_time, 6), "step_time": round(step_time, 6), "tokens_per_s": round(tps, 2),
               "skipped": not ok}
        self.metrics.write(rec)
        if self._pbar is not None:
            self._pbar.update(1)
            self._pbar.set_postfix(loss=f"{loss_val:.4f}", lr=f"{lr:.2e}", tok_s=f"{tps:.0f}", s=f"{step_time:.2f}")
        if step % self.cfg.log_every == 0:
            self._report(rec)
        if step % self.cfg.eval_steps == 0:
            self._evaluate_and_keep_best()
        if step % self.cfg.save_steps == 0:
            self._save_checkpoint()

    def _report(self, rec: dict[str, Any]) -> None:
        info = {**rec, "total_steps": self.total_steps, "tokens_per_s": rec.get("tokens_per_s")}
        if self.progress is not None and self.is_main:
            self.progress(info)
        self.wandb.log({f"train/{k}": v for k, v in rec.items() if isinstance(v, (int, float))}, step=rec["step"])

    # ----------------------------------------------------------------------- evaluation

    @torch.no_grad()
    def evaluate(self) -> float | None:
        """Mean token loss over the validation dataset (every rank evaluates all of it)."""
        if self.val_dataset is None or len(self.val_dataset) == 0:
            return None
        m = self.module
        was_training = m.training
        m.eval()
        loader = DataLoader(self.val_dataset, batch_size=self.cfg.micro_batch_size, shuffle=False,
                            collate_fn=self.collate_fn, num_workers=0)
        tot = torch.zeros((), dtype=torch.float64, device=self.device)
        n_tot = 0.0
        for batch in loader:
            batch.pop("sample_ids", None)
            n = _label_tokens(batch)
            n = 1.0 if n is None else float(n)
            if n == 0:
                continue
            with autocast(self.amp):
                out = m(**_to_device(batch, self.device))
            tot += out.loss.detach().double() * n
            n_tot += n
        m.train(was_training)
        return float(tot / n_tot) if n_tot else None

    def _save_model_dir(self, dest: Path) -> None:
        """Rank 0 writes the whole model; under FSDP from a full state dict every rank helps gather."""
        if self.fsdp:
            full = D.full_model_state_dict(self.module)
            if self.is_main:
                save_model_dir(self.module, dest, state_dict=full)
        elif self.is_main:
            save_model_dir(self.module, dest)

    def _evaluate_and_keep_best(self) -> None:
        st = self.state
        val = self.evaluate()
        st["last_eval_step"] = st["step"]
        if val is None:
            return
        st["last_val"] = val
        if st["first_val"] is None:
            st["first_val"] = val
        is_best = math.isfinite(val) and (st["best_val"] is None or val < st["best_val"])
        if self.fsdp:  # the save below is collective: all ranks must take the same branch
            is_best = D.broadcast_object(is_best)
        if is_best:
            st["best_val"], st["best_step"] = val, st["step"]
            self._save_model_dir(self.run_dir / "best")
        self.metrics.event("eval", st["step"], val_loss=val, best=is_best)
        self.wandb.log({"val/loss": val}, step=st["step"])

    # ----------------------------------------------------------------------- rollback

    def _rollback(self, rb: _Rollback) -> None:
        cap = self.cfg.spike.max_rollbacks
        if len(self.rollbacks) >= cap:
            self.metrics.event("rollback_refused", self.state["step"], spike_step=rb.step, reason=rb.reason)
            raise TrainingError(
                f"step {rb.step}: {rb.reason}; the rollback cap train.spike.max_rollbacks={cap} is used up "
                f"({len(self.rollbacks)} done), so the run stops here. The checkpoints under {self.ckpt.root} "
                "are intact; inspect metrics.jsonl, then resume with a higher cap or a lower learning rate.")
        target = self.ckpt.latest_valid(max_step=rb.onset - 1) if self.is_main else None
        target = D.broadcast_object(str(target) if target else None)
        if target is None:
            raise TrainingError(f"step {rb.step}: {rb.reason}; no valid checkpoint from before step {rb.onset} "
                                f"to roll back to in {self.ckpt.root}")
        target_step = int(Path(target).name.split("-")[1])
        local_ids = [sid for s, v in self.step_ids.items() if s > target_step for sid in v] + rb.ids
        seen = sorted({sid for part in D.all_gather_objects(local_ids) for sid in part})
        carry_skip = dict(self.sampler.skip)
        carry = {k: self.state[k] for k in ("skipped_steps", "nan_or_inf", "best_val", "best_step",
                                             "first_val", "last_val", "first_loss")}
        carry_rollbacks = list(self.rollbacks)
        carry_scale = self.state["lr_scale"]
        self._restore(Path(target))
        restored_scale = self.state["lr_scale"]
        new_scale = carry_scale * self.cfg.spike.lr_factor
        scale_lr(self.optimizer, self.scheduler, new_scale / restored_scale)
        self.state.update(carry)
        self.state["lr_scale"] = new_scale
        self.sampler.skip = carry_skip
        before = len(self.sampler.skip)
        self.sampler.add_skip(seen, epoch=self.state["epoch"], start=self.state["consumed"],
                              offset=self.state["epoch_offset"])
        event = RollbackEvent(step=rb.step, restored_step=target_step, reason=rb.reason, loss=rb.loss,
                              skipped_samples=len(self.sampler.skip) - before, lr_scale=new_scale)
        self.rollbacks = carry_rollbacks + [event]
        log.warning("rollback %d/%d at step %d -> step %d: %s; %d samples added to the skip ledger",
                    len(self.rollbacks), cap, rb.step, target_step, rb.reason, event.skipped_samples)
        if self.is_main:
            self.ckpt.delete_after(target_step)
            self.metrics.truncate_after(target_step)
            self.metrics.event("rollback", target_step, spike_step=rb.step, restored_step=target_step,
                               reason=rb.reason, loss=rb.loss, skipped_samples=event.skipped_samples,
                               lr_scale=new_scale)
        self._save_checkpoint()  # rewrite the restored step with the ledger: durable across a crash
        if self._pbar is not None:
            self._pbar.reset(total=self.total_steps)
            self._pbar.update(target_step)

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
            self._pbar = tqdm(total=self.total_steps, initial=self.state["step"], desc="train", file=sys.stderr,
                              disable=not (self.is_main and sys.stderr.isatty()), dynamic_ncols=True)
            self.module.train()
            while True:
                try:
                    self._run_epochs()
                    break
                except _Rollback as rb:
                    self._rollback(rb)
            return self._finish(t_start)
        finally:
            if self._pbar is not None:
                self._pbar.close()
            self.metrics.close()
            self.wandb.finish()

    def _finish(self, t_start: float) -> TrainingResult:
        st = self.state
        if st["last_eval_step"] != st["step"]:
            self._evaluate_and_keep_best()
        if st["last_ckpt_step"] != st["step"]:
            self._save_checkpoint()
        final_dir = self.run_dir / "final"
        curve = None
        self._save_model_dir(final_dir)
        if self.is_main:
            self.metrics.close()
            curve = plot_loss_curve(self.metrics.path, self.run_dir / "loss_curve.png")
        D.barrier()
        recent = [x for x in st["recent_losses"] if math.isfinite(x)]
        info = {"step": st["step"], "total_steps": self.total_steps, "epoch": st["epoch"],
                "loss": recent[-1] if recent else None, "lr": self.scheduler.get_last_lr()[0],
                "tokens_per_s": self._tokens_run / self._time_run if self._time_run else None, "done": True}
        if self.progress is not None and self.is_main:
            self.progress(info)
        best = self.run_dir / "best"
        extra: dict[str, Any] = {}
        if "checkpoints" in TrainingResult.model_fields:
            extra["checkpoints"] = [str(self.ckpt.path(s)) for s in self.ckpt.steps()]
        return TrainingResult(
            run_dir=str(self.run_dir), checkpoints_dir=str(self.ckpt.root),
            best_dir=str(best) if best.exists() else None, final_dir=str(final_dir),
            metrics_path=str(self.metrics.path), loss_curve=str(curve) if curve else None,
            steps=st["step"], epochs_completed=st["epoch"], samples_seen=st["samples_seen"],
            first_loss=st["first_loss"], last_loss=sum(recent) / len(recent) if recent else None,
            first_val_loss=st["first_val"], best_val_loss=st["best_val"], final_val_loss=st["last_val"],
            nan_or_inf_losses=st["nan_or_inf"], skipped_steps=st["skipped_steps"], rollbacks=list(self.rollbacks),
            resumed_from_step=self.resumed_from, wall_seconds=time.time() - t_start,
            tokens_per_second=self._tokens_run / self._time_run if self._time_run else None,
            peak_memory_bytes=torch.cuda.max_memory_allocated(self.device) if self.device.type == "cuda" else None,
            device=str(self.device), amp=self.amp.name, **extra,
        )
