"""Progress bars for long work: tqdm on stderr, shown only once the work has lasted ``DELAY`` seconds.

Small inputs (the tiny default, the tests) print nothing; a large download, conversion or pixel
cache shows rows or files done, rate and time left.  ``TQDM_DISABLE=1`` turns every bar off.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")

DELAY = 2.0  # seconds of work before a bar appears


def progress(total: int | None, desc: str, unit: str = "it", items: Iterable[T] | None = None) -> tqdm:
    """A bar over ``total`` steps of ``unit`` (use as a context manager or ``close()`` it), or, given
    ``items``, an iterator over them that advances the bar and closes it at the end."""
    return tqdm(items, total=total, desc=desc, unit=unit, unit_scale=(total or 0) >= 10_000, file=sys.stderr,
                delay=DELAY, dynamic_ncols=True)


def tracked(items: Iterable[T], desc: str, unit: str = "it", total: int | None = None) -> Iterator[T]:
    """``items`` one by one with a bar over them (``total``: their number, default ``len(items)``)."""
    return iter(progress(len(items) if total is None else total, desc, unit, items))  # type: ignore[arg-type]


class Reported:
    """A bar (``progress(...)``, or None for no bar) whose updates are also reported as ``report(done, total)``:
    the task layer turns them into a Prefect progress artifact (the core never imports prefect)."""

    def __init__(self, bar: tqdm | None, total: int, report: Callable[[int, int], None] | None) -> None:
        self.bar, self.total, self.report, self.done = bar, total, report, 0

    def update(self, n: int = 1) -> None:
        if self.bar is not None:
            self.bar.update(n)
        self.done += n
        if self.report is not None and n:
            self.report(self.done, self.total)


HF_BAR_BYTES = 256 << 20  # transformers' own load/save bars only for weights at least this large


@contextlib.contextmanager
def hf_bars(nbytes: int) -> Iterator[None]:
    """transformers' "Loading weights" / "Writing model shards" bars for large weights only: turned off
    around the load or save of ``nbytes`` below ``HF_BAR_BYTES``."""
    from transformers.utils import logging as hf_logging  # start-up cost: transformers only where it loads

    if nbytes >= HF_BAR_BYTES or not hf_logging.is_progress_bar_enabled():
        yield
        return
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.enable_progress_bar()


def weight_bytes(path) -> int:
    """Bytes of the weight files under a local model directory (0 for a hub id)."""
    p = Path(path)
    if not p.is_dir():
        return 0
    return sum(f.stat().st_size for f in p.iterdir() if f.suffix in (".safetensors", ".bin"))
