"""ShardWriter: shards and row groups sized by rows and bytes, independent of how rows arrive."""

from __future__ import annotations

import hashlib

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from openmind_core.data.shards import ShardWriter, content_bytes

SCHEMA = pa.schema([("id", pa.int64()), ("blob", pa.binary())])


def rows(n: int, size: int = 10, start: int = 0) -> pa.Table:
    return pa.table({"id": pa.array(range(start, start + n), pa.int64()),
                     "blob": pa.array([bytes([i % 251]) * size for i in range(start, start + n)], pa.binary())},
                    schema=SCHEMA)


def layout(directory, shards: list[dict]) -> list[list[int]]:
    """Rows of each row group of each shard."""
    out = []
    for s in shards:
        meta = pq.ParquetFile(directory / s["path"]).metadata
        out.append([meta.row_group(i).num_rows for i in range(meta.num_row_groups)])
        assert sum(out[-1]) == s["rows"] == meta.num_rows
        assert s["sha256"] == hashlib.sha256((directory / s["path"]).read_bytes()).hexdigest()
    return out


def write(directory, batches: list[pa.Table], **sizes) -> list[dict]:
    opts = {"shard_rows": 1000, "shard_bytes": 1 << 30, "row_group_rows": 1000, "row_group_bytes": 1 << 30} | sizes
    w = ShardWriter(directory, SCHEMA, dictionary=["blob"], **opts)
    for b in batches:
        w.write(b)
    return w.close()


def test_row_caps(tmp_path):
    shards = write(tmp_path, [rows(7), rows(18, start=7)], shard_rows=10, row_group_rows=4)
    assert [s["path"] for s in shards] == ["part-00000-of-00003.parquet", "part-00001-of-00003.parquet",
                                           "part-00002-of-00003.parquet"]
    assert layout(tmp_path, shards) == [[4, 4, 2], [4, 4, 2], [4, 1]]
    back = pa.concat_tables([pq.read_table(tmp_path / s["path"]) for s in shards])
    assert back.equals(rows(25)) and pq.read_schema(tmp_path / shards[0]["path"]).field("blob").type == pa.binary()


def test_byte_limits(tmp_path):
    # each row: 8 (id) + 100 (blob) = 108 content bytes
    assert content_bytes(rows(3, size=100)).tolist() == [108, 108, 108]
    shards = write(tmp_path, [rows(10, size=100)], row_group_bytes=350, shard_bytes=600)
    assert layout(tmp_path, shards) == [[3, 3], [3, 1]]  # a group stops before passing 350; a shard once it holds 600
    big = write(tmp_path / "big", [rows(3, size=1000)], row_group_bytes=100)
    assert layout(tmp_path / "big", big) == [[1, 1, 1]]  # a row larger than the limit still gets its group


def test_same_rows_same_files_however_they_arrive(tmp_path):
    table = rows(50, size=20)
    sizes = {"shard_rows": 23, "row_group_rows": 6, "row_group_bytes": 150}
    whole = write(tmp_path / "a", [table], **sizes)
    pieces = write(tmp_path / "b", [table.slice(i, 7) for i in range(0, 50, 7)], **sizes)
    ones = write(tmp_path / "c", [table.slice(i, 1) for i in range(50)], **sizes)
    files = [[(d / s["path"]).read_bytes() for s in shards]
             for d, shards in ((tmp_path / "a", whole), (tmp_path / "b", pieces), (tmp_path / "c", ones))]
    assert files[0] == files[1] == files[2] and len(files[0]) == 3


def test_given_sizes_are_used(tmp_path):
    w = ShardWriter(tmp_path, SCHEMA, shard_rows=100, shard_bytes=1 << 30, row_group_rows=100, row_group_bytes=10)
    w.write(rows(6), sizes=np.array([5, 5, 5, 5, 5, 5]))
    assert layout(tmp_path, w.close()) == [[2, 2, 2]]


def test_a_failed_write_is_raised(tmp_path, monkeypatch):
    def broken(self, shard, rows):
        raise OSError("disk full")

    monkeypatch.setattr(ShardWriter, "_write_group", broken)
    w = ShardWriter(tmp_path, SCHEMA, shard_rows=100, shard_bytes=1 << 30, row_group_rows=2, row_group_bytes=1 << 30)
    with pytest.raises(OSError, match="disk full"):
        for i in range(10):
            w.write(rows(2, start=2 * i))
        w.close()
    w.abort()


def test_statistics_and_encodings_only_where_asked(tmp_path):
    w = ShardWriter(tmp_path, SCHEMA, shard_rows=100, shard_bytes=1 << 30, row_group_rows=100, row_group_bytes=1 << 30,
                    statistics=["id"], encodings={"id": "DELTA_BINARY_PACKED"})
    w.write(rows(20))
    (shard,) = w.close()
    group = pq.ParquetFile(tmp_path / shard["path"]).metadata.row_group(0)
    ids, blobs = group.column(0), group.column(1)
    assert ids.is_stats_set and (ids.statistics.min, ids.statistics.max) == (0, 19)
    assert not blobs.is_stats_set  # min/max of free bytes prune nothing
    assert "DELTA_BINARY_PACKED" in ids.encodings
    assert pq.read_table(tmp_path / shard["path"]).equals(rows(20))


def test_content_bytes_of_nested_columns():
    """The HF image struct and list columns count their values' bytes (shards are sized by images)."""
    image = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    turn = pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))
    table = pa.table({
        "image": pa.array([{"bytes": b"x" * 100, "path": None}, None, {"bytes": b"yy", "path": "a.png"}], image),
        "answers": pa.array([["ab", "c"], None, []], pa.list_(pa.string())),
        "conversation": pa.array([None, [{"role": "user", "content": "hello"}], None], turn),
        "n": pa.array([1, 2, 3], pa.int64()),
    })
    assert content_bytes(table).tolist() == [100 + 3 + 0 + 8, 0 + 0 + 9 + 8, 2 + 5 + 0 + 8]
    assert content_bytes(table.slice(1)).tolist() == [17, 15]  # offsets respected
