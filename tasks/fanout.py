"""Conversion fanned out: one Prefect task per raw file on the flow's task runner, then a merge task.

``fan_out_convert(raw, data, lake)`` submits ``convert-file`` for every file of the download
(several JSONL files, several ``data.hf`` entries) to the flow's task runner (threads by default;
``--task-runner dask``, or a deployment's ``task_runner: dask``, spreads them over a Dask cluster's
processes or machines, which must see the lake's file system), waits for them and merges their parts into the curated
version that a serial conversion writes, byte for byte (``openmind_core/data/parallel_convert.py``).  A
download of one file, or a version already complete, is left to the cached ``convert`` stage.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.logging import get_run_logger

from openmind_core.data import parallel_convert
from schemas import CuratedDataset, DataConfig, RawDataset
from tasks.common import retrying
from tasks.live import conversion_progress
from tasks.runners import task_runner


@task(name="convert-file", task_run_name="convert-file-{order}", cache_policy=NO_CACHE, **retrying(2))
def convert_file_task(raw_root: str, data: DataConfig, order: int, work: str) -> parallel_convert.FilePart:
    part = parallel_convert.convert_file(raw_root, data, order, work,
                                         report=conversion_progress(f"week1-convert-file-{order}-progress"))
    get_run_logger().info("file %d: %d rows read, %d quarantined (process %d on %s)", order, part.rows_in,
                          sum(part.reasons.values()), os.getpid(), socket.gethostname())
    return part


@task(name="convert-merge", cache_policy=NO_CACHE, **retrying(1))
def merge_task(raw: RawDataset, data: DataConfig, lake: str,
               parts: list[parallel_convert.FilePart]) -> CuratedDataset:
    cur = parallel_convert.merge(raw, data, Path(lake), parts)
    get_run_logger().info("merged %d files into curated %s: %d rows kept, %d quarantined", len(parts), cur.version,
                          cur.rows_kept, cur.rows_quarantined)
    return cur


def fan_out_convert(raw: RawDataset, data: DataConfig, lake: str | Path, runner: str = "thread",
                    address: str | None = None) -> CuratedDataset | None:
    """Per-file conversion tasks and their merge; None when there is nothing to fan out.

    ``runner``/``address``: where the per-file tasks run (``tasks.runners``): ``thread`` is the flow's
    own task runner; ``dask`` a Dask cluster started for them (or the one at ``address``), so a
    deployment's parameter, not only the flow's decorator, chooses."""
    version, n, work = parallel_convert.plan(raw, data, lake)
    if n < 2 or parallel_convert.is_complete(raw, data, lake):
        return None
    calls = [dict(raw_root=raw.root, data=data, order=i, work=str(work / f"file-{i:05d}")) for i in range(n)]
    if runner == "thread" and not address:
        parts = [f.result() for f in [convert_file_task.submit(**c) for c in calls]]
    else:
        with task_runner(runner, address) as pool:
            parts = [f.result() for f in [pool.submit(convert_file_task, c) for c in calls]]
    return merge_task(raw, data, str(lake), parts)
