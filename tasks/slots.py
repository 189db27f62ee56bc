"""GPU slots: training holds slots of the Prefect global concurrency limit ``gpu`` while it runs.

Create the limit once per machine (its size = the GPUs two runs must not share):

    prefect gcl create gpu --limit 1

Then two scheduled runs never train on the same GPU at once: the second waits for the first's
slot.  A run on N processes (``train.nproc``) takes N slots.  Without the limit the run proceeds
and says so in one log line (Prefect's own ``strict=False`` path would warn on every run).
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from typing import Iterator

from prefect.client.orchestration import get_client
from prefect.concurrency.sync import concurrency
from prefect.exceptions import ObjectNotFound

GPU_LIMIT = "gpu"

log = logging.getLogger(__name__)


def _limit_exists(name: str) -> bool:
    with get_client(sync_client=True) as client:
        try:
            client.read_global_concurrency_limit_by_name(name)
        except ObjectNotFound:
            return False
    return True


@contextmanager
def gpu_slot(occupy: int, name: str = GPU_LIMIT, logger=None, timeout_seconds: float | None = None) -> Iterator[bool]:
    """Hold ``occupy`` slots of the global concurrency limit ``name``; yields whether slots are held.

    ``occupy=0`` (training on the CPU) takes nothing.  A missing limit: one line, then no slot.
    """
    logger = logger or log
    if occupy <= 0:
        yield False
        return
    if not _limit_exists(name):
        logger.info("no global concurrency limit %r: training without a GPU slot "
                    "(`prefect gcl create %s --limit 1` makes runs take turns)", name, name)
        yield False
        return
    logger.info("waiting for %d slot(s) of the global concurrency limit %r", occupy, name)
    with concurrency(name, occupy=occupy, strict=False, timeout_seconds=timeout_seconds):
        logger.info("holding %d %r slot(s)", occupy, name)
        yield True
