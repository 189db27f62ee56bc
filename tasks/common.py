"""What every task shares: the retry condition, cache policy, and small artifact helpers."""

from __future__ import annotations

import errno
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prefect.cache_policies import INPUTS, TASK_SOURCE, CachePolicy
from prefect.tasks import exponential_backoff

from schemas import ConfigError
from openmind_core import interrupt

RESULTS_DIR = ".prefect-results"  # under the lake: task results and cache records live with what they describe


@dataclass
class LakeChecked(CachePolicy):
    """``base``'s key, but a cached result whose files in the lake are gone is forgotten first.

    The result record (``<lake>/.prefect-results/<key>``) names files in the lake; when one of them is
    deleted or moved, the record is removed before Prefect looks it up, so the stage runs again (the
    core functions are idempotent: whatever still exists is reused) and a result pointing at nothing
    is never reported as done.
    """

    base: CachePolicy | None = None

    def compute_key(self, task_ctx: Any, inputs: dict[str, Any], flow_parameters: dict[str, Any],
                    **kwargs: Any) -> str | None:
        key = self.base.compute_key(task_ctx, inputs, flow_parameters, **kwargs) if self.base else None
        lake = (inputs or {}).get("lake")
        if key is not None and lake:
            record = Path(lake) / RESULTS_DIR / key
            if record.is_file() and _missing_files(record, Path(lake)):
                record.unlink(missing_ok=True)
        return key


def _missing_files(record: Path, lake: Path) -> bool:
    """True when the persisted result in ``record`` names a path under ``lake`` that no longer exists."""
    try:
        result = json.loads(json.loads(record.read_text())["result"])
    except (OSError, ValueError, KeyError, TypeError):
        return True  # unreadable: not worth trusting
    prefix = str(lake).rstrip("/") + "/"

    def paths(v: Any):
        if isinstance(v, str) and v.startswith(prefix):
            yield v
        elif isinstance(v, dict):
            for x in v.values():
                yield from paths(x)
        elif isinstance(v, list):
            for x in v:
                yield from paths(x)

    return any(not Path(p).exists() for p in paths(result))


def lake_cache(*ignore: str) -> CachePolicy:
    """Re-running a stage is skipped only when its inputs (but for those named in ``ignore``) and code are
    the same (the default policy also keys on the flow-run id, so a rerun would miss) and the files its
    cached result names still exist."""
    inputs = INPUTS
    for name in ignore:
        inputs = inputs - name
    return LakeChecked(base=inputs + TASK_SOURCE)


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


# A stage whose result later flow runs reuse: cached on inputs + task source while the files it names
# exist, the result persisted as JSON (``in_lake``: in the lake).
CACHED = dict(cache_policy=lake_cache(), persist_result=True, result_serializer="json")


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
