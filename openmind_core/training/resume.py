"""Resuming a run: the early check, this run's settings over a restored checkpoint, a changed world size.

The checkpoint manager restores the states; what a resume adds lives here.

Resume with new settings.  Every checkpoint stores the ``train`` settings it was written with
(``RunSettings``); on resume every changed key is logged, written to metrics.jsonl as a
``settings_changed`` event and kept in ``TrainingResult.settings_changes``.  What takes effect:

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

Refused before anything is written (``openmind_core.app.run_dir.check_resumable``, and again by the
fingerprint when the checkpoint is loaded): ``micro_batch_size`` and ``grad_accum`` in the same number of processes (the
step count, the epoch's position, the ledger's step ids and the schedule are all in optimizer steps
of the saved batch; a changed world size may change them, see ``adopt_world_size``), ``run.seed``
(the sampler's order of the rest of the epoch comes from it: samples would be seen twice or never),
and the model.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from openmind_core.data.sampler import ResumableSampler
from openmind_core.training.checkpoint import CheckpointManager
from openmind_core.training.fingerprint import WorldSizeChange
from openmind_core.training.metrics import MetricsWriter
from openmind_core.training.optim import LearningRates, schedule_of
from openmind_core.training.rng import restore_rng, seed_everything
from openmind_core.training.state import RecentSampleIds, TrainerState
from schemas.config import TrainConfig
from schemas.loading import dotted_keys

log = logging.getLogger(__name__)


class RunSettings:
    """Stateful: the settings a checkpoint is written with (the LR ``schedule``, its ``total_steps``,
    the ``train`` config); loading keeps the checkpoint's in ``saved`` for the resume to apply."""

    KEYS = ("total_steps", "schedule", "train_config")

    def __init__(self, cfg: TrainConfig, scheduler: torch.optim.lr_scheduler.LambdaLR, total_steps: int) -> None:
        self.cfg, self.scheduler, self.total_steps = cfg, scheduler, total_steps
        self.saved: dict[str, Any] = {}

    def state_dict(self) -> dict[str, Any]:
        return {"total_steps": self.total_steps, "schedule": schedule_of(self.scheduler).to_json(),
                "train_config": self.cfg.model_dump(mode="json")}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.saved = {k: state.get(k) for k in self.KEYS}


def settings_changes(old: dict[str, Any] | None, new: dict[str, Any], step: int) -> list[dict[str, Any]]:
    """Every ``train`` key whose value differs between a checkpoint's settings and this run's."""
    if not old:
        return []
    a, b = dotted_keys(old), dotted_keys(new)
    return [{"step": step, "key": f"train.{k}", "old": a.get(k), "new": b.get(k)}
            for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]


# --------------------------------------------------------------------------- the early check


# --------------------------------------------------------------------------- after a restore


def apply_settings(state: TrainerState, lrs: LearningRates, saved: dict[str, Any], cfg: TrainConfig, *,
                   resuming: bool, path: Path, metrics: MetricsWriter) -> None:
    """This run's settings from the restored step on: LRs, weight decay, betas, the rebuilt schedule.

    ``saved``: the checkpoint's ``RunSettings``; ``resuming``: a new process picking the run up
    (the changes are recorded), not a rollback inside the same run."""
    schedule, old = lrs.continue_from(saved.get("schedule"), state.step, state.lr_scale)
    if not resuming:
        return
    changes = settings_changes(saved.get("train_config"), cfg.model_dump(mode="json"), state.step)
    if schedule is not old:
        m = schedule(state.step)
        log.warning("LR schedule rebuilt at step %d: %d warm-up steps, %d in all (was %d and %d); it continues "
                    "from the multiplier %.4g reached there", state.step, schedule.warmup, schedule.total,
                    old.warmup, old.total, m)
    for c in changes:
        log.warning("resume from %s changes %s: %r -> %r (in effect from step %d)", path.name, c["key"], c["old"],
                    c["new"], c["step"])
        metrics.event("settings_changed", c["step"], key=c["key"], old=c["old"], new=c["new"])
    state.settings_changes = state.settings_changes + changes


def adopt_world_size(change: WorldSizeChange, rank_files: dict[int, dict[str, Any]], state: TrainerState,
                     sampler: ResumableSampler, recent_ids: RecentSampleIds, *, metrics: MetricsWriter, path: Path,
                     total_steps: int, saved_total: Any) -> None:
    """Resume a checkpoint written by another number of processes (its state dicts are full ones).

    Position: the old ranks had together consumed the global prefix ``epoch_offset + consumed *
    old_world`` of the epoch's order; that becomes the new offset and the new ranks shard the rest
    (nothing seen twice, nothing skipped).  RNG: a rank that existed restores its own state, a new
    one is seeded from (seed, rank, step); the states of ranks that are gone are ignored.  The
    recent sample ids of all old ranks go to rank 0 (rollbacks take their union over the ranks).
    """
    rank, old_world = sampler.rank, change.saved_world
    g = sampler.global_position(start=state.consumed, offset=state.epoch_offset, world_size=old_world,
                                epoch=state.epoch)
    state.epoch_offset, state.consumed = g, 0
    own = rank_files.get(rank)
    if own is None:  # a new rank; one that existed restores its own RNG state last, below
        seed_everything(sampler.seed + rank + 1_000_003 * (state.step + 1))
    merged: dict[int, list[str]] = {}
    if rank == 0:
        for r in range(old_world):
            for s, ids in (rank_files.get(r) or {}).get("step_ids", {}).items():
                merged.setdefault(int(s), []).extend(ids)
    recent_ids.by_step = dict(sorted(merged.items()))
    old_gb, new_gb = change.global_batch(saved=True), change.global_batch()
    left = len(sampler.global_order(state.epoch)) - g
    if old_gb == new_gb:
        batch = (f"the global batch stays {new_gb} (micro_batch_size x grad_accum x processes "
                 f"{change.saved_batch}x{old_world} -> {change.batch}x{change.world})")
    else:
        batch = (f"the global batch changes from {old_gb} to {new_gb} samples per optimizer step "
                 f"({change.saved_batch}x{old_world} -> {change.batch}x{change.world})")
    sched = (f"; the LR schedule now spans {total_steps} optimizer steps (was {saved_total})"
             if saved_total is not None and saved_total != total_steps else "")
    if rank == 0:
        log.warning("resuming %s, written by %d processes, with %d: from step %d on the data order differs "
                    "from an uninterrupted run with %d (the %d samples left in epoch %d are resharded from "
                    "position %d); %s%s", path.name, old_world, change.world, state.step, change.world, left,
                    state.epoch, g, batch, sched)
    metrics.event("world_size_changed", state.step, path=str(path), saved_world_size=old_world,
                  world_size=change.world, global_batch_before=old_gb, global_batch=new_gb,
                  epoch=state.epoch, epoch_position=g, total_steps=total_steps, saved_total_steps=saved_total)
    if own is not None:
        restore_rng(own["rng"])


# --------------------------------------------------------------------------- the end-of-run check


def _position(sampler: ResumableSampler, state: TrainerState) -> tuple[int, int, int]:
    """(epoch, consumed, offset) where a run in state ``state`` continues; an epoch's end is the next's start."""
    sampler.set_epoch(state.epoch, start=state.consumed, offset=state.epoch_offset)
    if next(iter(sampler), None) is None:
        return state.epoch + 1, 0, 0
    return state.epoch, state.consumed, state.epoch_offset


def state_restore_check(checkpoints: CheckpointManager, state: TrainerState, sampler: ResumableSampler,
                        scheduler: torch.optim.lr_scheduler.LambdaLR,
                        optimizer: torch.optim.Optimizer | None) -> bool | None:
    """Load the newest checkpoint's trainer state into a fresh ``TrainerState`` and sampler and compare (rank 0).

    True when the step, the sampler position (epoch, position in it, skip ledger), the optimizer's
    state keys (per parameter; ``optimizer`` None: not compared, e.g. a sharded one) and the
    scheduler's state keys and step match what the trainer holds now; None when there is no checkpoint.
    """
    path = checkpoints.latest_valid()
    if path is None:
        return None
    ck = checkpoints.load(path, skip={"model.safetensors"})
    saved = ck.json_files["trainer_state.json"]
    fresh = TrainerState.from_json(saved)

    def sampler_from(state: dict[str, Any]) -> ResumableSampler:
        out = ResumableSampler(sampler.sample_ids, seed=sampler.seed, rank=sampler.rank, world_size=sampler.world_size)
        out.load_state_dict(state)
        return out

    restored, mine = sampler_from(saved["sampler"]), sampler_from(sampler.state_dict())
    opt, sched = ck.torch_files.get("optimizer.pt", {}), ck.torch_files.get("scheduler.pt", {})
    checks = {"step": fresh.step == state.step,
              "sampler position": _position(restored, fresh) == _position(mine, state),
              "skip ledger": restored.skip == sampler.skip,
              "scheduler": set(sched) == set(scheduler.state_dict())
              and int(sched.get("last_epoch", -1)) == scheduler.last_epoch}
    if optimizer is not None:
        now = optimizer.state_dict()
        checks["optimizer"] = (set(opt) == set(now) and set(opt.get("state", {})) == set(now["state"])
                               and all(set(opt["state"][k]) == set(now["state"][k]) for k in opt.get("state", {})))
    failed = [k for k, ok in checks.items() if not ok]
    if failed:
        log.warning("the newest checkpoint %s does not restore the trainer's state: %s differ", path, ", ".join(failed))
    return not failed


__all__ = ["RunSettings", "adopt_world_size", "apply_settings", "settings_changes",
           "state_restore_check"]
