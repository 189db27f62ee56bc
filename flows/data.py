"""The data-only flow: download + JSONL->Parquet conversion (``openmind data prepare``), fanned out as ``week1`` does."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

import tasks  # noqa: F401  (Prefect environment defaults before prefect loads)
from prefect import flow
from prefect.runtime import flow_run

from flows.lake import resolve_lake
from openmind_core.data.inputs import input_stamp
from schemas import CuratedDataset, load_config
from tasks.common import in_lake
from tasks.convert import curate
from tasks.download import download_task
from tasks.fanout import fan_out_convert


def _flow_run_name() -> str:
    """``prepare-<source>-<time>``, e.g. ``prepare-jsonl-20250101-030000``: what it does, and when."""
    params = flow_run.parameters
    try:
        source = load_config(params.get("config_path"), params.get("overrides")).data.source
    except Exception:  # a bad config fails in the flow body, with its message
        source = "data"
    return f"prepare-{source}-{datetime.now():%Y%m%d-%H%M%S}"


@flow(name="prepare-data", flow_run_name=_flow_run_name, log_prints=True, validate_parameters=True)
def prepare_data(config_path: str | None = None, overrides: list[str] | None = None, lake: str | None = None,
                 task_runner: Literal["thread", "dask"] = "thread", dask_address: str | None = None) -> CuratedDataset:
    """Download and convert: one ``convert-file`` task per raw file on ``task_runner``, merged (``tasks/fanout.py``)."""
    cfg = load_config(config_path, overrides)
    lake_dir = str(resolve_lake(lake))
    # results and cache records in <lake>/.prefect-results; a cache hit needs the stage's files in the lake
    raw = in_lake(download_task, lake_dir)(cfg.data, lake_dir, cfg.run.seed, input_stamp(cfg.data))
    merged = fan_out_convert(raw, cfg.data, lake_dir, task_runner, dask_address)
    return curate(raw, cfg.data, lake_dir, merged)
