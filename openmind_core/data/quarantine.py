"""The quarantine: rows in, bad rows by reason, spooled to disk in file and line order.

``ConversionLedger`` is a conversion's bookkeeping: the files read, every row read and every row
quarantined (with its file, line, reason, detail and text), and the content hashes of the rows
kept so far (duplicates); ``flush`` writes one block's bad rows to the spool file at a time, so
memory holds a block's bad rows, not the input's.  ``write_quarantine`` moves the spool into
``<lake>/quarantine/<version>/quarantine.jsonl`` (an atomic directory).
"""

from __future__ import annotations

import json
import shutil
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING

import numpy as np

from openmind_core.data.content import SeenContent
from openmind_core.io import clean_stale, remove_dir, staged_dir
from openmind_core.data.validate import Problem

if TYPE_CHECKING:
    from openmind_core.data.reader import SourceFile

QUARANTINE_FILE = "quarantine.jsonl"
SPOOL_FILE = ".quarantine.jsonl"  # the bad rows while converting, inside the staged curated directory


@dataclass
class ConversionLedger:
    """A conversion's bookkeeping: the files read, rows in, rows quarantined (by reason, and spooled
    to a file in file and line order), and the content hashes of the rows kept so far."""

    files: "list[SourceFile]" = field(default_factory=list)
    rows_in: int = 0
    reasons: Counter[str] = field(default_factory=Counter)  # rows quarantined, by reason
    pending: list[tuple[int, int, dict]] = field(default_factory=list)  # the current block's bad rows
    spool: IO[str] | None = None  # where ``flush`` writes them
    seen: SeenContent = field(default_factory=SeenContent)  # content hashes of the rows kept so far

    def quarantine(self, f: "SourceFile", line: int, problem: Problem, text: str) -> None:
        self.pending.append((f.order, line, {"file": f.shown, "line": line, "reason": problem.reason,
                                             "detail": problem.detail, "text": text[:2000]}))
        self.reasons[problem.reason] += 1

    @property
    def rows_bad(self) -> int:
        return sum(self.reasons.values())

    def flush(self) -> None:
        """Write the bad rows gathered so far to ``spool``, sorted: files are read in order and
        blocks in line order, so every later bad row has a later (file, line).  Memory holds one
        block's bad rows, not the whole input's."""
        if self.pending:
            self.pending.sort(key=lambda t: (t[0], t[1]))
            assert self.spool is not None
            self.spool.write("".join(json.dumps(b, ensure_ascii=False, sort_keys=True) + "\n"
                                     for _, _, b in self.pending))
            self.pending.clear()

    def first(self, digest: np.ndarray) -> str:
        """'file:line' where this content was first kept."""
        order, line = self.seen.first(digest)
        return f"{self.files[order].shown}:{line}"



def write_quarantine(lake: Path, version: str, spool: Path) -> str:
    """Move the spooled bad rows into ``<lake>/quarantine/<version>/`` (atomic directory); returns
    the path relative to the lake."""
    final = lake / "quarantine" / version
    clean_stale(final.parent, final.name)
    if final.exists():
        remove_dir(final)
    with staged_dir(final) as tmp:
        shutil.move(spool, tmp / QUARANTINE_FILE)  # a rename within the lake's file system
    return f"quarantine/{version}/{QUARANTINE_FILE}"
