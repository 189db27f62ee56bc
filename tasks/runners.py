"""Task runners for the per-file conversion tasks: ``--task-runner`` on the CLI, the ``task_runner`` parameter of a deployment.

- ``thread`` (default): Prefect's ``ThreadPoolTaskRunner`` in the flow's process.
- ``dask``: ``prefect_dask.DaskTaskRunner`` (``pip install -e '.[dask]'``): a temporary
  ``LocalCluster`` of worker processes for the flow run, or, with ``--dask-address tcp://host:8786``,
  an existing cluster (its workers must see the lake's file system and import openmind).
"""

from __future__ import annotations

import logging
import os

TASK_RUNNERS = ("thread", "dask")


def task_runner(kind: str = "thread", address: str | None = None, workers: int | None = None):
    """A Prefect task runner; ``ImportError`` with the install line when prefect-dask is missing."""
    if kind == "thread":
        if address:
            raise ValueError("a Dask address (--dask-address, dask_address) needs the task runner dask")
        from prefect.task_runners import ThreadPoolTaskRunner  # start-up cost: the CLI's pre-flight imports this module

        return ThreadPoolTaskRunner(max_workers=workers)
    if kind != "dask":
        raise ValueError(f"task runner {kind!r}: choose one of {', '.join(TASK_RUNNERS)}")
    try:
        from prefect_dask import DaskTaskRunner  # an optional extra
    except ImportError:
        raise ImportError("task runner dask needs prefect-dask: pip install -e '.[dask]'") from None
    if address:
        return DaskTaskRunner(address=address)
    # a temporary cluster's workers are killed at the end of the run: not worth a warning per worker
    logging.getLogger("distributed.nanny").setLevel(logging.ERROR)
    n = workers or min(4, os.cpu_count() or 1)
    return DaskTaskRunner(cluster_kwargs={"n_workers": n, "threads_per_worker": 1, "processes": True,
                                          "dashboard_address": None})
