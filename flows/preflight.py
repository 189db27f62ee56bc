"""Pre-flight: what ``openmind`` checks before Prefect starts, so that a problem costs nothing.

The config, the lake (a directory we can create files in), the input files, a pretrained LM that
must fit its tokenizer, and whether a run may resume: each problem is a ``UsageError``, printed as
one line with exit code 2 before anything runs or is written.  Nothing here imports prefect or
transformers' model classes unless a check needs them.
"""

from __future__ import annotations

import errno
import os
import tempfile
from pathlib import Path

from openmind_core.app.auto_resume import RunDirBusy, check_free
from openmind_core.app.run_dir import ResumeRefused
from openmind_core.app.run_dir import check_resumable as check_run_dir
from openmind_core.app.run_dir import resolve_init_from
from openmind_core.data.inputs import InputError, check_input_files
from schemas import ConfigError, load_config

EXIT_USAGE = 2


class UsageError(Exception):
    """A problem found before anything ran: one line, exit code 2."""


def load(args):
    try:
        return load_config(args.config, args.overrides)
    except ConfigError as e:
        raise UsageError(str(e)) from None


def check_lake(lake: Path) -> None:
    """The lake must be a directory we can create files in: probed with a temporary file, removed at once."""
    if lake.exists() and not lake.is_dir():
        raise UsageError(f"lake {lake} exists and is not a directory")
    probe = lake
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        raise UsageError(f"lake {lake} cannot be created: {probe} is not a directory")
    try:
        fd, tmp = tempfile.mkstemp(dir=probe, prefix=".openmind-probe-")
        os.close(fd)
        os.unlink(tmp)
    except OSError as e:
        raise UsageError(f"lake {lake} is not writable: {_why_unwritable(probe, e)}") from None


def _why_unwritable(probe: Path, e: OSError) -> str:
    """The real reason files cannot be created in ``probe`` (a virtual file system says "No such file")."""
    if e.errno in (errno.EACCES, errno.EPERM):
        return f"permission denied to create files in {probe}"
    if e.errno == errno.EROFS:
        return f"{probe} is on a read-only file system"
    if e.errno == errno.ENOSPC:
        return f"no space left on the device of {probe}"
    fstype = _fs_type(probe)
    if e.errno == errno.ENOENT or fstype in ("proc", "sysfs", "cgroup", "cgroup2", "devpts", "debugfs"):
        return f"{probe} does not accept new files" + (f" (a {fstype} file system)" if fstype else "")
    return f"{probe}: {e.strerror or e}"


def _fs_type(path: Path) -> str | None:
    """The file system type of the mount holding ``path`` (Linux: /proc/self/mounts), or None."""
    try:
        mounts = [line.split()[1:3] for line in Path("/proc/self/mounts").read_text().splitlines()]
    except OSError:
        return None
    best = max((m for m in mounts if len(m) == 2 and (str(path) + "/").startswith(m[0].rstrip("/") + "/")),
               key=lambda m: len(m[0]), default=None)
    return best[1] if best else None


def check_inputs(cfg, lake: Path | None = None) -> None:
    try:
        check_input_files(cfg.data)  # missing, a directory where a file belongs, unreadable
    except InputError as e:
        raise UsageError(str(e)) from None
    if cfg.model.init_from:
        check_init_from(cfg.model.init_from, lake)


def check_init_from(init: str, lake: Path | None) -> None:
    """``model.init_from`` must be a saved model directory (a relative one is read from the lake)."""
    d = resolve_init_from(init, lake) if lake is not None else Path(init).expanduser()
    where = f" (a relative model.init_from is read from the lake, {lake})" if lake is not None and d != Path(
        init).expanduser() else ""
    if not d.exists():
        raise UsageError(f"model.init_from: directory {d} does not exist{where}; run the earlier stage first "
                         f"(its run's final/), or point it at a saved model directory")
    if not d.is_dir():
        raise UsageError(f"model.init_from: {d} is not a directory (point it at an earlier run's final/)")
    if not (d / "model.safetensors").is_file():
        raise UsageError(f"model.init_from: {d} holds no model.safetensors (point it at an earlier run's final/)")


def check_model_parts(cfg) -> None:
    """A pretrained LM and its tokenizer must load and fit each other (imports transformers: only then)."""
    if not cfg.model.lm.name_or_path:
        return
    from openmind_core.model.language import preflight  # start-up cost: transformers loads only for a pretrained LM

    try:
        preflight(cfg.model)
    except (OSError, ValueError) as e:
        raise UsageError(f"model: {str(e).splitlines()[0]}") from None


def check_run_dir_free(run_dir: Path) -> None:
    """No other live process works in the run directory (its lock, ``openmind_core.app.auto_resume.hold``)."""
    try:
        check_free(run_dir)
    except RunDirBusy as e:
        raise UsageError(str(e)) from None


def check_resumable(cfg, run_dir: Path) -> None:
    """The one resumability check (``openmind_core.app.run_dir``, which the flow's first step runs too):
    model, data settings, input stamps and batch, refused before anything runs or is written."""
    try:
        check_run_dir(cfg, run_dir)
    except ResumeRefused as e:
        raise UsageError(str(e)) from None
