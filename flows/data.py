"""The data-only flow: download + JSONL->Parquet conversion (``openmind data prepare``)."""

from __future__ import annotations

import tasks  # noqa: F401  (Prefect environment defaults before prefect loads)
from prefect import flow

from flows.lake import resolve_lake
from schemas import CuratedDataset, load_config
from tasks.common import in_lake
from tasks.convert import convert_task
from openmind_core.data.inputs import input_stamp
from tasks.download import download_task


@flow(name="prepare-data", log_prints=True)
def prepare_data(config_path: str | None = None, overrides: list[str] | None = None,
                 lake: str | None = None) -> CuratedDataset:
    cfg = load_config(config_path, overrides)
    lake_dir = str(resolve_lake(lake))
    # results and cache records in <lake>/.prefect-results; a cache hit needs the stage's files in the lake
    raw = in_lake(download_task, lake_dir)(cfg.data, lake_dir, cfg.run.seed, input_stamp(cfg.data))
    return in_lake(convert_task, lake_dir)(raw, cfg.data, lake_dir)
