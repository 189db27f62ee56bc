"""The user's local input files: checked before anything runs, and stamped (size + mtime) for caches
and resume checks.  No prefect import: the CLI's pre-flight checks use this before Prefect loads."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from schemas import DataConfig

# config keys whose value must be a file (the others may be a file or a directory)
FILE_KEYS = {"data.jsonl.captions", "data.jsonl.vqa", "data.coco.annotations"}
DIR_KEYS = {"data.coco.images"}


class InputError(ValueError):
    """A local input that no retry can fix: missing, the wrong kind, or unreadable.  One line."""


def check_input_files(data: DataConfig) -> None:
    """Raise InputError naming the config key when an input is missing, a directory where a file is
    expected (or the reverse), or not readable."""
    for key, value in data.input_paths():
        p = Path(value).expanduser()
        if not p.exists():
            raise InputError(f"{key}: input not found: {value}")
        if key in FILE_KEYS and p.is_dir():
            raise InputError(f"{key}: {value} is a directory; expected a file")
        if key in DIR_KEYS and not p.is_dir():
            raise InputError(f"{key}: {value} is not a directory")
        if not os.access(p, os.R_OK) or (p.is_dir() and not os.access(p, os.X_OK)):
            raise InputError(f"{key}: {value} is not readable (permission denied)")
        if p.is_file():
            try:
                with open(p, "rb") as f:
                    f.read(1)
            except OSError as e:
                raise InputError(f"{key}: {value} cannot be read ({e.strerror or e})") from None


def input_stamps(data: DataConfig) -> dict[str, str]:
    """``{config key: "path:size:mtime_ns"}`` for every local input (a directory: a digest of its files')."""
    out = {}
    for key, p in data.input_paths():
        path = Path(p).expanduser()
        if path.is_dir():
            files = sorted(f for f in path.rglob("*") if f.is_file())
            stat = [(str(f.relative_to(path)), f.stat().st_size, f.stat().st_mtime_ns) for f in files]
            out[key] = f"{p}:{hashlib.sha256(repr(stat).encode()).hexdigest()[:16]}"
        elif path.exists():
            st = path.stat()
            out[key] = f"{p}:{st.st_size}:{st.st_mtime_ns}"
        else:
            out[key] = f"{p}:missing"
    return out


def input_stamp(data: DataConfig) -> str:
    """Every input's stamp in one string: a changed file misses the download cache."""
    return "|".join(input_stamps(data).values())
