"""What a checkpoint holds of the trainer, restoring it, and resuming with new settings.

``save_trainer_checkpoint`` / ``restore_trainer_checkpoint`` move the trainer's objects (trainable
weights, optimizer, scheduler, scaler, per-rank RNG and recent sample ids, ``TrainerState``, the
sampler's position and skip ledger, the spike window, the LR ``Schedule``, the train settings)
in and out of one ``CheckpointManager`` checkpoint.

Resume with new settings (issue 14).  The checkpoint stores the ``train`` settings it was written
with; on resume every changed key is logged, written to metrics.jsonl as a ``settings_changed``
event and kept in ``TrainingResult.settings_changes``.  What takes effect:

* ``lr``, ``lr_projector``, ``lr_lm``, ``lr_vision``: each param group's base LR is the new
  setting (times the rollbacks' ``lr_scale``); ``weight_decay`` and ``betas`` likewise;
* ``epochs``, ``max_steps``, ``warmup_ratio``: the LR ``Schedule`` is rebuilt at the current step
  from the multiplier reached there (no cosine jump back up), or, when the old schedule had ended
  (more epochs for a finished run), with a new warm-up from 0 over the steps left; the run stops
  at the new end;
* ``save_steps``, ``eval_steps``, ``log_every``, ``keep_last``, ``clip_grad_norm``, ``spike.*``:
  read at every use (the spike window kept);
* ``amp``: allowed: checkpoints hold fp32 weights and optimizer state; a GradScaler state is loaded
  only when both runs use fp16 (otherwise a fresh scaler starts);
* ``num_workers``, ``deterministic``, ``wandb``: allowed; the sampler, not the workers, orders the
  data.

Refused before anything is written (``check_resume``, and again by the trainer's fingerprint):
``micro_batch_size`` and ``grad_accum`` in the same number of processes (the step count, the
epoch's position, the ledger's step ids and the schedule are all in optimizer steps of the saved
batch; a changed world size may change them, see ``WorldSizeChange``), ``run.seed`` (the sampler's
order of the rest of the epoch comes from it: samples would be seen twice or never), and the model.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from openmind_core.training import distributed as D
from openmind_core.training.checkpoint import STEP_RE, ResumeError, WorldSizeChange, check_fingerprint
from openmind_core.training.optim import Schedule, schedule_of, set_schedule
from openmind_core.training.rng import capture_rng, restore_rng, seed_everything
from openmind_core.training.state import TrainerState

if TYPE_CHECKING:
    from openmind_core.training.trainer import ProductionTrainer

log = logging.getLogger(__name__)

#: fingerprint keys -> the config keys a user would change
FINGERPRINT_KEYS = {"batch": "train.micro_batch_size x train.grad_accum", "seed": "run.seed", "model": "model",
                    "data": "data (the curated lake version)", "train_samples": "the training rows",
                    "trainable_params": "the trainable parameters (model.stage, model.lm.lora, ...)"}


def flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flat(v, key + "."))
        else:
            out[key] = list(v) if isinstance(v, tuple) else v
    return out


def settings_changes(old: dict[str, Any] | None, new: dict[str, Any], step: int) -> list[dict[str, Any]]:
    """Every ``train`` key whose value differs between a checkpoint's settings and this run's."""
    if not old:
        return []
    a, b = flat(old), flat(new)
    return [{"step": step, "key": f"train.{k}", "old": a.get(k), "new": b.get(k)}
            for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]


# --------------------------------------------------------------------------- the early check


def newest_checkpoint(run_dir: str | Path) -> Path | None:
    """The newest committed checkpoint directory of a run (not hash-validated: the trainer does that)."""
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return None
    steps = sorted(p for p in root.iterdir() if STEP_RE.match(p.name) and (p / "fingerprint.json").is_file())
    return steps[-1] if steps else None


def check_resume(run_dir: str | Path, cfg) -> None:
    """Raise ResumeError, before anything is written, when ``cfg`` cannot resume ``run_dir``'s newest checkpoint.

    ``cfg``: an ``OpenMindConfig``.  Compares what the trainer's fingerprint pins (the model, the
    per-process batch, the seed) with the checkpoint's, allowing a changed number of processes
    (with which the batch may change); the data and the trainable-parameter shapes are checked by
    the trainer itself once they are known.  No checkpoint: nothing to check.
    """
    import json

    path = newest_checkpoint(run_dir)
    if path is None:
        return
    saved = json.loads((path / "fingerprint.json").read_text())
    t = cfg.train
    current = {"model": cfg.fingerprint("model"), "batch": f"{t.micro_batch_size}x{t.grad_accum}",
               "world_size": str(t.nproc), "seed": str(cfg.run.seed)}
    try:
        check_fingerprint({k: v for k, v in saved.items() if k in current}, current, path)
    except ResumeError as e:
        raise ResumeError(describe(e)) from None


def describe(err: ResumeError) -> str:
    """The error with the config keys behind the fingerprint's names."""
    msg = str(err)
    names = [f"{k} = {v}" for k, v in FINGERPRINT_KEYS.items() if f"{k}: checkpoint" in msg]
    return msg + (f" ({'; '.join(names)})" if names else "")


# --------------------------------------------------------------------------- save / restore


def save_trainer_checkpoint(t: "ProductionTrainer") -> Path | None:
    """Write a checkpoint of step ``t.state.step`` (every rank joins; rank 0 writes); returns its path."""
    st = t.state
    st.last_ckpt_step = st.step
    horizon = st.step - (t.cfg.keep_last + 1) * t.cfg.save_steps
    t.step_ids = {s: v for s, v in t.step_ids.items() if s > horizon}
    rank_state = {"rng": capture_rng(), "step_ids": {str(s): v for s, v in t.step_ids.items()}}
    all_ranks = D.all_gather_objects(rank_state)
    if t.fsdp:  # collectives: every rank gathers, rank 0 receives full CPU tensors
        weights = D.full_model_state_dict(t.module, trainable_only=True)
        optim_state = D.full_optimizer_state_dict(t.module, t.optimizer)
    else:
        weights = {n: p for n, p in t.trainable}
        optim_state = t.optimizer.state_dict() if t.is_main else {}
    path = None
    if t.is_main:
        torch_files: dict[str, Any] = {"optimizer.pt": optim_state, "scheduler.pt": t.scheduler.state_dict()}
        if t.scaler is not None:
            torch_files["scaler.pt"] = t.scaler.state_dict()
        for r, rs in enumerate(all_ranks):
            torch_files[f"rank-{r}.pt"] = rs
        trainer_state = {**st.to_json(), "sampler": t.sampler.state_dict(), "detector": t.detector.state_dict(),
                         "total_steps": t.total_steps, "schedule": schedule_of(t.scheduler).to_json(),
                         "train_config": t.cfg.model_dump(mode="json")}
        path = t.ckpt.save(st.step, weights, torch_files,
                           {"trainer_state.json": trainer_state, "fingerprint.json": t.fingerprint})
        t.ckpt.prune({st.best_step} if st.best_step is not None else set())
        t.metrics.event("checkpoint", st.step, path=str(path))
    D.barrier()
    return path


def _weights_mismatch(t: "ProductionTrainer", weights: dict[str, torch.Tensor], path: Path) -> str | None:
    names = {n for n, _ in t.trainable}
    if set(weights) != names:
        return (f"cannot resume from {path}: trainable parameters differ "
                f"(missing {sorted(names - set(weights))[:5]}, unexpected {sorted(set(weights) - names)[:5]})")
    for n, p in t.trainable:
        if weights[n].shape != p.shape:  # a DTensor's shape is the global one
            return f"cannot resume from {path}: {n} has shape {tuple(weights[n].shape)} there, {tuple(p.shape)} now"
    return None


def restore_trainer_checkpoint(t: "ProductionTrainer", path: Path, resuming: bool) -> None:
    """Load checkpoint ``path`` into the trainer; the current settings apply from its step on.

    ``resuming``: a new process picking the run up (settings changes are recorded); False for a
    rollback inside the same run.
    """
    # under FSDP only rank 0 reads the tensors; the others receive their shards by broadcast
    heavy = {"model.safetensors", "optimizer.pt"} if t.fsdp and not t.is_main else set()
    ck = t.ckpt.load(path, skip=heavy)
    try:
        change = check_fingerprint(ck.json_files.get("fingerprint.json", {}), t.fingerprint, path)
    except ResumeError as e:
        raise ResumeError(describe(e)) from None
    if t.fsdp:
        err = D.broadcast_object(_weights_mismatch(t, ck.weights, path) if t.is_main else None)
        if err:
            raise ResumeError(err)
        D.load_full_model_state_dict(t.module, ck.weights if t.is_main else None)
        D.load_full_optimizer_state_dict(t.module, t.optimizer, ck.torch_files["optimizer.pt"] if t.is_main else None)
    else:
        err = _weights_mismatch(t, ck.weights, path)
        if err:
            raise ResumeError(err)
        with torch.no_grad():
            for n, p in t.trainable:
                p.copy_(ck.weights[n].to(p.device, p.dtype))
        t.optimizer.load_state_dict(ck.torch_files["optimizer.pt"])
    t.scheduler.load_state_dict(ck.torch_files["scheduler.pt"])
    if t.scaler is not None and "scaler.pt" in ck.torch_files:
        t.scaler.load_state_dict(ck.torch_files["scaler.pt"])
    saved = dict(ck.json_files["trainer_state.json"])
    t.sampler.load_state_dict(saved.pop("sampler"))
    t.detector.load_state_dict(saved.pop("detector"))
    t.state = TrainerState.from_json(saved)
    apply_settings(t, saved, path, resuming)
    if change is not None:
        adopt_world_size(t, change, ck.torch_files, path, saved.get("total_steps"))
        return
    rank_file = ck.torch_files.get(f"rank-{t.rank}.pt")
    if rank_file is None:
        raise ResumeError(f"cannot resume from {path}: it has no state for rank {t.rank}")
    restore_rng(rank_file["rng"])
    t.step_ids = {int(s): list(v) for s, v in rank_file["step_ids"].items()}


def apply_settings(t: "ProductionTrainer", saved: dict[str, Any], path: Path, resuming: bool) -> None:
    """The current settings from the restored step on: LRs, weight decay, betas, the rebuilt schedule."""
    st = t.state
    for g, built in zip(t.optimizer.param_groups, t.group_settings):
        g["weight_decay"], g["betas"] = built["weight_decay"], built["betas"]
    old = Schedule.from_json(saved["schedule"]) if saved.get("schedule") else schedule_of(t.scheduler)
    schedule = old.rebuilt(st.step, t.cfg.warmup_ratio, t.total_steps)
    set_schedule(t.optimizer, t.scheduler, schedule, t.base_lrs(st.lr_scale))
    if not resuming:
        return
    changes = settings_changes(saved.get("train_config"), t.cfg.model_dump(mode="json"), st.step)
    if schedule is not old:
        m = schedule(st.step)
        log.warning("LR schedule rebuilt at step %d: %d warm-up steps, %d in all (was %d and %d); it continues "
                    "from the multiplier %.4g reached there", st.step, schedule.warmup, schedule.total,
                    old.warmup, old.total, m)
    for c in changes:
        log.warning("resume from %s changes %s: %r -> %r (in effect from step %d)", path.name, c["key"], c["old"],
                    c["new"], c["step"])
        t.metrics.event("settings_changed", c["step"], key=c["key"], old=c["old"], new=c["new"])
    st.settings_changes = st.settings_changes + changes


def adopt_world_size(t: "ProductionTrainer", change: WorldSizeChange, torch_files: dict[str, Any], path: Path,
                     saved_total: Any) -> None:
    """Resume a checkpoint written by another number of processes (its state dicts are full ones).

    Position: the old ranks had together consumed the global prefix ``epoch_offset + consumed *
    old_world`` of the epoch's order; that becomes the new offset and the new ranks shard the rest
    (nothing seen twice, nothing skipped).  RNG: a rank that existed restores its own state, a new
    one is seeded from (seed, rank, step); the states of ranks that are gone are ignored.  The
    recent sample ids of all old ranks go to rank 0 (rollbacks take their union over the ranks).
    """
    st = t.state
    old_world = change.saved_world
    g = t.sampler.global_position(start=st.consumed, offset=st.epoch_offset, world_size=old_world, epoch=st.epoch)
    st.epoch_offset, st.consumed = g, 0
    rank_file = torch_files.get(f"rank-{t.rank}.pt")
    if rank_file is None:  # a new rank; one that existed restores its own RNG state last, below
        seed_everything(t.seed + t.rank + 1_000_003 * (st.step + 1))
    merged: dict[int, list[str]] = {}
    if t.is_main:
        for r in range(old_world):
            for s_, v in (torch_files.get(f"rank-{r}.pt") or {}).get("step_ids", {}).items():
                merged.setdefault(int(s_), []).extend(v)
    t.step_ids = dict(sorted(merged.items()))
    old_gb, new_gb = change.global_batch(saved=True), change.global_batch()
    left = len(t.sampler.global_order(st.epoch)) - g
    if old_gb == new_gb:
        batch = (f"the global batch stays {new_gb} (micro_batch_size x grad_accum x processes "
                 f"{change.saved_batch}x{old_world} -> {change.batch}x{t.world})")
    else:
        batch = (f"the global batch changes from {old_gb} to {new_gb} samples per optimizer step "
                 f"({change.saved_batch}x{old_world} -> {change.batch}x{t.world})")
    sched = (f"; the LR schedule now spans {t.total_steps} optimizer steps (was {saved_total})"
             if saved_total is not None and saved_total != t.total_steps else "")
    if t.is_main:
        log.warning("resuming %s, written by %d processes, with %d: from step %d on the data order differs "
                    "from an uninterrupted run with %d (the %d samples left in epoch %d are resharded from "
                    "position %d); %s%s", path.name, old_world, t.world, st.step, t.world, left,
                    st.epoch, g, batch, sched)
    t.metrics.event("world_size_changed", st.step, path=str(path), saved_world_size=old_world,
                    world_size=t.world, global_batch_before=old_gb, global_batch=new_gb,
                    epoch=st.epoch, epoch_position=g, total_steps=t.total_steps,
                    saved_total_steps=saved_total)
    if rank_file is not None:
        restore_rng(rank_file["rng"])


def _position(sampler, st: TrainerState) -> tuple[int, int, int]:
    """(epoch, consumed, offset) where a run in state ``st`` continues; an epoch's end is the next's start."""
    sampler.set_epoch(st.epoch, start=st.consumed, offset=st.epoch_offset)
    if next(iter(sampler), None) is None:
        return st.epoch + 1, 0, 0
    return st.epoch, st.consumed, st.epoch_offset


def state_restore_check(t: "ProductionTrainer") -> bool | None:
    """Load the newest checkpoint's trainer state into a fresh ``TrainerState`` and sampler and compare (rank 0).

    True when the step, the sampler position (epoch, position in it, skip ledger), the optimizer's
    state keys (per parameter) and the scheduler's state keys and step match what the trainer holds
    now; None when there is no checkpoint.
    """
    from openmind_core.data.sampler import ResumableSampler

    path = t.ckpt.latest_valid()
    if path is None:
        return None
    ck = t.ckpt.load(path, skip={"model.safetensors"})
    saved = ck.json_files["trainer_state.json"]
    fresh = TrainerState.from_json(saved)
    sampler = ResumableSampler(t.sampler.sample_ids, seed=t.seed, rank=t.rank, world_size=t.world)
    sampler.load_state_dict(saved["sampler"])
    mine = ResumableSampler(t.sampler.sample_ids, seed=t.seed, rank=t.rank, world_size=t.world)
    mine.load_state_dict(t.sampler.state_dict())
    opt, sched = ck.torch_files.get("optimizer.pt", {}), ck.torch_files.get("scheduler.pt", {})
    checks = {"step": fresh.step == t.state.step,
              "sampler position": _position(sampler, fresh) == _position(mine, t.state),
              "skip ledger": sampler.skip == t.sampler.skip,
              "scheduler": set(sched) == set(t.scheduler.state_dict())
              and int(sched.get("last_epoch", -1)) == t.scheduler.last_epoch}
    if not t.fsdp:
        now = t.optimizer.state_dict()
        checks["optimizer"] = (set(opt) == set(now) and set(opt.get("state", {})) == set(now["state"])
                               and all(set(opt["state"][k]) == set(now["state"][k]) for k in opt.get("state", {})))
    failed = [k for k, ok in checks.items() if not ok]
    if failed:
        log.warning("the newest checkpoint %s does not restore the trainer's state: %s differ", path, ", ".join(failed))
    return not failed


__all__ = ["check_resume", "restore_trainer_checkpoint", "save_trainer_checkpoint", "settings_changes",
           "state_restore_check"]
