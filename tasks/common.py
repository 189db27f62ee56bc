"""What every task shares: the retry condition, cache policy, and small artifact helpers."""

from __future__ import annotations

from prefect.cache_policies import INPUTS, TASK_SOURCE
from prefect.tasks import exponential_backoff

from schemas import ConfigError

# Re-running a stage after a cache hit must be skipped only when its inputs and code are the same:
# the default policy also keys on the flow-run id, so a rerun would miss.
STAGE_CACHE = INPUTS + TASK_SOURCE

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


# A stage whose result later flow runs reuse: cached on inputs + task source, result persisted as JSON.
CACHED = dict(cache_policy=STAGE_CACHE, persist_result=True, result_serializer="json")


def is_permanent(exc: BaseException) -> bool:
    names = {c.__name__ for c in type(exc).__mro__}
    return isinstance(exc, PERMANENT) or bool(names & {"SmokeError", "ResumeError", "DataError", "PipelineError"})


def retry_transient(task, task_run, state) -> bool:
    """``retry_condition_fn``: retry unless the failure is permanent (config/data/smoke errors)."""
    try:
        state.result()
    except BaseException as exc:  # the task's exception
        return not is_permanent(exc)
    return True


def md_table(rows: list[tuple[str, object]]) -> str:
    out = ["| | |", "|---|---|"]
    out += [f"| {k} | {v} |" for k, v in rows]
    return "\n".join(out)
