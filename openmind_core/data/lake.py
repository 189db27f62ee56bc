"""The data lake's layout, its errors, and the directory commit every writer uses.

```
<lake>/raw/<source>/<fingerprint>/        download output: captions.jsonl, vqa.jsonl, files/, manifest.json
<lake>/curated/<version>/                 shard-00000.parquet ..., _manifest.json
<lake>/quarantine/<version>/              quarantine.jsonl (file, line, reason, detail, raw text)
```

A directory is built under a hidden temporary name beside its final place, its manifest is
written last, and the whole directory is renamed into place: a reader sees a complete version or
none, and a crash leaves only a hidden ``.*.tmp-*`` directory that the next run removes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from openmind_core.io import fsync_dir

log = logging.getLogger(__name__)

SCHEMA_VERSION = 2  # 2: answers, conversation, the image as {bytes, path} (Hugging Face layout), splits by image
RAW_MANIFEST = "manifest.json"
CURATED_MANIFEST = "_manifest.json"


class DataError(ValueError):
    """Input data that cannot be used (every row bad, a malformed annotation file, ...)."""


class HubUnreachableError(ConnectionError):
    """The Hugging Face hub was needed (a hub id was given) but cannot be reached."""


def stable_hash(obj: Any, length: int = 16) -> str:
    """sha256 (hex, truncated) of a JSON-serialisable object, key order independent."""
    text = json.dumps(obj, sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:length]


def read_json(path: Path) -> dict | None:
    """A JSON file's content, or None when it is missing or not complete JSON."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def clean_stale_tmp(parent: Path, name: str) -> None:
    """Remove temporary directories a crashed writer left for ``parent/name``."""
    if not parent.is_dir():
        return
    for p in parent.glob(f".{name}.tmp-*"):
        shutil.rmtree(p, ignore_errors=True)


@contextmanager
def staged_dir(final: Path) -> Iterator[Path]:
    """Yield a hidden temporary directory; on success rename it to ``final`` (atomic).

    If ``final`` already exists when the body finishes (a concurrent writer won), the staged copy
    is discarded.  On any exception the temporary directory is removed and nothing is visible.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".{final.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        yield tmp
        for f in tmp.rglob("*"):
            if f.is_file():
                with open(f, "rb") as fh:
                    os.fsync(fh.fileno())
        if final.exists():
            # a leftover without a manifest (older crash) or a concurrent complete copy
            shutil.rmtree(tmp)
            log.warning("%s appeared while writing; kept the existing copy", final)
            return
        os.rename(tmp, final)
        fsync_dir(final.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
