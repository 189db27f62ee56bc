"""Crash-safe files and directories: the one home of every atomic write in OpenMind.

Every writer in the project (the lake's raw and curated versions, quarantine, the memory-mapped
caches, checkpoints, saved model directories, run files) goes through these helpers, so a crash
at any instant leaves either the old content or the whole new content, never a torn one:

* ``atomic_write_bytes`` / ``_text`` / ``_json``: a small file written under a temporary name,
  fsynced, renamed over the target, and the directory fsynced.
* ``staged_file(path)``: the same for a file that a library writes itself (numpy, pyarrow):
  yields the temporary path; leftovers of dead processes are removed first.
* ``staged_dir(final)``: a directory built under a hidden temporary name beside its final place;
  every file is fsynced, then the directory is renamed into place.  ``replace=True`` swaps an
  existing directory (the old one is moved to ``.old-<name>`` first, so a crash in between leaves
  one of them intact: ``recover_replaced`` puts it back), otherwise an existing one wins (a
  concurrent writer finished first) and the staged copy is dropped.
* ``remove_dir(path)``: deletion that a crash cannot leave half done (rename to ``.del-<name>``,
  fsync, then delete; ``clean_stale`` finishes it).
* ``build_files_once(paths, build)``: derived files (a cache) built once by whichever process
  gets there first, readers seeing them only when complete (renamed in order, the last one last).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

OLD_PREFIX = ".old-"  # a directory being replaced (staged_dir(replace=True))
DEL_PREFIX = ".del-"  # a directory being deleted (remove_dir)


def fsync_dir(path: str | Path) -> None:
    """Make a rename inside ``path`` durable (no-op where directories cannot be opened)."""
    try:
        fd = os.open(str(path), os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def fsync_file(path: str | Path) -> None:
    """fsync a file that a library wrote and closed."""
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


def write_durable(path: str | Path, data: bytes) -> None:
    """Write ``data`` to a new file and fsync it (inside a staged directory, where no rename is needed)."""
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` so that readers see the old file or the whole new one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, ensure_ascii=False, sort_keys=True) + "\n")


def _staging_name(path: Path) -> Path:
    """A temporary name for building ``path`` in this process; removes what dead builders left.

    The name carries the builder's pid (``.<name>.<pid>.tmp``), so a leftover whose process is gone
    is told apart from a file another live process is still writing."""
    for old in path.parent.glob(f".{path.name}.*.tmp"):
        try:
            pid = int(old.name[len(path.name) + 2:-4])
            os.kill(pid, 0)  # raises when no such process: its file is a leftover
        except ProcessLookupError:
            old.unlink(missing_ok=True)
        except (ValueError, PermissionError):
            pass
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


@contextmanager
def staged_file(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path for ``path``; when the body finishes it is fsynced and renamed into place.

    For files a library writes itself (``np.save``, an Arrow IPC writer).  On an exception the
    temporary file is removed and ``path`` is untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _staging_name(path)
    try:
        yield tmp
        fsync_file(tmp)
        os.replace(tmp, path)
        fsync_dir(path.parent)
    finally:
        tmp.unlink(missing_ok=True)


def build_files_once(paths: Sequence[str | Path], build: Callable[..., None]) -> bool:
    """Make sure the derived files ``paths`` exist: ``build(*tmps)`` writes every one of them.

    Each is staged (``staged_file``) and renamed in the order given, so a reader that needs them
    all finds the last one (an index) only once the others are in place.  Nothing is built when
    every file exists; returns True when this call built them.  ``OSError`` propagates, and then
    no staged file is left.
    """
    paths = [Path(p) for p in paths]
    if all(p.exists() for p in paths):
        return False
    with ExitStack() as stack:
        # entered last to first, so that leaving the stack renames them first to last
        tmps = [stack.enter_context(staged_file(p)) for p in reversed(paths)][::-1]
        build(*tmps)
    return True


def stale_dirs(parent: Path, name: str) -> list[Path]:
    """Temporary directories a crashed ``staged_dir`` left for ``parent/name``."""
    return sorted(parent.glob(f".{name}.tmp-*")) if parent.is_dir() else []


def clean_stale(parent: str | Path, name: str) -> None:
    """Remove what crashed writers left for ``parent/name``: staged copies and unfinished deletions."""
    parent = Path(parent)
    for p in stale_dirs(parent, name):
        shutil.rmtree(p, ignore_errors=True)
    doomed = parent / f"{DEL_PREFIX}{name}"
    if doomed.exists():
        shutil.rmtree(doomed, ignore_errors=True)


def recover_replaced(final: str | Path) -> bool:
    """Put back ``.old-<name>`` when a replacement of ``final`` was interrupted; drop it when the new one landed.

    Returns True when the old directory was restored."""
    final = Path(final)
    old = final.parent / f"{OLD_PREFIX}{final.name}"
    if not old.exists():
        return False
    if final.exists():
        shutil.rmtree(old, ignore_errors=True)
        return False
    os.replace(old, final)
    fsync_dir(final.parent)
    return True


def _fsync_tree(root: Path) -> None:
    for f in root.rglob("*"):
        if f.is_file():
            fsync_file(f)
    fsync_dir(root)


def swap_in(tmp: Path, final: Path) -> None:
    """Rename the finished directory ``tmp`` to ``final``, replacing an existing one (``.old-`` first)."""
    old = final.parent / f"{OLD_PREFIX}{final.name}"
    if old.exists():
        shutil.rmtree(old)
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    fsync_dir(final.parent)
    if old.exists():
        shutil.rmtree(old)


@contextmanager
def staged_dir(final: str | Path, *, replace: bool = False) -> Iterator[Path]:
    """Yield a hidden temporary directory; when the body finishes, fsync it and rename it to ``final``.

    ``replace=False``: if ``final`` already exists when the body finishes (a concurrent writer won),
    the staged copy is discarded.  ``replace=True``: the existing directory is replaced
    (``swap_in``).  On any exception the temporary directory is removed and nothing is visible.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".{final.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        yield tmp
        _fsync_tree(tmp)
        if replace:
            swap_in(tmp, final)
        elif final.exists():
            shutil.rmtree(tmp)
        else:
            os.rename(tmp, final)
            fsync_dir(final.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def remove_dir(path: str | Path, before_delete: Callable[[], None] | None = None) -> None:
    """Delete a directory so that a crash never leaves it half deleted under its own name.

    It is renamed to ``.del-<name>`` (durable) and only then deleted; ``before_delete`` runs between
    the two (tests inject a crash there)."""
    path = Path(path)
    doomed = path.parent / f"{DEL_PREFIX}{path.name}"
    if doomed.exists():
        shutil.rmtree(doomed, ignore_errors=True)
    os.replace(path, doomed)
    fsync_dir(path.parent)
    if before_delete is not None:
        before_delete()
    shutil.rmtree(doomed, ignore_errors=True)


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()
