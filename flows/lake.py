"""Where a run writes: the lake directory and run names (no prefect import, so the CLI checks stay fast)."""

from __future__ import annotations

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


def check_resumable(cfg, run_dir: Path) -> None:
    """Refuse, before anything runs, to reuse a run directory whose checkpoints hold another model.

    Training settings (epochs, lr, ...) may change between a run and its resume; the model may not:
    its checkpoints would be meaningless.  Raises ``schemas.ConfigError`` naming what changed.
    """
    from schemas import ConfigError, OpenMindConfig, load_config

    old_path = run_dir / "config.yaml"
    if not old_path.is_file() or not any((run_dir / "checkpoints").glob("step-*")):
        return
    try:
        old: OpenMindConfig = load_config(old_path)
    except ConfigError:
        return  # unreadable old config: the trainer's own fingerprint check still guards the resume
    if old.fingerprint("model") == cfg.fingerprint("model"):
        return
    before, after = _flatten(old.model.model_dump(mode="json")), _flatten(cfg.model.model_dump(mode="json"))
    changed = [f"model.{k}: {before.get(k)!r} -> {after.get(k)!r}" for k in sorted(set(before) | set(after))
               if before.get(k) != after.get(k)]
    raise ConfigError(f"run directory {run_dir} holds checkpoints of a different model ({'; '.join(changed[:4])}); "
                      "use a new --run-name, or the run's original model settings to resume it")
