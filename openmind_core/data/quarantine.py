"""The quarantine: rows in, bad rows by reason, spooled to disk in file and line order.

``ConversionLedger`` is a conversion's bookkeeping: the files read, every row read and every row
quarantined (its file, its line number, reason, detail and the line's own text, as in the file:
a row rejected for its image or as a duplicate is read back from the file, ``LineReader``), and
the content hashes of the rows kept so far (duplicates); ``flush`` writes one block's bad rows to the spool file at a time, so
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
from openmind_core.data.validate import BOM, Problem

if TYPE_CHECKING:
    from openmind_core.data.reader import SourceFile

QUARANTINE_FILE = "quarantine.jsonl"
MAX_TEXT = 2000  # characters of a bad line kept in its record
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

    lines: dict[int, "LineReader"] = field(default_factory=dict)  # per file: reads a line's text on demand

    def quarantine(self, f: "SourceFile", line: int, problem: Problem, text: str | None = None) -> None:
        """Quarantine line ``line`` of ``f``; ``text``: the line as read, or None to read it from the file
        (a row rejected after its text was parsed: its image, or its content seen before)."""
        rec = {"file": f.shown, "line": int(line), "reason": problem.reason, "detail": problem.detail,
               "text": text[:MAX_TEXT] if text is not None else None}
        if text is None:
            rec["_path"] = f.path
        self.pending.append((f.order, int(line), rec))
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
            for order, line, rec in self.pending:
                path = rec.pop("_path", None)
                if path is not None:
                    reader = self.lines.get(order)
                    if reader is None or reader.path != path:
                        reader = self.lines[order] = LineReader(path)
                    rec["text"] = reader.text(line)[:MAX_TEXT]
            assert self.spool is not None
            self.spool.write("".join(json.dumps(b, ensure_ascii=False, sort_keys=True) + "\n"
                                     for _, _, b in self.pending))
            self.pending.clear()

    def first(self, digest: np.ndarray) -> str:
        """'file:line' where this content was first kept."""
        order, line = self.seen.first(digest)
        return f"{self.files[order].shown}:{line}"



class LineReader:
    """A JSONL file's lines by number, read forward (bad rows come in line order; an earlier line starts
    the file again), as the reader sees them: without the leading BOM and the line end."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._fh: IO[bytes] | None = None
        self._next = 1  # the number of the line the file position is at

    def text(self, line: int) -> str:
        if self._fh is None or line < self._next:
            if self._fh is not None:
                self._fh.close()
            self._fh, self._next = open(self.path, "rb"), 1
        raw = b""
        while self._next <= line:
            raw = self._fh.readline()
            self._next += 1
            if not raw:
                break
        if line == 1 and raw.startswith(BOM):
            raw = raw[len(BOM):]
        return raw.rstrip(b"\n").rstrip(b"\r").decode("utf-8", errors="replace")


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
