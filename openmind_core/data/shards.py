"""Writing a table stream as Parquet shards: sized by rows and bytes, encoded in the background.

``ShardWriter(directory, schema, ..., name="train")`` takes row batches in order (``write``) and lays
them out as ``train-00000-of-00002.parquet, train-00001-of-00002.parquet`` (the shard names of
Hugging Face ``datasets``, so its split patterns find them; written under hidden names and renamed
once their number is known, at ``close``):

- a row group closes at ``row_group_rows`` rows or before it would pass ``row_group_bytes``; a
  shard closes at ``shard_rows`` rows or once it holds ``shard_bytes``.  Sizes are the content's
  own bytes (image bytes plus text), not Arrow's buffer layout, so the same rows give the same
  files whatever batches they came in;
- Parquet encoding (zstd) runs in one background thread, which releases the GIL, while the caller
  prepares the next rows.  At most ``MAX_QUEUED`` row groups wait, so memory stays bounded, and a
  failed write is raised by the next ``write`` or ``close``;
- ``close()`` returns each shard's ``{path, rows, bytes, sha256}``.

Dictionary encoding is used only for the columns named in ``dictionary``: on a column whose values
are all distinct (ids, free text) it costs a hash per value and is then dropped by the encoder.
Likewise min/max statistics are written only for the columns named in ``statistics`` (default:
all): on hashes, free text and image bytes they cost a comparison per value and prune nothing.
``encodings`` sets a column's encoding, e.g. ``DELTA_BINARY_PACKED`` for line numbers.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from openmind_core.io import sha256_file

MAX_QUEUED = 2  # row groups handed to the encoder thread and not yet written


def content_bytes(table: pa.Table) -> np.ndarray:
    """Bytes of each row's binary and string values (nulls count 0, structs and lists summed over
    their values), plus 8 per other column."""
    sizes = np.zeros(table.num_rows, dtype=np.int64)
    for col in table.columns:
        if isinstance(col, pa.ChunkedArray):
            col = col.chunk(0) if col.num_chunks == 1 else col.combine_chunks()
        sizes += _value_bytes(col)
    return sizes


def _value_bytes(arr: pa.Array) -> np.ndarray:
    t = arr.type
    nested = pa.types.is_struct(t) or pa.types.is_list(t) or pa.types.is_large_list(t)
    if nested and arr.null_count == len(arr):  # e.g. the conversation column of caption rows
        return np.zeros(len(arr), dtype=np.int64)
    if pa.types.is_binary(t) or pa.types.is_string(t) or pa.types.is_large_binary(t) or pa.types.is_large_string(t):
        return pc.fill_null(pc.binary_length(arr), 0).to_numpy().astype(np.int64)
    if pa.types.is_struct(t):
        out = np.zeros(len(arr), dtype=np.int64)
        for child in arr.flatten():  # offset-aware, parent nulls applied
            out += _value_bytes(child)
        return out
    if pa.types.is_list(t) or pa.types.is_large_list(t):
        flat = pc.list_flatten(arr)
        out = np.zeros(len(arr), dtype=np.int64)
        if len(flat):
            np.add.at(out, pc.list_parent_indices(arr).to_numpy(), _value_bytes(flat))
        return out
    return np.full(len(arr), 8, dtype=np.int64)


def rows_that_fit(sizes: np.ndarray, limit: int) -> int:
    """How many of ``sizes``, from the first, fit in ``limit`` together: at least one."""
    return max(1, int(np.searchsorted(np.cumsum(sizes), limit, side="right")))


class ShardWriter:
    def __init__(self, directory: Path, schema: pa.Schema, *, shard_rows: int, shard_bytes: int,
                 row_group_rows: int, row_group_bytes: int, dictionary: Sequence[str] = (),
                 statistics: Sequence[str] | None = None, encodings: dict[str, str] | None = None,
                 compression: str = "zstd", name: str = "part") -> None:
        self.directory = Path(directory)
        self.name = name
        self.directory.mkdir(parents=True, exist_ok=True)
        self.schema = schema
        self.shard_rows, self.shard_bytes = shard_rows, shard_bytes
        self.group_rows, self.group_bytes = row_group_rows, row_group_bytes
        self.options: dict = {"compression": compression, "use_dictionary": list(dictionary) or False}
        if statistics is not None:
            self.options["write_statistics"] = list(statistics) or False
        if encodings:
            self.options["column_encoding"] = dict(encodings)
        self.shards: list[dict] = []
        self._buf: list[pa.Table] = []
        self._sizes: list[np.ndarray] = []
        self._pending = 0  # rows in _buf
        self._shard = 0  # index of the shard being filled
        self._in_shard = (0, 0)  # (rows, bytes) already sent to it
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="shard-writer")
        self._queued: list[Future] = []
        self._open: pq.ParquetWriter | None = None
        self._open_rows = 0

    # ----------------------------------------------------------------- caller's side

    def write(self, rows: pa.Table, sizes: np.ndarray | None = None) -> None:
        """Queue ``rows`` (``sizes``: each row's bytes, default ``content_bytes(rows)``)."""
        if not rows.num_rows:
            return
        self._buf.append(rows)
        self._sizes.append(content_bytes(rows) if sizes is None else np.asarray(sizes, dtype=np.int64))
        self._pending += rows.num_rows
        self._cut(final=False)

    def close(self) -> list[dict]:
        """Write what is left, close the last shard, wait for the encoder; the shards' descriptions."""
        try:
            self._cut(final=True)
            if self._in_shard[0]:
                self._submit(self._close_shard, self._shard)
            self._drain(0)
        finally:
            self.abort()
        n = len(self.shards)
        for i, shard in enumerate(self.shards):  # the hidden names become datasets' shard names
            final = self.directory / f"{self.name}-{i:05d}-of-{n:05d}.parquet"
            (self.directory / shard["path"]).rename(final)
            shard["path"] = final.name
        return self.shards

    def abort(self) -> None:
        """Stop the encoder thread (after its current row group); leaves files as they are."""
        for fut in self._queued:
            fut.cancel()
        self._pool.shutdown(wait=True)
        if self._open is not None:
            self._open.close()
            self._open = None

    def _cut(self, final: bool) -> None:
        """Send every complete row group in the buffer (all of it when ``final``)."""
        if not self._pending:
            return
        sizes = np.concatenate(self._sizes) if len(self._sizes) > 1 else self._sizes[0]
        table = pa.concat_tables(self._buf) if len(self._buf) > 1 else self._buf[0]
        start = 0
        while start < len(sizes):
            rows_left = self.shard_rows - self._in_shard[0]
            window = sizes[start:start + min(self.group_rows, rows_left)]
            n = rows_that_fit(window, self.group_bytes)
            group_bytes = int(window[:n].sum())
            if n == len(window) and start + n == len(sizes) and not final \
                    and n < min(self.group_rows, rows_left) and group_bytes < self.group_bytes:
                break  # the group could still grow: wait for more rows
            self._submit(self._write_group, self._shard, table.slice(start, n))
            start += n
            rows, nbytes = self._in_shard[0] + n, self._in_shard[1] + group_bytes
            if rows >= self.shard_rows or nbytes >= self.shard_bytes:
                self._submit(self._close_shard, self._shard)
                self._shard, rows, nbytes = self._shard + 1, 0, 0
            self._in_shard = (rows, nbytes)
        rest = len(sizes) - start
        self._buf = [table.slice(start)] if rest else []
        self._sizes = [sizes[start:]] if rest else []
        self._pending = rest

    def _submit(self, fn, *args) -> None:
        self._drain(MAX_QUEUED - 1)
        self._queued.append(self._pool.submit(fn, *args))

    def _drain(self, keep: int) -> None:
        while len(self._queued) > keep:
            self._queued.pop(0).result()  # re-raises the encoder's error here

    # ----------------------------------------------------------------- encoder thread

    def path(self, shard: int) -> Path:
        """Where shard ``shard`` is written (hidden: its final name needs the number of shards)."""
        return self.directory / f".{self.name}-{shard:05d}.parquet"

    def _write_group(self, shard: int, rows: pa.Table) -> None:
        if self._open is None:
            self._open = pq.ParquetWriter(self.path(shard), self.schema, **self.options)
            self._open_rows = 0
        self._open.write_table(rows, row_group_size=rows.num_rows)
        self._open_rows += rows.num_rows

    def _close_shard(self, shard: int) -> None:
        assert self._open is not None
        self._open.close()
        self._open = None
        path = self.path(shard)
        self.shards.append({"path": path.name, "rows": self._open_rows, "bytes": path.stat().st_size,
                            "sha256": sha256_file(path)})
