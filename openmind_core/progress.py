"""Progress bars for long work: tqdm on stderr, shown only once the work has lasted ``DELAY`` seconds.

Small inputs (the tiny default, the tests) print nothing; a large download, conversion or pixel
cache shows rows or files done, rate and time left.  ``TQDM_DISABLE=1`` turns every bar off.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator, Sequence
from typing import TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")

DELAY = 2.0  # seconds of work before a bar appears


def progress(total: int | None, desc: str, unit: str = "it") -> tqdm:
    """A bar over ``total`` steps of ``unit``; use as a context manager or ``close()`` it."""
    return tqdm(total=total, desc=desc, unit=unit, unit_scale=(total or 0) >= 10_000, file=sys.stderr,
                delay=DELAY, dynamic_ncols=True)


def tracked(items: Sequence[T], desc: str, unit: str = "it") -> Iterator[T]:
    """``items`` one by one, with a bar over them (closed when the loop ends or breaks)."""
    with progress(len(items), desc, unit) as bar:
        for item in items:
            yield item
            bar.update()
