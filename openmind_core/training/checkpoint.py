"""Crash-safe training checkpoints and atomic model directories.

Layout of one checkpoint, ``<run>/checkpoints/step-00000020/``::

    model.safetensors    trainable weights only (frozen ones are rebuilt by the caller)
    optimizer.pt         optimizer state          } torch.save, loaded with weights_only=True
    scheduler.pt         LR scheduler state       }
    scaler.pt            GradScaler state (fp16)  }
    rank-<R>.pt          python/numpy/torch/cuda RNG states and recent sample ids of rank R
    trainer_state.json   step, epoch, loader position, skip ledger, spike window, counters
    fingerprint.json     what must not change across a resume (model shape, data, batch), and the
                         world size, which may (``check_fingerprint`` -> WorldSizeChange)
    manifest.json        sha256 of every file above; written LAST

A checkpoint is written into ``.tmp-step-...``, the tensors streamed into their files
(``safetensors.torch.save_file``, ``torch.save`` into the open file: no serialised copy in RAM),
each file hashed by reading it back in chunks, every file fsynced, the manifest last, the
directory fsynced and then renamed; replacing an existing step moves the old one to ``.old-...``
first.  Pruning (and a rollback's ``delete_after``) first renames a doomed checkpoint to
``.del-...`` and only then deletes it, so a crash mid-delete never leaves a half-deleted
``step-...`` directory.  ``cleanup_stale`` (run at start) removes temporaries and ``.del-``
leftovers and restores an ``.old-`` whose replacement never landed.  ``latest_valid`` returns the
newest checkpoint whose manifest and hashes check out, warning about (and passing over) corrupted
or partial ones.

Frozen weights are NOT stored: resuming requires the caller to rebuild the model identically
(same seed / same pretrained weights), which the fingerprint helps enforce.  Under FSDP2 the
trainer gathers full state dicts onto rank 0 first (``distributed.full_*``), so the files are the
same whatever the strategy.

Test-only hook: ``OPENMIND_TEST_KILL_AT="phase:n,phase:n"`` makes ``kill_point(phase, n)`` SIGKILL
the process (used by tests/test_resume_kill.py to simulate crashes); with
``OPENMIND_TEST_KILL_MARKERS=<dir>`` each point fires once.  Never set it in real runs.
"""

from __future__ import annotations

import inspect
import json
import logging
import os
import re
import shutil
import signal
import time
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import safetensors.torch
import torch

from openmind_core.io import fsync_dir, sha256_bytes, sha256_file

log = logging.getLogger(__name__)

KILL_ENV = "OPENMIND_TEST_KILL_AT"
KILL_MARKERS_ENV = "OPENMIND_TEST_KILL_MARKERS"
FORMAT_VERSION = 1
STEP_RE = re.compile(r"^step-(\d{8})$")
WEIGHTS = "model.safetensors"
MANIFEST = "manifest.json"


class ResumeError(RuntimeError):
    """A checkpoint exists but cannot be resumed from (e.g. the model or data changed)."""


def kill_point(phase: str, n: int) -> None:
    """TEST-ONLY crash injection (see module docstring); a no-op unless the env var is set."""
    spec = os.environ.get(KILL_ENV)
    if not spec:
        return
    for item in spec.split(","):
        p, _, v = item.strip().partition(":")
        if p != phase or not v or int(v) != n:
            continue
        markers = os.environ.get(KILL_MARKERS_ENV)
        if markers:
            marker = Path(markers) / f"{phase}-{n}"
            if marker.exists():
                continue
            marker.parent.mkdir(parents=True, exist_ok=True)
            with open(marker, "w") as f:
                f.flush()
                os.fsync(f.fileno())
            fsync_dir(marker.parent)
        os.kill(os.getpid(), signal.SIGKILL)


def _write_durable(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _fsync_file(path: Path) -> None:
    """fsync a file that a library wrote and closed."""
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


def replace_dir(tmp: Path, dest: Path) -> None:
    """Move a finished ``tmp`` directory to ``dest``, replacing an existing one safely."""
    old = dest.parent / f".old-{dest.name}"
    if old.exists():
        shutil.rmtree(old)
    if dest.exists():
        os.replace(dest, old)
    os.replace(tmp, dest)
    fsync_dir(dest.parent)
    if old.exists():
        shutil.rmtree(old)


def _accepts_state_dict(fn: Any) -> bool:
    """``fn`` names a ``state_dict`` parameter, or takes ``**kwargs`` (an override that passes them on
    to transformers' ``save_pretrained``)."""
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
    return "state_dict" in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


def _save_pretrained_names(model: torch.nn.Module,
                           state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop the aliases of tied parameters the way ``safetensors.torch.save_model`` does (keep the
    alphabetically first name of each shared group), judged on the model's own parameter objects."""
    groups: dict[int, list[str]] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        groups.setdefault(id(p), []).append(name)
    drop = {n for names in groups.values() if len(names) > 1 for n in sorted(names)[1:]}
    return {k: v.detach().to("cpu").contiguous() for k, v in state_dict.items() if k not in drop}


def save_model_dir(model: torch.nn.Module, dest: str | Path,
                   state_dict: dict[str, torch.Tensor] | None = None) -> Path:
    """Save a whole model atomically: ``save_pretrained`` if it has one, else ``model.safetensors``.

    ``state_dict`` (a full, unsharded one, e.g. gathered from an FSDP2 model whose own parameters
    are DTensor shards) is written instead of the model's parameters: through
    ``save_pretrained(dir, state_dict=...)`` when the model's ``save_pretrained`` takes one
    (transformers models), else as ``model.safetensors`` with the key names ``save_pretrained`` /
    ``safetensors.torch.save_model`` would use (tied aliases dropped).  In that second case a
    custom ``save_pretrained``'s other files (config, tokenizer) are NOT written: a warning says so.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.parent / f".tmp-{dest.name}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    if state_dict is not None:
        if hasattr(model, "save_pretrained") and _accepts_state_dict(model.save_pretrained):
            model.save_pretrained(str(tmp), state_dict=state_dict)
        else:
            if hasattr(model, "save_pretrained"):
                log.warning("%s.save_pretrained takes no state_dict: %s gets %s only (no config/tokenizer)",
                            type(model).__name__, dest, WEIGHTS)
            safetensors.torch.save_file(_save_pretrained_names(model, state_dict), str(tmp / WEIGHTS),
                                        metadata={"format": "pt"})
    elif hasattr(model, "save_pretrained"):
        model.save_pretrained(str(tmp))
    else:
        safetensors.torch.save_model(model, str(tmp / WEIGHTS))
    for f in tmp.rglob("*"):
        if f.is_file():
            _fsync_file(f)
    fsync_dir(tmp)
    replace_dir(tmp, dest)
    return dest


@dataclass
class LoadedCheckpoint:
    path: Path
    step: int
    weights: dict[str, torch.Tensor]
    torch_files: dict[str, Any] = field(default_factory=dict)
    json_files: dict[str, Any] = field(default_factory=dict)


class CheckpointManager:
    """Writes, validates, finds, loads and prunes the checkpoints under ``root``."""

    def __init__(self, root: str | Path, keep_last: int = 3) -> None:
        self.root = Path(root)
        self.keep_last = keep_last

    # -- naming --------------------------------------------------------------------------

    def path(self, step: int) -> Path:
        return self.root / f"step-{step:08d}"

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
        """Remove temporaries of interrupted writes; restore an ``.old-`` whose replacement never landed."""
        if not self.root.is_dir():
            return
        for p in sorted(self.root.iterdir()):
            if p.name.startswith(".old-"):
                dest = self.root / p.name[len(".old-"):]
                if not dest.exists():
                    log.warning("restoring %s: its replacement was interrupted", dest.name)
                    os.replace(p, dest)
                else:
                    shutil.rmtree(p, ignore_errors=True)
            elif p.name.startswith(".tmp-"):
                log.warning("removing stale partial checkpoint %s", p)
                shutil.rmtree(p, ignore_errors=True)
            elif p.name.startswith(".del-"):
                log.warning("finishing the interrupted deletion of %s", p.name[len(".del-"):])
                shutil.rmtree(p, ignore_errors=True)
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

    def remove(self, step: int) -> None:
        """Delete one checkpoint crash-safely: rename to ``.del-step-...`` (durable), then delete."""
        path = self.path(step)
        doomed = self.root / f".del-{path.name}"
        if doomed.exists():
            shutil.rmtree(doomed, ignore_errors=True)
        os.replace(path, doomed)
        fsync_dir(self.root)
        kill_point("prune", step)  # test-only: crash while deleting an old checkpoint
        shutil.rmtree(doomed, ignore_errors=True)

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

    # -- write / read --------------------------------------------------------------------

    def save(self, step: int, weights: dict[str, torch.Tensor], torch_files: dict[str, Any],
             json_files: dict[str, Any]) -> Path:
        """Write one checkpoint crash-safely (tmp dir, fsync, manifest last, rename)."""
        self.root.mkdir(parents=True, exist_ok=True)
        dest = self.path(step)
        tmp = self.root / f".tmp-{dest.name}-{os.getpid()}"
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
        digests: dict[str, str] = {}
        # streamed tensor by tensor into the file (no serialised copy of the checkpoint in RAM);
        # already-CPU contiguous tensors (FSDP's gathered state, CPU training) are not copied either
        tensors = {k: v.detach().to("cpu").contiguous() for k, v in weights.items()}
        safetensors.torch.save_file(tensors, str(tmp / WEIGHTS))
        del tensors
        _fsync_file(tmp / WEIGHTS)  # written from Rust: hashed by reading it back, as validate will
        digests[WEIGHTS] = sha256_file(tmp / WEIGHTS)
        kill_point("ckpt-write", step)  # test-only: crash with a partial checkpoint
        for name, obj in torch_files.items():
            with open(tmp / name, "wb") as f:  # torch.save writes record by record into the file
                torch.save(obj, f)
                f.flush()
                os.fsync(f.fileno())
            digests[name] = sha256_file(tmp / name)
        for name, obj in json_files.items():
            data = (json.dumps(obj, indent=1, sort_keys=True) + "\n").encode()
            _write_durable(tmp / name, data)
            digests[name] = sha256_bytes(data)
        manifest = {"format": FORMAT_VERSION, "step": step, "files": digests, "created": time.time()}
        _write_durable(tmp / MANIFEST, json.dumps(manifest, indent=1, sort_keys=True).encode())
        fsync_dir(tmp)
        replace_dir(tmp, dest)
        kill_point("ckpt-commit", step)  # test-only: crash after the rename, before pruning
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


@dataclass(frozen=True)
class WorldSizeChange:
    """A resume whose only change is the number of processes (and maybe the per-rank batch with it)."""

    saved_world: int
    world: int
    saved_batch: str  # micro_batch_size x grad_accum
    batch: str

    def global_batch(self, saved: bool = False) -> int | None:
        try:
            micro, accum = (int(x) for x in (self.saved_batch if saved else self.batch).split("x"))
        except ValueError:
            return None
        return micro * accum * (self.saved_world if saved else self.world)


def _split_world_size(fp: dict[str, str]) -> dict[str, str]:
    """Fingerprints before the world size got a key of its own pinned ``batch`` = micro x accum x world."""
    fp = dict(fp)
    m = re.fullmatch(r"(\d+)x(\d+)x(\d+)", str(fp.get("batch", "")))
    if "world_size" not in fp and m:
        fp["batch"], fp["world_size"] = f"{m[1]}x{m[2]}", m[3]
    return fp


def check_fingerprint(saved: dict[str, str], current: dict[str, str], where: Path) -> WorldSizeChange | None:
    """Raise ResumeError naming every key that changed between a checkpoint and this run.

    A different ``world_size`` alone (with or without a different ``batch``, the per-rank
    micro_batch_size x grad_accum) is not refused: checkpoints hold full state dicts, so it is
    returned as a WorldSizeChange for the trainer to remap the data position and warn.
    """
    saved, current = _split_world_size(saved), _split_world_size(current)
    a_world, b_world = saved.get("world_size"), current.get("world_size")
    world_changed = a_world is not None and b_world is not None and a_world != b_world
    changed = []
    for key in sorted(set(saved) | set(current)):
        if world_changed and key in ("world_size", "batch"):
            continue
        a, b = saved.get(key), current.get(key)
        if a != b:
            changed.append(f"{key}: checkpoint {a!r}, now {b!r}")
    if changed:
        raise ResumeError(
            f"cannot resume from {where}: the run changed since it was written ({'; '.join(changed)}). "
            "Use a new run directory, or restore the original model/data/batch settings."
        )
    if not world_changed:
        return None
    return WorldSizeChange(int(str(a_world)), int(str(b_world)), str(saved.get("batch")), str(current.get("batch")))
