"""A run's directory, and the one check of whether a run may resume, made before anything is written.

``check_resumable(cfg, run_dir)`` is the resumability check: the CLI's pre-flight and the flow's
first step (``prepare_run_dir``, which deployments run too) call it, so a resume that cannot be
right is refused with one line naming what changed, before a file is written.  It compares the
config with what the run directory holds:

* the model: the newest checkpoint's fingerprint (``fingerprint.json``), named key by key from the
  run's ``config.yaml``;
* the data: the data settings that decide the curated data (the chosen source's section, the
  split, the seed) from ``config.yaml``, the seed pinned in the fingerprint, and the local inputs'
  stamps (``inputs.json``: size and mtime when the run started);
* the batch (``micro_batch_size x grad_accum``) at an unchanged number of processes.  Another
  number of processes may bring its own split of the batch: checkpoints hold full state dicts and
  the trainer reshards the epoch's position.

Other training settings (epochs, learning rates, ...) may change; the trainer records each change.
Once the data and the model are built, the trainer compares the whole fingerprint again (the
curated data version, the number of rows, the trainable parameters' shapes) as it loads a
checkpoint: nothing it refuses has been changed on disk.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from openmind_core.data.inputs import input_stamps
from openmind_core.io import atomic_write_text
from openmind_core.run_layout import CONFIG_FILE, FINGERPRINT_FILE, INPUTS_FILE, checkpoint_dirs
from schemas import ConfigError, OpenMindConfig, dotted_keys, load_config

DATA_NOT_CONTENT = {"num_workers"}  # data settings that do not change what the curated data holds
ADVICE = "use a new --run-name, or the run's original {} to resume it"


class ResumeRefused(ConfigError):
    """The run directory holds checkpoints this config cannot resume: one line naming what changed."""


def newest_fingerprint(run_dir: Path) -> dict:
    """The fingerprint.json of the newest checkpoint that has a readable one ({} if none)."""
    for ck in checkpoint_dirs(run_dir):
        try:
            return json.loads((ck / FINGERPRINT_FILE).read_text())
        except (OSError, ValueError):
            continue
    return {}


def _data_settings(cfg: OpenMindConfig) -> dict:
    """The data settings that decide the curated data: the chosen source's section, not the others'."""
    dump = cfg.data.model_dump(mode="json")
    others = {"synthetic", "jsonl", "coco", "hf"} - {cfg.data.source}
    out = dotted_keys({k: v for k, v in dump.items() if k not in others and k not in DATA_NOT_CONTENT}, "data.")
    out["run.seed"] = cfg.run.seed  # the synthetic source and the split draw from it
    return out


def _diff(before: dict, after: dict, limit: int = 4) -> list[str]:
    keys = [k for k in sorted(set(before) | set(after)) if before.get(k) != after.get(k)]
    return [f"{k}: {before.get(k)!r} -> {after.get(k)!r}" for k in keys[:limit]]


def _saved_config(run_dir: Path) -> OpenMindConfig | None:
    try:
        return load_config(run_dir / CONFIG_FILE) if (run_dir / CONFIG_FILE).is_file() else None
    except ConfigError:
        return None  # unreadable: the checkpoint's fingerprint (and the trainer's check) still guard


def model_fingerprint(cfg: OpenMindConfig, run_dir: str | Path) -> str:
    """The model fingerprint this run pins: ``cfg``'s, or the one its checkpoints hold when the run's
    ``config.yaml`` describes the same model as ``cfg``.  An earlier OpenMind wrote that fingerprint
    before settings were added (they read back at their defaults, so the dump, and its hash, grew):
    the model is the same, and the run resumes with the fingerprint it started with."""
    now = cfg.fingerprint("model")
    saved = newest_fingerprint(Path(run_dir)).get("model")
    if saved is None or saved == now:
        return now
    old = _saved_config(Path(run_dir))
    if old is not None and old.model.model_dump(mode="json") == cfg.model.model_dump(mode="json"):
        return saved
    return now


def check_lake_version(run_dir: str | Path, curated, converter_version: int) -> None:
    """Refuse, naming why, a run whose checkpoints were trained on a lake version an earlier converter
    wrote: this OpenMind converts the same inputs into another version, which the checkpoints' sample
    positions do not describe.  (Any other change of the data is the checks above, and the trainer's.)"""
    saved = newest_fingerprint(Path(run_dir)).get("data")
    if saved is None or saved == curated.version:
        return
    try:
        old = json.loads((Path(curated.root).parent / saved / "_manifest.json").read_text())
    except (OSError, ValueError):
        return  # not in this lake: the trainer's fingerprint check names the two versions
    if old.get("converter_version") == converter_version:
        return
    was = old.get("converter_version")
    raise ResumeRefused(
        f"run directory {run_dir} holds checkpoints trained on lake version {saved}, written by an earlier "
        f"OpenMind (converter {was if was is not None else f'< {converter_version}'}); this one converts the "
        f"same inputs into lake version {curated.version} (converter {converter_version}), which the checkpoints "
        "do not describe: finish the run with the OpenMind that started it, or use a new --run-name")


def check_resumable(cfg: OpenMindConfig, run_dir: str | Path) -> None:
    """Raise ``ResumeRefused`` when ``cfg`` cannot resume the checkpoints in ``run_dir`` (see the module
    docstring); no checkpoint, nothing to check.  Reads only; writes nothing."""
    run_dir = Path(run_dir)
    if not checkpoint_dirs(run_dir):
        return
    old = _saved_config(run_dir)
    saved = newest_fingerprint(run_dir)

    model_changed = (saved["model"] != model_fingerprint(cfg, run_dir)) if "model" in saved else (
        old is not None and old.fingerprint("model") != cfg.fingerprint("model"))
    if model_changed:
        changed = _diff(dotted_keys(old.model.model_dump(mode="json"), "model."),
                        dotted_keys(cfg.model.model_dump(mode="json"), "model.")) if old is not None else []
        what = "; ".join(changed) or f"model fingerprint {saved.get('model')} -> {cfg.fingerprint('model')}"
        raise ResumeRefused(f"run directory {run_dir} holds checkpoints of a different model ({what}); "
                            + ADVICE.format("model settings"))

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
        raise ResumeRefused(f"run directory {run_dir} holds checkpoints trained on other data "
                            f"({'; '.join(changed)}); " + ADVICE.format("data and inputs"))

    batch = f"{cfg.train.micro_batch_size}x{cfg.train.grad_accum}"
    same_world = saved.get("world_size") in (None, str(cfg.train.nproc))
    if same_world and saved.get("batch") not in (None, batch):
        raise ResumeRefused(f"run directory {run_dir} holds checkpoints trained with another batch "
                            f"(train.micro_batch_size x train.grad_accum: {saved['batch']} -> {batch}); "
                            + ADVICE.format("batch settings"))


def resolve_init_from(init_from: str, lake: str | Path) -> Path:
    """Where ``model.init_from`` points: an absolute path as it is; a relative one inside the lake
    (``runs/smol/final`` works with any ``--lake``), or, when only that exists, from the working directory
    (configs written before init_from was read from the lake)."""
    path = Path(init_from).expanduser()
    if path.is_absolute():
        return path
    in_lake = Path(os.path.abspath(Path(lake).expanduser() / path))
    return in_lake if in_lake.exists() or not path.exists() else Path(os.path.abspath(path))


def with_lake_paths(cfg: OpenMindConfig, lake: str | Path) -> OpenMindConfig:
    """``cfg`` with ``model.init_from`` resolved against the lake (``resolve_init_from``): the CLI's
    pre-flight and the flow use, check and record the same absolute path."""
    if not cfg.model.init_from:
        return cfg
    resolved = str(resolve_init_from(cfg.model.init_from, lake))
    if resolved == cfg.model.init_from:
        return cfg
    out = cfg.model_copy(deep=True)
    out.model.init_from = resolved
    return out


def record_inputs(cfg: OpenMindConfig, run_dir: Path) -> None:
    """Write ``<run>/inputs.json`` (the inputs' stamps) the first time a run starts; a resume keeps it."""
    path = run_dir / INPUTS_FILE
    if not path.exists() or not checkpoint_dirs(run_dir):
        atomic_write_text(path, json.dumps(input_stamps(cfg.data), indent=1, sort_keys=True) + "\n")


def prepare_run_dir(cfg: OpenMindConfig, lake: Path, run_name: str) -> Path:
    """Create ``<lake>/runs/<run>/`` and write the resolved config and the inputs' stamps, unless the run
    would resume checkpoints of another model, other data or another batch (checked before any write)."""
    run_dir = Path(lake) / "runs" / run_name
    check_resumable(cfg, run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    record_inputs(cfg, run_dir)
    atomic_write_text(run_dir / CONFIG_FILE, cfg.to_yaml())
    return run_dir
