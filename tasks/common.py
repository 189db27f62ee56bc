"""What every task shares: the retry condition, cache policy, and small artifact helpers."""

from __future__ import annotations

import errno
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prefect.cache_policies import INPUTS, TASK_SOURCE, CachePolicy
from prefect.utilities.hashing import hash_objects
from prefect.tasks import exponential_backoff

from schemas import ConfigError
from openmind_core import interrupt

RESULTS_DIR = ".prefect-results"  # under the lake: task results and cache records live with what they describe


@dataclass
class LakeContents(CachePolicy):
    """Part of a stage's cache key: the outputs now in the lake (``<lake>/<pattern>``: names and sizes).

    A stage's cached result names files in the lake; once they are deleted or replaced, the key
    changes and the stage runs again (the core functions are idempotent: what still exists is
    reused).  So a cached result whose files are gone is never reported as done.
    """

    pattern: str = ""

    def compute_key(self, task_ctx: Any, inputs: dict[str, Any], flow_parameters: dict[str, Any],
                    **kwargs: Any) -> str | None:
        lake = (inputs or {}).get("lake")
        if not lake:
            return None
        root = Path(lake)
        found = sorted((str(p.relative_to(root)), p.stat().st_size) for p in root.glob(self.pattern) if p.is_file())
        return hash_objects({"lake": str(root), "files": found})


def lake_cache(pattern: str) -> CachePolicy:
    """Re-running a stage is skipped only when its inputs, its code and its outputs in the lake are the
    same: the default policy also keys on the flow-run id, so a rerun would miss."""
    return INPUTS + TASK_SOURCE + LakeContents(pattern=pattern)



def lake_storage(lake: str | Path) -> Path:
    """Where a stage's persisted result (and its cache record) goes: ``<lake>/.prefect-results`` (a path:
    Prefect makes it a LocalFileSystem, no block to save on a server)."""
    return Path(lake) / RESULTS_DIR


def in_lake(task, lake: str | Path):
    """``task`` with its results stored in ``lake``: deleting or moving a lake takes its cache with it."""
    return task.with_options(result_storage=lake_storage(lake))

# Transient failures (I/O hiccups, a killed worker) retry with a growing, jittered delay.
RETRY_DELAYS = exponential_backoff(backoff_factor=2)
RETRY_JITTER = 0.5

# Errors that no retry can fix: bad config, bad data, a failed smoke check, a missing file, a bug.
PERMANENT = (ConfigError, ValueError, TypeError, KeyError, AttributeError, NameError, ImportError,
             NotImplementedError, FileNotFoundError, PermissionError, NotADirectoryError, IsADirectoryError)


def retrying(retries: int) -> dict:
    """Task options for a stage whose failures may be transient: backoff with jitter, permanent errors fail at once."""
    return dict(retries=retries, retry_delay_seconds=RETRY_DELAYS, retry_jitter_factor=RETRY_JITTER,
                retry_condition_fn=retry_transient)


def cached(pattern: str) -> dict:
    """Task options for a stage whose result later flow runs reuse: cached on inputs + task source + its
    outputs in the lake (``pattern`` under the lake), the result persisted as JSON (``in_lake``: in the lake)."""
    return dict(cache_policy=lake_cache(pattern), persist_result=True, result_serializer="json")


# OSErrors that say the path is wrong, not that the disk or network hiccuped
PERMANENT_ERRNOS = {errno.ENOENT, errno.EISDIR, errno.ENOTDIR, errno.EACCES, errno.EPERM, errno.EROFS, errno.ENAMETOOLONG}


def is_permanent(exc: BaseException) -> bool:
    names = {c.__name__ for c in type(exc).__mro__}
    if isinstance(exc, PERMANENT) or names & {"SmokeError", "ResumeError", "DataError", "PipelineError", "InputError"}:
        return True
    if isinstance(exc, OSError) and (exc.errno in PERMANENT_ERRNOS or "Expected file path" in str(exc)):
        return True  # pyarrow says "Expected file path" for a directory, with no errno
    return False


def retry_transient(task, task_run, state) -> bool:
    """``retry_condition_fn``: retry unless the failure is permanent (config/data/smoke errors) or the
    user asked the run to stop (Ctrl-C, SIGTERM)."""
    if interrupt.requested():
        return False
    try:
        state.result()
    except BaseException as exc:  # the task's exception
        return not is_permanent(exc)
    return True


def md_table(rows: list[tuple[str, object]]) -> str:
    out = ["| | |", "|---|---|"]
    out += [f"| {k} | {v} |" for k, v in rows]
    return "\n".join(out)
