"""Task 2: JSONL -> validated, sharded Parquet under ``<lake>/curated/<version>/`` (bad rows quarantined)."""

from __future__ import annotations

from pathlib import Path

from prefect import task
from prefect.artifacts import create_markdown_artifact
from prefect.logging import get_run_logger

from openmind_core.data import convert
from schemas import CuratedDataset, DataConfig, RawDataset
from tasks.common import CACHED, in_lake, lake_cache, md_table, retrying
from tasks.live import conversion_progress


@task(name="convert", **retrying(2), **{**CACHED, "cache_policy": lake_cache("merged")})
def convert_task(raw: RawDataset, data: DataConfig, lake: str, merged: CuratedDataset | None = None) -> CuratedDataset:
    """``merged``: the version the fan-out (``tasks/fanout.py``) has just written in this flow run, taken
    as it is (not a cache key): it is recorded as this stage's result, so a later run reuses it."""
    log = get_run_logger()
    cur = merged if merged is not None else convert(raw, data, Path(lake), report=conversion_progress("week1-convert-progress"))
    by_reason = f" {cur.quarantine_by_reason}" if cur.quarantine_by_reason else ""
    log.info("curated %s%s: %d rows in, %d kept, %d quarantined%s; splits %s", cur.version,
             " (reused)" if cur.reused else "", cur.rows_in, cur.rows_kept, cur.rows_quarantined, by_reason, cur.splits)
    reasons = "<br>".join(f"{k}: {v}" for k, v in sorted(cur.quarantine_by_reason.items())) or "none"
    create_markdown_artifact(
        key="week1-convert",
        description="curated Parquet lake",
        markdown="# JSONL → Parquet\n\n" + md_table([
            ("version", f"`{cur.version}`"), ("rows in", cur.rows_in), ("rows kept", cur.rows_kept),
            ("rows quarantined", cur.rows_quarantined), ("quarantine reasons", reasons),
            ("splits", cur.splits), ("kinds", cur.kinds), ("shards", len(cur.shards)), ("root", f"`{cur.root}`"),
            ("normalised (kept)", cur.normalised_text() or "none"),
        ]),
    )
    return cur


def curate(raw: RawDataset, data: DataConfig, lake: str | Path, merged: CuratedDataset | None = None) -> CuratedDataset:
    """The ``convert`` stage with its result in the lake (``in_lake``): cached across runs, except when the
    fan-out has just written the version in this flow run (``merged``): then it runs and records anew."""
    stage = in_lake(convert_task, lake)
    if merged is not None:
        stage = stage.with_options(refresh_cache=True)
    return stage(raw, data, str(lake), merged)
