"""The memory-mapped caches under ``<lake>/cache/<version>/``: derived files built once, then shared.

Parquet pages are compressed and cannot be read at random, so the training dataset reads from
uncompressed copies instead, memory-mapped: their bytes live in the page cache, forked loader
workers share them, and a spawned worker re-maps them from their paths.  They are the row columns
and the image column as Arrow IPC files (here), the decoded pixels (``pixels.py``) and the token
ids (``token_cache.py``) as ``.npy``.  Every one of them goes through ``mapped_cache``: built once
under a staged name (``io.build_files_once``), mapped, checked against what it should hold (when
it does not, it is removed and rebuilt next time), and held in memory instead, with a warning,
where it cannot be written (a read-only lake) or read.

A file's name carries a key of (split, kinds) and its format's version: bumping a version
constant makes the old files ignored (derived data is rebuilt, never migrated).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TypeVar

import pyarrow as pa
import pyarrow.parquet as pq

from schemas.artifacts import CuratedDataset

from openmind_core.data.curated import (
    OPTIONAL_COLUMNS,
    ROW_COLUMNS,
    curated_root,
    filter_rows,
    flat_extra_images,
    flat_image,
    read_shard,
    row_images,
    shard_paths,
)
from openmind_core.io import build_files_once

log = logging.getLogger(__name__)

ROWS_VERSION = 2  # bump when the cached row columns change

T = TypeVar("T")


def mapped_cache(paths: Sequence[Path], build: Callable[..., None], open_mapped: Callable[..., T],
                 mismatch: Callable[[T], str | None], in_memory: Callable[[], T], what: str, fallback: str,
                 errors: tuple[type[BaseException], ...] = (OSError,)) -> tuple[T, bool]:
    """(the cache's content, whether it is mapped from ``paths``).

    ``build(*tmps)`` writes the files once (``io.build_files_once``: staged, renamed in order, the
    last one last); ``open_mapped(*paths)`` maps them; ``mismatch(value)`` says how they differ
    from what they should hold (None: they don't), and then they are removed so the next run
    rebuilds them.  Where they differ, or ``errors`` are raised building or mapping them, the
    content comes from ``in_memory()``; ``what`` and ``fallback`` word the warning.
    """
    try:
        build_files_once(paths, build)
        value = open_mapped(*paths)
        problem = mismatch(value)
        if problem is None:
            return value, True
        log.warning("%s cache %s %s; rebuilding it next time", what, paths[0], problem)
        for path in paths:
            path.unlink(missing_ok=True)
    except errors as e:
        log.warning("%s cache %s not usable (%s); %s", what, paths[0], e, fallback)
    return in_memory(), False


def cache_dir(curated: CuratedDataset | str | Path) -> Path:
    """``<lake>/cache/<version>/`` of a curated version."""
    root = curated_root(curated)
    return root.parent.parent / "cache" / root.name


def cache_path(curated: CuratedDataset | str | Path, split: str | None, kinds: Iterable[str] | None,
               name: str) -> Path:
    """A cache file of (split, kinds): ``name`` with ``{key}`` replaced by their hash."""
    kinds = sorted(kinds) if kinds is not None else None
    key = hashlib.sha256(f"{split}|{kinds}".encode()).hexdigest()[:12]
    return cache_dir(curated) / name.format(key=key)


def open_arrow(path: str | Path) -> pa.Table:
    """An Arrow IPC file as a table whose buffers are memory-mapped (zero-copy)."""
    return pa.ipc.open_file(pa.memory_map(str(path), "r")).read_all()


def arrow_cache(curated, split: str | None, kinds: Iterable[str] | None, rows: int | None, name: str,
                schema: pa.Schema, part_of: Callable[[Path], pa.Table]) -> tuple[pa.Table, str | None]:
    """``part_of(shard)`` for every shard, as one table backed by a memory-mapped Arrow file.

    The file is written once per (version, split, kinds), one shard at a time (memory: one shard's
    columns).  ``rows``: how many rows it must hold (None: any).  Returns the table and the file it
    is mapped from (None: held in memory).
    """
    path = cache_path(curated, split, kinds, name)

    def build(tmp: Path) -> None:
        with pa.OSFile(str(tmp), "wb") as sink, pa.ipc.new_file(sink, schema) as writer:
            for shard in shard_paths(curated):
                writer.write_table(part_of(shard).cast(schema), max_chunksize=8192)

    def mismatch(table: pa.Table) -> str | None:
        if (rows is None or table.num_rows == rows) and table.schema.names == schema.names:
            return None
        return f"holds {table.num_rows} rows, not {rows}"

    table, mapped = mapped_cache(
        [path], build, open_arrow, mismatch,
        lambda: pa.concat_tables([part_of(shard).cast(schema) for shard in shard_paths(curated)]),
        what=name.split("-")[0].rstrip("s"),  # "row", "image"
        fallback="keeping its columns in memory")
    return table, str(path) if mapped else None


def cached_rows(curated, split: str | None, kinds: Iterable[str] | None) -> tuple[pa.Table, str | None]:
    """The row columns (no image bytes) of (split, kinds), memory-mapped (``arrow_cache``)."""
    shards = shard_paths(curated)
    if not shards:
        raise ValueError(f"no shards in {curated_root(curated)}")
    first = pq.read_schema(shards[0])
    schema = pa.schema([first.field(c) if c in first.names else pa.field(c, OPTIONAL_COLUMNS[c])
                        for c in ROW_COLUMNS])
    return arrow_cache(curated, split, kinds, None, f"rows-{{key}}-v{ROWS_VERSION}.arrow", schema,
                       lambda shard: filter_rows(read_shard(shard, ROW_COLUMNS, False), split, kinds))


IMAGES_VERSION = 2  # 2: each row's images as a list (rows with several images)


def cached_images(curated, split: str | None, kinds: Iterable[str] | None,
                  rows: int) -> tuple[pa.ChunkedArray, str | None]:
    """Each row's images (a list of bytes, in order; ``[]`` for a text-only row) of (split, kinds),
    memory-mapped (``arrow_cache``): image bytes never on the heap."""
    schema = pa.schema([pa.field("images", pa.list_(pa.binary()))])

    def part(shard: Path) -> pa.Table:
        names = pq.read_schema(shard).names
        t = pq.read_table(shard, columns=[c for c in ("image", "extra_images", "split", "kind") if c in names])
        t = filter_rows(t, split, kinds)
        extra = flat_extra_images(t["extra_images"] if "extra_images" in names else None, t.num_rows)
        return pa.table({"images": row_images(flat_image(t["image"]), extra)})

    table, path = arrow_cache(curated, split, kinds, rows, f"images-{{key}}-v{IMAGES_VERSION}.arrow", schema, part)
    return table["images"], path
