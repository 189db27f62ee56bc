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
