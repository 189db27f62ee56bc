"""Which failures the tasks retry: transient ones yes; config, data, smoke and programming errors no."""

from __future__ import annotations

import pytest

from tasks.common import is_permanent, retry_transient


class _State:
    def __init__(self, exc):
        self.exc = exc

    def result(self):
        raise self.exc


@pytest.mark.parametrize("exc", [ConnectionError("reset"), TimeoutError("slow"), OSError(5, "I/O error"),
                                 RuntimeError("torchrun exited with code -9")])
def test_transient_failures_retry(exc):
    assert not is_permanent(exc) and retry_transient(None, None, _State(exc))


def test_permanent_failures_do_not_retry():
    from openmind_core.data import DataError
    from openmind_core.app.smoke import SmokeError
    from openmind_core.training import ResumeError
    from schemas import ConfigError

    for exc in [ConfigError("train.lr"), DataError("all rows bad"), SmokeError("projector"), ResumeError("model changed"),
                FileNotFoundError("x.jsonl"), NameError("bug"), ValueError("bad")]:
        assert is_permanent(exc) and not retry_transient(None, None, _State(exc)), exc
