"""Where a run writes: the lake directory and run names (no prefect import, so the CLI checks stay fast)."""

from __future__ import annotations

import json
import os
from datetime import datetime
from pathlib import Path

DEFAULT_LAKE = "data_lake"


def resolve_lake(lake: str | None) -> Path:
    """``--lake``, else ``$OPENMIND_LAKE``, else ``./data_lake``; made absolute."""
    return Path(lake or os.environ.get("OPENMIND_LAKE") or DEFAULT_LAKE).expanduser().resolve()


def default_run_name() -> str:
    return datetime.now().strftime("run-%Y%m%d-%H%M%S")


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


INPUTS_FILE = "inputs.json"  # <run>/inputs.json: the stamps (size, mtime) of the inputs the run was started on
DATA_NOT_CONTENT = {"num_workers"}  # data settings that do not change what the curated data holds


def _newest_fingerprint(run_dir: Path) -> dict:
    """The fingerprint.json of the newest checkpoint that has one ({} if none is readable)."""
    for ck in sorted((run_dir / "checkpoints").glob("step-*"), reverse=True):
        try:
            return json.loads((ck / "fingerprint.json").read_text())
        except (OSError, ValueError):
            continue
    return {}


def _data_settings(cfg) -> dict:
    """The data settings that decide the curated data: the chosen source's section, not the others'."""
    dump = cfg.data.model_dump(mode="json")
    others = {"synthetic", "jsonl", "coco", "hf"} - {cfg.data.source}
    out = _flatten({k: v for k, v in dump.items() if k not in others and k not in DATA_NOT_CONTENT}, "data.")
    out["run.seed"] = cfg.run.seed  # the synthetic source and the split draw from it
    return out


def _diff(before: dict, after: dict, limit: int = 4) -> list[str]:
    keys = [k for k in sorted(set(before) | set(after)) if before.get(k) != after.get(k)]
    return [f"{k}: {before.get(k)!r} -> {after.get(k)!r}" for k in keys[:limit]]


def check_resumable(cfg, run_dir: Path) -> None:
    """Refuse, before anything runs or is written, to resume a run whose checkpoints were trained on
    another model, other data or another batch.

    Compared with the run directory: the model settings (config.yaml and the newest checkpoint's
    fingerprint), the data settings and the seed (config.yaml), the input files' stamps
    (``inputs.json``: size and mtime when the run started), and micro_batch_size x grad_accum at an
    unchanged number of processes.  Other training settings (epochs, lr, ...) may change.  Raises
    ``schemas.ConfigError`` with one line naming what changed.
    """
    from schemas import ConfigError, load_config
    from tasks.inputs import input_stamps

    if not any((run_dir / "checkpoints").glob("step-*")):
        return
    try:
        old = load_config(run_dir / "config.yaml") if (run_dir / "config.yaml").is_file() else None
    except ConfigError:
        old = None  # unreadable old config: the checkpoint's fingerprint (and the trainer's check) still guard
    saved = _newest_fingerprint(run_dir)
    advice = "use a new --run-name, or the run's original {} to resume it"

    model_changed = (saved["model"] != cfg.fingerprint("model")) if "model" in saved else (
        old is not None and old.fingerprint("model") != cfg.fingerprint("model"))
    if model_changed:
        changed = _diff(_flatten(old.model.model_dump(mode="json"), "model."),
                        _flatten(cfg.model.model_dump(mode="json"), "model.")) if old is not None else []
        what = "; ".join(changed) or f"model fingerprint {saved.get('model')} -> {cfg.fingerprint('model')}"
        raise ConfigError(f"run directory {run_dir} holds checkpoints of a different model ({what}); "
                          + advice.format("model settings"))

    changed = _diff(_data_settings(old), _data_settings(cfg)) if old is not None else []
    if not changed and "seed" in saved and saved["seed"] != str(cfg.run.seed):
        changed = [f"run.seed: {saved['seed']} -> {cfg.run.seed}"]
    if not changed:
        try:
            stamps = json.loads((run_dir / INPUTS_FILE).read_text())
        except (OSError, ValueError):
            stamps = {}
        now = input_stamps(cfg.data)
        changed = [f"{k} changed since the run started ({stamps[k].rsplit(':', 2)[0]}: size or mtime)"
                   for k in sorted(stamps) if k in now and now[k] != stamps[k]]
    if changed:
        raise ConfigError(f"run directory {run_dir} holds checkpoints trained on other data ({'; '.join(changed)}); "
                          + advice.format("data and inputs"))

    batch = f"{cfg.train.micro_batch_size}x{cfg.train.grad_accum}"
    same_world = saved.get("world_size") in (None, str(cfg.train.nproc))
    if same_world and saved.get("batch") not in (None, batch):
        raise ConfigError(f"run directory {run_dir} holds checkpoints trained with another batch "
                          f"(train.micro_batch_size x train.grad_accum: {saved['batch']} -> {batch}); "
                          + advice.format("batch settings"))


def record_inputs(cfg, run_dir: Path) -> None:
    """Write ``<run>/inputs.json`` (the inputs' stamps) the first time a run starts; a resume keeps it."""
    from openmind_core.io import atomic_write_text
    from tasks.inputs import input_stamps

    path = run_dir / INPUTS_FILE
    if not path.exists() or not any((run_dir / "checkpoints").glob("step-*")):
        atomic_write_text(path, json.dumps(input_stamps(cfg.data), indent=1, sort_keys=True) + "\n")
