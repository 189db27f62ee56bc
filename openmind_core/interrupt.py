"""Ctrl-C and SIGTERM: training stops at the next step boundary, any other stage at once.

The CLI calls ``install()`` on its main thread.  A terminal's Ctrl-C reaches the whole foreground
process group (the CLI, data-loader workers, torchrun); a scheduler's SIGTERM usually the CLI only.
Either way the first signal is recorded (``requested()``):

- outside training it raises ``KeyboardInterrupt`` at once (Prefect marks the run Crashed);
- inside ``deferred()`` (the train task) it only sets the flag: ``check()`` at the next step
  boundary raises ``KeyboardInterrupt``, so no step is cut in half and the newest checkpoint (written
  atomically anyway) stays the newest.  If no step boundary comes within ``GRACE`` seconds (a long
  evaluation, a checkpoint of a large model), or a second signal arrives, it raises where it is.

Prefect replaces the SIGTERM handler while a flow runs (``capture_sigterm``); ``deferred()`` puts
ours back for the length of training and restores Prefect's afterwards.  Training under torchrun:
the CLI forwards the stop to torchrun, which sends SIGTERM to its workers; each worker installs
this module too, so they stop at the same step boundary (``app/train.py`` agrees on it across ranks).
No prefect import here.
"""

from __future__ import annotations

import _thread
import contextlib
import signal
import threading
from collections.abc import Iterator

GRACE = 3.0  # seconds a deferred stop waits for a step boundary before it interrupts where it is
SIGNALS = (signal.SIGINT, signal.SIGTERM)


class _State:
    signum: int | None = None  # the first signal received
    count = 0
    deferring = 0
    grace: float | None = GRACE  # of the innermost deferred(); None: wait for the step boundary however long
    installed = False
    raised = False  # the stop has been raised: a pending grace timer does nothing


_state = _State()


def requested() -> int | None:
    """The signal that asked the run to stop (``signal.SIGINT`` / ``SIGTERM``), or None."""
    return _state.signum


def exit_code() -> int:
    """130 for Ctrl-C (SIGINT), 143 for SIGTERM: 128 + the signal number, as a shell reports it."""
    return 128 + int(_state.signum or signal.SIGINT)


def request(signum: int) -> None:
    """Record a stop asked for elsewhere (another rank's signal, agreed at a step boundary)."""
    if _state.signum is None:
        _state.signum = signum


def ignore_in_worker(_worker_id: int | None = None) -> None:
    """A data-loader worker's ``worker_init_fn``: it ignores Ctrl-C and SIGTERM (a terminal's Ctrl-C and
    torchrun's stop reach the whole process group).  Its process stops the loader at the step boundary;
    a worker killed mid-step would end one rank's step early while the others wait in a collective."""
    for signum in SIGNALS:
        signal.signal(signum, signal.SIG_IGN)


def reset() -> None:
    _state.signum, _state.count, _state.raised = None, 0, False


def _handler(signum, frame) -> None:
    if _state.signum is None:
        _state.signum = signum
    _state.count += 1
    if _state.deferring and _state.count == 1:
        if _state.grace is not None:
            timer = threading.Timer(_state.grace, _force)
            timer.daemon = True
            timer.start()
        return
    _state.raised = True
    raise KeyboardInterrupt


def _force() -> None:
    if not _state.raised and _state.deferring:  # still waiting for a step boundary
        _thread.interrupt_main(signal.SIGINT)  # runs _handler on the main thread: count 2 -> raise


def install() -> None:
    """Route SIGINT and SIGTERM through this module (main thread only; a no-op elsewhere)."""
    if threading.current_thread() is not threading.main_thread():
        return
    for s in SIGNALS:
        signal.signal(s, _handler)
    _state.installed = True


def check() -> None:
    """At a step boundary: stop here if a signal asked for it."""
    if _state.signum is not None:
        _state.raised = True
        raise KeyboardInterrupt


@contextlib.contextmanager
def deferred(grace: float | None = GRACE) -> Iterator[None]:
    """Within: a signal only sets the flag (see the module docstring); ``grace=None`` never interrupts
    where it is (torchrun's workers stop themselves: ``training.launch`` forwards the signal to them).
    Outside the CLI (no ``install``, or not the main thread: a worker's deployment run, a notebook) it
    changes nothing."""
    if not _state.installed or threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.signal(s, _handler) for s in SIGNALS}
    _state.deferring += 1
    saved, _state.grace = _state.grace, grace
    try:
        yield
    finally:
        _state.deferring -= 1
        _state.grace = saved
        for s, h in previous.items():
            signal.signal(s, h)
