"""Crash-safe training checkpoints: the files, and the Stateful objects they are saved from and loaded into.

Layout of one checkpoint, ``<run>/checkpoints/step-00000020/`` (in brackets the named states each
file holds)::

    model.safetensors    trainable weights only [model] (frozen ones are rebuilt by the caller)
    optimizer.pt         optimizer state [optimizer]           } torch.save, loaded with
    scheduler.pt         LR scheduler state [scheduler]        } weights_only=True
    scaler.pt            GradScaler state, fp16 only [scaler]  }
    rank-<R>.pt          rank R's {"rng": RNG states [rng], "step_ids": recent sample ids [step_ids]}
    trainer_state.json   step, epoch, loader position, counters [trainer] and the settings it was
                         written with [settings] at the top level; "sampler" [sampler] (position and
                         skip ledger) and "detector" [detector] (the spike window) under their names
    fingerprint.json     what must not change across a resume (``fingerprint``; the world size may)
    manifest.json        sha256 of every file above; written LAST

The manager, after torchtitan's ``CheckpointManager``, is given the states by name (``states=``,
each with ``state_dict`` / ``load_state_dict``) and never sees the trainer.  ``save_states(step)``
writes them (every rank calls: the rank files are gathered, and a sharded model's weights and
optimizer state; rank 0 writes); ``load_states(path)`` checks the fingerprint and loads them back
(a state marked ``rank0_only`` is read from disk by rank 0 alone and broadcast by its own load).

Writing: the directory is staged under a hidden temporary name (``io.staged_dir``), the tensors
streamed into their files (``safetensors.torch.save_file``, ``torch.save`` into the open file: no
serialised copy in RAM), each file hashed by reading it back in chunks and fsynced, the manifest
last; then the directory is renamed into place (an existing step is replaced through ``.old-``).
Pruning (and a rollback's ``delete_after``) renames a doomed checkpoint to ``.del-`` before deleting
it (``io.remove_dir``), so a crash mid-delete never leaves a half-deleted ``step-...`` directory.
``cleanup_stale`` (start of a run) removes temporaries (``.step-....tmp-...``, and the
``.tmp-step-...`` that versions before ``io.staged_dir`` left) and ``.del-`` leftovers, and restores
an ``.old-`` whose replacement never landed.  ``latest_valid`` returns the newest checkpoint whose
manifest and hashes check out, warning about (and passing over) corrupted or partial ones.

``on_phase(phase, step)`` is called at three instants of a write: ``ckpt-write`` (the weights
written, the rest not), ``ckpt-commit`` (renamed into place, not yet pruned) and ``prune`` (an old
checkpoint renamed to ``.del-``, not yet deleted); the test-only kill points hook in there.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import safetensors.torch
import torch

from openmind_core.io import (DEL_PREFIX, OLD_PREFIX, clean_stale, fsync_dir, fsync_file, recover_replaced,
                              remove_dir, sha256_bytes, sha256_file, staged_dir, write_durable)
from openmind_core.run_layout import FINGERPRINT_FILE, STEP_RE, step_dirname
from openmind_core.training.distributed import all_gather_objects, barrier, broadcast_object
from openmind_core.training.errors import ResumeError
from openmind_core.training.fingerprint import WorldSizeChange, check_fingerprint

if TYPE_CHECKING:
    from torch.distributed.checkpoint.stateful import Stateful

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
STAGED_RE = re.compile(r"^\.(step-\d{8})\.tmp-")  # io.staged_dir's temporary for step-N
LEGACY_TMP_PREFIX = ".tmp-"  # the temporaries of versions before io.staged_dir: .tmp-step-N-<pid>
WEIGHTS = "model.safetensors"
MANIFEST = "manifest.json"
STATE_JSON = "trainer_state.json"
FINGERPRINT = FINGERPRINT_FILE

TORCH_STATES = {"optimizer": "optimizer.pt", "scheduler": "scheduler.pt", "scaler": "scaler.pt"}
RANK_STATES = ("rng", "step_ids")  # each rank's, in rank-<R>.pt under these names
TOP_LEVEL_STATES = ("trainer", "settings")  # their keys at trainer_state.json's top level
NESTED_STATES = ("sampler", "detector")  # under their names in trainer_state.json
KNOWN_STATES = {"model", *TORCH_STATES, *RANK_STATES, *TOP_LEVEL_STATES, *NESTED_STATES}


def rank_file(rank: int) -> str:
    return f"rank-{rank}.pt"


def step_of(path: str | Path) -> int:
    return int(Path(path).name.split("-")[1])


@dataclass
class LoadedCheckpoint:
    path: Path
    step: int
    weights: dict[str, torch.Tensor]
    torch_files: dict[str, Any] = field(default_factory=dict)
    json_files: dict[str, Any] = field(default_factory=dict)


@dataclass
class LoadedStates:
    """What ``load_states`` restored; with a ``world_change`` the rank states are left to the caller
    (``rank_files``: the saved ranks' ``rank-<R>.pt`` contents by rank)."""

    path: Path
    step: int
    world_change: WorldSizeChange | None
    rank_files: dict[int, dict[str, Any]]


class CheckpointManager:
    """Writes, validates, finds, loads and prunes the checkpoints under ``root``; with ``states``, saves
    and restores them.  ``rank``: this process's (rank 0 writes); ``fingerprint``: this run's."""

    def __init__(self, root: str | Path, keep_last: int = 3, *,
                 states: Mapping[str, "Stateful | None"] | None = None, fingerprint: dict[str, str] | None = None,
                 rank: int = 0, on_phase: Callable[[str, int], None] | None = None) -> None:
        self.root = Path(root)
        self.keep_last = keep_last
        self.states = dict(states or {})
        unknown = set(self.states) - KNOWN_STATES
        if unknown:
            raise ValueError(f"no place in a checkpoint for the states {sorted(unknown)}")
        self.fingerprint = fingerprint or {}
        self.rank = rank
        self.on_phase = on_phase

    def _phase(self, phase: str, step: int) -> None:
        if self.on_phase is not None:
            self.on_phase(phase, step)

    # -- naming --------------------------------------------------------------------------

    def path(self, step: int) -> Path:
        return self.root / step_dirname(step)

    def steps(self) -> list[int]:
        """Steps of committed (renamed) checkpoint directories, oldest first; not validated."""
        if not self.root.is_dir():
            return []
        out = []
        for p in self.root.iterdir():
            m = STEP_RE.match(p.name)
            if m and p.is_dir():
                out.append(int(m.group(1)))
        return sorted(out)

    # -- housekeeping --------------------------------------------------------------------

    def cleanup_stale(self) -> None:
        """Remove temporaries of interrupted writes and deletions; restore an ``.old-`` whose replacement
        never landed."""
        if not self.root.is_dir():
            return
        for p in sorted(self.root.iterdir()):
            name = p.name
            staged = STAGED_RE.match(name)
            if name.startswith(OLD_PREFIX):
                if recover_replaced(self.root / name[len(OLD_PREFIX):]):
                    log.warning("restoring %s: its replacement was interrupted", name[len(OLD_PREFIX):])
            elif staged or name.startswith(LEGACY_TMP_PREFIX):
                log.warning("removing stale partial checkpoint %s", p)
                if staged:
                    clean_stale(self.root, staged.group(1))
                else:
                    shutil.rmtree(p, ignore_errors=True)
            elif name.startswith(DEL_PREFIX) and p.exists():
                log.warning("finishing the interrupted deletion of %s", name[len(DEL_PREFIX):])
                clean_stale(self.root, name[len(DEL_PREFIX):])
        fsync_dir(self.root)

    def validate(self, path: Path) -> str | None:
        """None when ``path`` is a complete, uncorrupted checkpoint, else the reason it is not."""
        mf = path / MANIFEST
        if not mf.is_file():
            return "no manifest.json (partial write)"
        try:
            manifest = json.loads(mf.read_text())
            files = manifest["files"]
        except (ValueError, KeyError) as e:
            return f"unreadable manifest.json ({e})"
        for name, digest in files.items():
            f = path / name
            if not f.is_file():
                return f"missing {name}"
            if sha256_file(f) != digest:
                return f"sha256 mismatch in {name}"
        return None

    def latest_valid(self, max_step: int | None = None) -> Path | None:
        """The newest checkpoint (at or before ``max_step``) that validates."""
        for step in reversed(self.steps()):
            if max_step is not None and step > max_step:
                continue
            path = self.path(step)
            reason = self.validate(path)
            if reason is None:
                return path
            log.warning("skipping checkpoint %s: %s", path, reason)
        return None

    def find_latest(self, max_step: int | None = None) -> Path | None:
        """Collective ``latest_valid``: rank 0 looks, every rank gets its answer."""
        path = self.latest_valid(max_step) if self.rank == 0 else None
        path = broadcast_object(str(path) if path else None)
        return Path(path) if path else None

    def find_resumable(self) -> Path | None:
        """Collective, at the start of a run: rank 0 cleans up after crashed writers, then ``find_latest``."""
        if self.rank == 0:
            self.cleanup_stale()
        barrier()
        return self.find_latest()

    def remove(self, step: int) -> None:
        """Delete one checkpoint crash-safely: rename to ``.del-step-...`` (durable), then delete."""
        remove_dir(self.path(step), before_delete=lambda: self._phase("prune", step))

    def delete_after(self, step: int) -> None:
        for s in self.steps():
            if s > step:
                self.remove(s)
        fsync_dir(self.root)

    def prune(self, protect: set[int] | None = None) -> None:
        """Keep the newest ``keep_last`` checkpoints plus the protected steps (e.g. the best)."""
        steps = self.steps()
        keep = set(steps[-self.keep_last:]) | set(protect or ())
        for s in steps:
            if s not in keep:
                self.remove(s)

    # -- files ---------------------------------------------------------------------------

    def save(self, step: int, weights: dict[str, torch.Tensor], torch_files: dict[str, Any],
             json_files: dict[str, Any]) -> Path:
        """Write one checkpoint crash-safely (staged dir, fsync, manifest last, rename)."""
        dest = self.path(step)
        digests: dict[str, str] = {}
        with staged_dir(dest, replace=True) as tmp:
            # streamed tensor by tensor into the file (no serialised copy of the checkpoint in RAM);
            # already-CPU contiguous tensors (FSDP's gathered state, CPU training) are not copied either
            tensors = {k: v.detach().to("cpu").contiguous() for k, v in weights.items()}
            safetensors.torch.save_file(tensors, str(tmp / WEIGHTS))
            del tensors
            fsync_file(tmp / WEIGHTS)  # written from Rust: hashed by reading it back, as validate will
            digests[WEIGHTS] = sha256_file(tmp / WEIGHTS)
            self._phase("ckpt-write", step)
            for name, obj in torch_files.items():
                with open(tmp / name, "wb") as f:  # torch.save writes record by record into the file
                    torch.save(obj, f)
                    f.flush()
                    os.fsync(f.fileno())
                digests[name] = sha256_file(tmp / name)
            for name, obj in json_files.items():
                data = (json.dumps(obj, indent=1, sort_keys=True) + "\n").encode()
                write_durable(tmp / name, data)
                digests[name] = sha256_bytes(data)
            manifest = {"format": FORMAT_VERSION, "step": step, "files": digests, "created": time.time()}
            write_durable(tmp / MANIFEST, json.dumps(manifest, indent=1, sort_keys=True).encode())
        self._phase("ckpt-commit", step)
        return dest

    def load(self, path: Path, skip: Collection[str] = ()) -> LoadedCheckpoint:
        """Read a validated checkpoint; torch files with ``weights_only=True``; ``skip``: files not to read."""
        manifest = json.loads((path / MANIFEST).read_text())
        out = LoadedCheckpoint(path=path, step=int(manifest["step"]), weights={})
        for name in manifest["files"]:
            if name in skip:
                continue
            f = path / name
            if name == WEIGHTS:
                out.weights = safetensors.torch.load_file(str(f))
            elif name.endswith(".pt"):
                out.torch_files[name] = torch.load(f, map_location="cpu", weights_only=True)
            elif name.endswith(".json"):
                out.json_files[name] = json.loads(f.read_text())
        return out

    # -- states --------------------------------------------------------------------------

    def save_states(self, step: int, protect: set[int] | None = None) -> Path | None:
        """Checkpoint every state as step ``step`` and prune (keeping ``protect``); every rank calls,
        rank 0 writes and gets the path."""
        s = self.states
        all_ranks = all_gather_objects({name: s[name].state_dict() for name in RANK_STATES})
        weights = s["model"].state_dict()  # collectives under FSDP: every rank gathers
        optimizer = s["optimizer"].state_dict()
        path = None
        if self.rank == 0:
            torch_files: dict[str, Any] = {"optimizer.pt": optimizer}
            for name in ("scheduler", "scaler"):
                if s.get(name) is not None:
                    torch_files[TORCH_STATES[name]] = s[name].state_dict()
            for r, state in enumerate(all_ranks):
                torch_files[rank_file(r)] = state
            doc: dict[str, Any] = {}
            for name in TOP_LEVEL_STATES:
                doc.update(s[name].state_dict())
            doc.update({name: s[name].state_dict() for name in NESTED_STATES})
            path = self.save(step, weights, torch_files, {STATE_JSON: doc, FINGERPRINT: self.fingerprint})
            self.prune(protect)
        barrier()
        return path

    def load_states(self, path: Path) -> LoadedStates:
        """Check checkpoint ``path``'s fingerprint and load every state from it (every rank calls).

        Raises ResumeError, before any state changes, when the fingerprint differs (but for the
        number of processes: then ``world_change`` says so and the rank states are not loaded)."""
        s = self.states
        heavy = {"model": WEIGHTS, "optimizer": TORCH_STATES["optimizer"]}
        skip = {f for name, f in heavy.items() if getattr(s[name], "rank0_only", False)} if self.rank != 0 else set()
        ck = self.load(path, skip=skip)
        change = check_fingerprint(ck.json_files.get(FINGERPRINT, {}), self.fingerprint, path)
        try:
            s["model"].load_state_dict(ck.weights)
        except ResumeError as e:
            raise ResumeError(f"cannot resume from {path}: {e}") from None
        s["optimizer"].load_state_dict({} if "optimizer.pt" in skip else ck.torch_files["optimizer.pt"])
        s["scheduler"].load_state_dict(ck.torch_files["scheduler.pt"])
        if s.get("scaler") is not None and "scaler.pt" in ck.torch_files:
            s["scaler"].load_state_dict(ck.torch_files["scaler.pt"])
        doc = ck.json_files[STATE_JSON]
        for name in NESTED_STATES:
            s[name].load_state_dict(doc[name])
        for name in TOP_LEVEL_STATES:
            s[name].load_state_dict(doc)
        ranks = {int(m.group(1)): v for k, v in ck.torch_files.items() if (m := re.fullmatch(r"rank-(\d+)\.pt", k))}
        if change is None:
            own = ranks.get(self.rank)
            if own is None:
                raise ResumeError(f"cannot resume from {path}: it has no state for rank {self.rank}")
            for name in RANK_STATES:
                s[name].load_state_dict(own[name])
        return LoadedStates(path, ck.step, change, ranks)


__all__ = ["CheckpointManager", "LoadedCheckpoint", "LoadedStates", "step_of"]
