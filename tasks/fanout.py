"""Conversion fanned out: one Prefect task per raw file on the flow's task runner, then a merge task.

``fan_out_convert(raw, data, lake)`` submits ``convert-file`` for every file of the download
(several JSONL files, several ``data.hf`` entries) to the flow's task runner (threads by default;
``openmind run --task-runner dask`` spreads them over a Dask cluster's processes or machines,
which must see the lake's file system), waits for them and merges their parts into the curated
version that a serial conversion writes, byte for byte (``openmind_core/data/parallel_convert.py``).  A
download of one file, or a version already complete, is left to the cached ``convert`` stage.
"""

from __future__ import annotations

from pathlib import Path

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.logging import get_run_logger

from openmind_core.data import parallel_convert
from schemas import CuratedDataset, DataConfig, RawDataset
from tasks.common import retrying


@task(name="convert-file", task_run_name="convert-file-{order}", cache_policy=NO_CACHE, **retrying(2))
def convert_file_task(raw_root: str, data: DataConfig, order: int, work: str) -> parallel_convert.FilePart:
    part = parallel_convert.convert_file(raw_root, data, order, work)
    get_run_logger().info("file %d: %d rows read, %d quarantined", order, part.rows_in, sum(part.reasons.values()))
    return part


@task(name="convert-merge", cache_policy=NO_CACHE, **retrying(1))
def merge_task(raw: RawDataset, data: DataConfig, lake: str,
               parts: list[parallel_convert.FilePart]) -> CuratedDataset:
    cur = parallel_convert.merge(raw, data, Path(lake), parts)
    get_run_logger().info("merged %d files into curated %s: %d rows kept, %d quarantined", len(parts), cur.version,
                          cur.rows_kept, cur.rows_quarantined)
    return cur


def fan_out_convert(raw: RawDataset, data: DataConfig, lake: str | Path) -> CuratedDataset | None:
    """Per-file conversion tasks and their merge; None when there is nothing to fan out."""
    version, n, work = parallel_convert.plan(raw, data, lake)
    if n < 2 or parallel_convert.is_complete(raw, data, lake):
        return None
    futures = [convert_file_task.submit(raw.root, data, i, str(work / f"file-{i:05d}")) for i in range(n)]
    return merge_task(raw, data, str(lake), [f.result() for f in futures])
