"""The data lake's layout and its errors.

```
<lake>/raw/<source>/<fingerprint>/        download output: captions.jsonl, vqa.jsonl, files/, manifest.json
<lake>/curated/<version>/                 train-00000-of-0000N.parquet ..., validation-00000-of-0000M.parquet ...,
                                          _manifest.json (each shard's path, split, rows, bytes, sha256)
<lake>/quarantine/<version>/              quarantine.jsonl (file, line number, reason, detail, the line's own text)
```

A directory is built under a hidden temporary name beside its final place, its manifest is
written last, and the whole directory is renamed into place (``openmind_core.io.staged_dir``): a
reader sees a complete version or none, and a crash leaves only a hidden ``.*.tmp-*`` directory
that the next run removes (``io.clean_stale``).
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

# 2: answers, conversation, the image as {bytes, path} (Hugging Face layout), splits by image; 3: rows with several
# images (``extra_images``, ``extra_image_sha256``).  A lake of version 2 is still read: its rows have one image at most.
SCHEMA_VERSION = 3
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
