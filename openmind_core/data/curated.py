"""Reading curated rows: ``read_table`` / ``read_rows`` over a version's Parquet shards.

``image`` comes back as plain bytes: the lake's Hugging Face image struct (``struct<bytes, path>``,
schema version 2) is flattened, a text-only row's image is None, and lakes written before the
struct (a plain binary column, no ``answers`` / ``conversation`` columns) read the same way, with
the missing columns as nulls.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from schemas.artifacts import CuratedDataset

from openmind_core.data.layout import CURATED_MANIFEST, read_json

TEXT_COLUMNS = ["sample_id", "kind", "split", "language", "text", "question", "answer",
                "image_width", "image_height", "source_file", "source_line"]
# columns of schema version 2; a lake written before them reads them as nulls
OPTIONAL_COLUMNS = {"answers": pa.list_(pa.string()),
                    "conversation": pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))}
ROW_COLUMNS = TEXT_COLUMNS + list(OPTIONAL_COLUMNS)
IMAGE_COLUMNS = ["image", "image_sha256", "image_format", "extra_images"]
EXTRA_IMAGES = pa.list_(pa.binary())  # ``extra_images`` as read: each row's 2nd, 3rd, ... images' bytes
SPLITS = ("train", "validation")


def curated_root(curated: CuratedDataset | str | Path) -> Path:
    """A curated version's directory (a ``CuratedDataset``'s ``root``, or the path given)."""
    return Path(curated.root) if isinstance(curated, CuratedDataset) else Path(curated)


def shard_paths(curated: CuratedDataset | str | Path) -> list[Path]:
    """The shards of a curated version (from its manifest, which must be complete)."""
    if isinstance(curated, CuratedDataset):
        return [Path(s) for s in curated.shards]
    root = Path(curated)
    manifest = read_json(root / CURATED_MANIFEST)
    if manifest is None:
        raise FileNotFoundError(f"{root} is not a complete curated lake version (no readable {CURATED_MANIFEST})")
    return [root / s["path"] for s in manifest["shards"]]


def flat_image(column: pa.ChunkedArray | pa.Array) -> pa.ChunkedArray:
    """The image column as nullable binary: the ``bytes`` of the Hugging Face image struct, or a
    plain binary column as it is (lakes of schema version 1)."""
    if isinstance(column, pa.Array):
        column = pa.chunked_array([column])
    if pa.types.is_struct(column.type):
        if column.type.get_field_index("bytes") < 0:
            raise ValueError(f"the image column is a struct without a 'bytes' field: {column.type}")
        column = pc.struct_field(column, "bytes")  # null where the struct is null (text-only rows)
    if pa.types.is_large_binary(column.type) or pa.types.is_string(column.type):
        column = column.cast(pa.binary())
    return column


def flat_extra_images(column: pa.ChunkedArray | None, rows: int) -> pa.ChunkedArray:
    """``extra_images`` as a list of bytes per row (all null when the lake has no such column)."""
    if column is None:
        return pa.chunked_array([pa.nulls(rows, EXTRA_IMAGES)])
    out = []
    for chunk in column.chunks:
        values = chunk.values if not isinstance(chunk, pa.ChunkedArray) else chunk
        data = pc.struct_field(values, "bytes") if pa.types.is_struct(values.type) else values
        out.append(pa.ListArray.from_arrays(chunk.offsets, data.cast(pa.binary()), mask=chunk.is_null()))
    return pa.chunked_array(out, EXTRA_IMAGES)


def row_images(image: pa.ChunkedArray, extra: pa.ChunkedArray) -> pa.ChunkedArray:
    """Each row's images in order (the first, then the others) as a list of bytes; ``[]`` for a text-only row.
    ``image``: nullable bytes (``flat_image``); ``extra``: ``flat_extra_images``."""
    image = image.combine_chunks() if image.num_chunks != 1 else image.chunk(0)
    extra = extra.combine_chunks() if extra.num_chunks != 1 else extra.chunk(0)
    has = np.asarray(image.is_valid().to_numpy(zero_copy_only=False), dtype=np.int64)
    more = pc.fill_null(pc.list_value_length(extra), 0).to_numpy(zero_copy_only=False).astype(np.int64)
    offsets = np.concatenate([[0], np.cumsum(has + more)]).astype(np.int32)
    firsts = image.drop_null()
    extra_flat = pc.list_flatten(extra)
    order = np.empty(int(offsets[-1]), dtype=np.int64)
    order[offsets[:-1][has == 1]] = np.arange(len(firsts))
    if len(extra_flat):
        parent = pc.list_parent_indices(extra).to_numpy()
        starts = np.concatenate([[0], np.cumsum(more)])[parent]
        within = np.arange(len(extra_flat)) - starts
        order[offsets[parent] + has[parent] + within] = len(firsts) + np.arange(len(extra_flat))
    values = pa.concat_arrays([firsts.cast(pa.binary()), extra_flat.cast(pa.binary())]).take(pa.array(order))
    return pa.chunked_array([pa.ListArray.from_arrays(pa.array(offsets), values)])


def read_shard(path: Path, columns: list[str], with_images: bool) -> pa.Table:
    """One shard's ``columns`` (a missing optional column as nulls), plus the image columns
    (``image`` flattened to bytes) when ``with_images``."""
    names = set(pq.read_schema(path).names)
    want = [c for c in columns if c in names] + ([c for c in IMAGE_COLUMNS if c in names] if with_images else [])
    table = pq.read_table(path, columns=want)
    for c in columns:
        if c not in names:
            if c not in OPTIONAL_COLUMNS:
                raise ValueError(f"curated shard {path} has no column {c!r}")
            table = table.append_column(c, pa.nulls(table.num_rows, OPTIONAL_COLUMNS[c]))
    if with_images:
        table = table.set_column(table.schema.get_field_index("image"), "image", flat_image(table["image"]))
        extra = flat_extra_images(table["extra_images"] if "extra_images" in names else None, table.num_rows)
        if "extra_images" in names:
            table = table.set_column(table.schema.get_field_index("extra_images"), "extra_images", extra)
        else:
            table = table.append_column("extra_images", extra)
    return table.select(columns + (IMAGE_COLUMNS if with_images else []))


def read_table(curated: CuratedDataset | str | Path, split: str | None = None,
               kinds: Iterable[str] | None = None, with_images: bool = False,
               columns: list[str] | None = None) -> pa.Table:
    """The curated rows as one Arrow table, filtered by split and kind (``image`` as nullable bytes)."""
    if split is not None and split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS} or None, got {split!r}")
    columns = list(columns or ROW_COLUMNS)
    tables = [filter_rows(read_shard(p, columns, with_images), split, kinds) for p in shard_paths(curated)]
    if not tables:
        return pa.table({c: pa.array([], OPTIONAL_COLUMNS.get(c, EXTRA_IMAGES if c == "extra_images" else pa.string()))
                         for c in columns + (IMAGE_COLUMNS if with_images else [])})
    return pa.concat_tables(tables, promote_options="default")


def read_rows(curated: CuratedDataset | str | Path, split: str | None = None,
              kinds: Iterable[str] | None = None, with_images: bool = False) -> list[dict]:
    """Curated rows as dicts (``image`` bytes, None for a text-only row, and ``extra_images``, a list of
    bytes or None, only with ``with_images=True``)."""
    return read_table(curated, split, kinds, with_images).to_pylist()


def filter_rows(table: pa.Table, split: str | None, kinds: Iterable[str] | None) -> pa.Table:
    """The rows of ``split`` whose kind is one of ``kinds`` (None: any)."""
    if split is not None:
        table = table.filter(pc.equal(table["split"], split))
    if kinds is not None:
        table = table.filter(pc.is_in(table["kind"], value_set=pa.array(list(kinds), pa.string())))
    return table
