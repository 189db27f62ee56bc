"""Tests for the JSONL -> Parquet conversion: validation, quarantine, versions, atomicity, tools.

Over 400 lines: one module for the converter's contract, its cases sharing the small input builders below.
"""

from __future__ import annotations

import base64
import importlib
import io
import json
import os
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from PIL import Image

from openmind_core.data import REASONS, SCHEMA_VERSION, DataError, convert, download, read_rows
from openmind_core.data import content
from openmind_core.data.shards import ShardWriter
from openmind_core.data.synthetic import generate
from schemas.config import DataConfig

convert_mod = importlib.import_module("openmind_core.data.convert")  # the package exports the function
from openmind_core.data import image_checks as images_mod  # noqa: E402
from openmind_core.data import reader as reader_mod  # noqa: E402
from openmind_core.data import rows as rows_mod  # noqa: E402


def png(color=(255, 0, 0), size=(16, 12), noise: bool = False) -> bytes:
    img = Image.frombytes("RGB", size, os.urandom(size[0] * size[1] * 3)) if noise else Image.new("RGB", size, color)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def files_of(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def jsonl_cfg(captions=None, vqa=None, **kw) -> DataConfig:
    return DataConfig(source="jsonl", jsonl={"captions": str(captions) if captions else None,
                                             "vqa": str(vqa) if vqa else None}, num_workers=1, **kw)


@pytest.fixture(scope="module")
def synthetic_raw(tmp_path_factory):
    lake = tmp_path_factory.mktemp("lake")
    cfg = DataConfig(synthetic={"num_captions": 300, "num_vqa": 100}, num_workers=1)  # > PARALLEL_MIN_IMAGES
    return cfg, lake, download(cfg, lake)


# --------------------------------------------------------------------------- validation


def test_every_reason_is_quarantined_with_file_and_line(tmp_path):
    user = tmp_path / "user"
    user.mkdir()
    (user / "ok.png").write_bytes(png((255, 0, 0)))
    (user / "ok2.png").write_bytes(png((0, 255, 0)))
    (tmp_path / "outside.png").write_bytes(png((0, 0, 255)))
    (user / "link.png").symlink_to(tmp_path / "outside.png")
    (user / "garbage.png").write_bytes(os.urandom(300))
    full = png(size=(32, 32), noise=True)
    (user / "trunc.png").write_bytes(full[: len(full) // 2])
    (user / "big.png").write_bytes(png(size=(200, 200)))
    (user / "heavy.png").write_bytes(png(size=(64, 64), noise=True))  # > max_image_bytes
    j = lambda o: json.dumps(o, ensure_ascii=False).encode()  # noqa: E731
    lines = [
        j({"image": "ok.png", "text": "good one"}),                      # 1 kept
        b"\xef\xbb\xbf" + j({"image": "ok.png", "text": "bom"}),          # 2 bom (inside the file)
        b'{"image": "ok.png", "text": "bad \xff\xfe bytes"}',             # 3 invalid_utf8
        j({"image": "ok2.png", "text": "crlf"}) + b"\r",                  # 4 kept: a CRLF line end is format
        b'{"image": "ok.png", "text": ',                                  # 5 malformed_json
        b"[1, 2]",                                                        # 6 not_an_object
        j({"image": "ok.png"}),                                           # 7 missing_field
        j({"image": "ok.png", "text": 5}),                                # 8 wrong_type
        j({"image": "ok.png", "text": "   "}),                            # 9 empty_text
        j({"image": "ok.png", "text": "x" * 150}),                        # 10 text_too_long
        j({"image": "../outside.png", "text": "escape"}),                 # 11 path_escape
        j({"image": "link.png", "text": "symlink out"}),                  # 12 path_escape
        j({"image": "nope.png", "text": "missing"}),                      # 13 image_missing
        j({"image": "garbage.png", "text": "garbage"}),                   # 14 image_unreadable
        j({"image": "trunc.png", "text": "truncated"}),                   # 15 image_truncated
        j({"image": "big.png", "text": "too many pixels"}),               # 16 image_too_large
        j({"image": "heavy.png", "text": "too many bytes"}),              # 17 image_too_large
        j({"image": "ok.png", "text": "good one"}),                       # 18 duplicate of 1
        b"   ",                                                           # 19 blank: not a row
        j({"image": "ok2.png", "text": "good two"}),                      # 20 kept
    ]
    cap = user / "caps.jsonl"
    cap.write_bytes(b"\n".join(lines) + b"\n")
    cfg = jsonl_cfg(cap, max_text_chars=100, max_image_pixels=150 * 150, max_image_bytes=5000)
    lake = tmp_path / "lake"
    curated = convert(download(cfg, lake), cfg, lake)

    assert curated.rows_in == 19
    assert curated.rows_kept == 3 and curated.rows_quarantined == 16
    assert curated.rows_in == curated.rows_kept + curated.rows_quarantined
    expected = {2: "bom", 3: "invalid_utf8", 5: "malformed_json", 6: "not_an_object",
                7: "missing_field", 8: "wrong_type", 9: "empty_text", 10: "text_too_long", 11: "path_escape",
                12: "path_escape", 13: "image_missing", 14: "image_unreadable", 15: "image_truncated",
                16: "image_too_large", 17: "image_too_large", 18: "duplicate"}
    later = {"image_tag_in_text", "windows_path", "roles_out_of_order", "empty_turn", "image_tag_mismatch",
             "image_tag_in_answer", "too_many_images"}  # tested in test_windows_files / test_conversations_convert
    assert set(expected.values()) == set(REASONS) - later
    bad = [json.loads(line) for line in Path(curated.quarantine_path).read_text(encoding="utf-8").splitlines()]
    assert {b["line"]: b["reason"] for b in bad} == expected
    assert [b["line"] for b in bad] == sorted(expected)  # in file order
    assert sorted(p.name for p in Path(curated.root).iterdir()) == sorted(
        ["_manifest.json"] + [f"{s}-00000-of-00001.parquet" for s, n in curated.splits.items() if n])
    assert all(b["file"] == str(cap.resolve()) and b["detail"] for b in bad)
    assert "caps.jsonl:1" in next(b["detail"] for b in bad if b["reason"] == "duplicate")
    assert curated.quarantine_by_reason["path_escape"] == 2 and curated.quarantine_by_reason["image_too_large"] == 2
    kept = read_rows(curated)
    assert [(r["text"], r["source_line"]) for r in kept] == [("good one", 1), ("crlf", 4), ("good two", 20)]


def test_duplicates_across_batches_and_a_shared_hash_prefix(tmp_path, monkeypatch):
    (tmp_path / "a.png").write_bytes(png())
    texts = ["t0", "t1", "t2", "t3", "t4", "t1", "t6", "t6", "t8", "t0"]  # lines 6, 8 and 10 repeat earlier rows
    cap = tmp_path / "c.jsonl"
    cap.write_text("".join(json.dumps({"image": "a.png", "text": t}) + "\n" for t in texts), encoding="utf-8")
    monkeypatch.setattr(rows_mod, "CHUNK_ROWS", 4)  # batches: lines 1-4 (all new), 5-8, 9-10
    cfg, lake = jsonl_cfg(cap), tmp_path / "lake"
    curated = convert(download(cfg, lake), cfg, lake)
    bad = [json.loads(x) for x in Path(curated.quarantine_path).read_text().splitlines()]
    assert [(b["line"], b["reason"], b["detail"].split(":")[-1]) for b in bad] == [
        (6, "duplicate", "2"), (8, "duplicate", "7"), (10, "duplicate", "1")]
    assert [r["source_line"] for r in read_rows(curated)] == [1, 2, 3, 4, 5, 7, 9]

    # two different contents whose hashes share their first 8 bytes are both kept
    real = rows_mod.digests_of

    def prefix_clash(kind, cand, shas):
        d = real(kind, cand, shas).copy()
        d[:, :8] = 7
        return d

    monkeypatch.setattr(rows_mod, "digests_of", prefix_clash)
    cap.write_text("".join(json.dumps({"image": "a.png", "text": t}) + "\n" for t in ["x", "y", "z", "x"]),
                   encoding="utf-8")
    curated = convert(download(cfg, lake), cfg, lake)
    assert (curated.rows_kept, curated.quarantine_by_reason) == (3, {"duplicate": 1})


def test_fully_bad_input_raises_data_error(tmp_path):
    cap = tmp_path / "c.jsonl"
    cap.write_text('{"image": "nope.png", "text": "a"}\nnot json\n', encoding="utf-8")
    cfg = jsonl_cfg(cap)
    lake = tmp_path / "lake"
    with pytest.raises(DataError, match=r"all 2 rows were quarantined \(image_missing: 1, malformed_json: 1\)"):
        convert(download(cfg, lake), cfg, lake)
    assert not [p for p in (lake / "curated").glob("*")]  # nothing visible, no leftovers
    assert list((lake / "quarantine").glob("*/quarantine.jsonl"))  # but the reasons are kept


# --------------------------------------------------------------------------- the lake


def test_layout_metadata_and_byte_identical_rerun(synthetic_raw, tmp_path):
    cfg, lake, raw = synthetic_raw
    cfg = cfg.model_copy(update={"shard_rows": 250, "row_group_rows": 100})
    curated = convert(raw, cfg, lake)
    root = Path(curated.root)
    assert root == lake / "curated" / curated.version and not curated.reused
    assert (curated.rows_in, curated.rows_kept, curated.kinds) == (400, 400, {"caption": 300, "vqa": 100})
    assert [Path(s).name for s in curated.shards] == ["train-00000-of-00002.parquet", "train-00001-of-00002.parquet",
                                                      "validation-00000-of-00001.parquet"]
    meta = pq.ParquetFile(curated.shards[0])
    assert meta.schema_arrow.metadata[b"openmind.schema_version"] == str(SCHEMA_VERSION).encode()
    assert meta.metadata.num_row_groups == 3 and meta.metadata.row_group(0).column(0).compression == "ZSTD"
    manifest = json.loads((root / "_manifest.json").read_text())
    assert manifest["schema_version"] == SCHEMA_VERSION and manifest["rows_kept"] == 400
    val = curated.splits["validation"] / 400
    assert 0.04 < val < 0.16 and sum(curated.splits.values()) == 400
    rows = read_rows(curated, with_images=True)
    assert {"sample_id", "kind", "split", "text", "question", "answer", "language", "image", "image_sha256",
            "image_width", "image_height", "image_format", "source_file", "source_line"} <= set(rows[0])
    assert rows[0]["source_file"].startswith("raw/synthetic/") and rows[0]["image_width"] == 64

    before = files_of(root)
    again = convert(raw, cfg, lake)
    assert again.reused and again.version == curated.version
    shutil.rmtree(root)
    rebuilt = convert(raw, cfg, lake)
    assert not rebuilt.reused and files_of(root) == before  # byte-identical
    other = convert(raw, cfg.model_copy(update={"num_workers": 2}), tmp_path / "lake2")  # 2 processes
    assert other.version == curated.version and files_of(Path(other.root)) == before


def test_changed_input_gives_new_version_beside_old(tmp_path):
    (tmp_path / "a.png").write_bytes(png())
    cap = tmp_path / "c.jsonl"
    cap.write_text('{"image": "a.png", "text": "one"}\n', encoding="utf-8")
    cfg, lake = jsonl_cfg(cap), tmp_path / "lake"
    first = convert(download(cfg, lake), cfg, lake)
    cap.write_text('{"image": "a.png", "text": "one"}\n{"image": "a.png", "text": "two"}\n', encoding="utf-8")
    second = convert(download(cfg, lake), cfg, lake)
    assert first.version != second.version
    assert Path(first.root, "_manifest.json").is_file() and Path(second.root, "_manifest.json").is_file()
    assert (first.rows_kept, second.rows_kept) == (1, 2)


def test_crash_mid_write_leaves_no_visible_shard(tmp_path, monkeypatch):
    generate(tmp_path / "src", num_captions=30, num_vqa=0, image_size=16, image_subdir=".")
    cfg, lake = jsonl_cfg(tmp_path / "src" / "captions.jsonl", shard_rows=10), tmp_path / "lake"
    raw = download(cfg, lake)
    real = ShardWriter._write_group
    calls = []

    def crashing(self, shard, rows):
        calls.append(shard)
        if len(calls) == 2:
            self.path(shard).write_bytes(b"PAR1 half a shard")  # a partial file on disk, then the crash
            raise RuntimeError("simulated crash while writing a shard")
        real(self, shard, rows)

    monkeypatch.setattr(ShardWriter, "_write_group", crashing)
    with pytest.raises(RuntimeError, match="simulated crash"):
        convert(raw, cfg, lake)
    assert len(calls) == 2
    assert list((lake / "curated").rglob("*.parquet")) == [] and list((lake / "curated").iterdir()) == []
    # a hard kill (no cleanup) leaves only a hidden temporary directory; the next run removes it
    version = convert_mod.version_of(json.loads(Path(raw.manifest).read_text()), cfg)
    stale = lake / "curated" / f".{version}.tmp-1-dead"
    stale.mkdir()
    (stale / "part-00000.parquet").write_bytes(b"partial")
    monkeypatch.setattr(ShardWriter, "_write_group", real)
    curated = convert(raw, cfg, lake)
    assert curated.rows_kept == 30 and not stale.exists()
    assert len(curated.shards) == sum(-(-n // 10) for n in curated.splits.values())  # 10 rows a shard, per split
    assert [p.name for p in (lake / "curated").iterdir()] == [version]


def test_split_is_stable_when_rows_are_added(tmp_path):
    generate(tmp_path / "src", num_captions=80, num_vqa=0, image_size=16, image_subdir=".")
    lines = (tmp_path / "src" / "captions.jsonl").read_text().splitlines(keepends=True)
    small, big = tmp_path / "src" / "small.jsonl", tmp_path / "src" / "big.jsonl"
    small.write_text("".join(lines[:50]))
    big.write_text("".join(lines[:30] + lines[50:] + lines[30:50]))  # new rows, shuffled order
    lake = tmp_path / "lake"
    splits = []
    for f in (small, big):
        cfg = jsonl_cfg(f, val_fraction=0.3)
        splits.append({r["sample_id"]: r["split"] for r in read_rows(convert(download(cfg, lake), cfg, lake))})
    assert len(splits[0]) == 50 and len(splits[1]) == 80
    assert all(splits[1][sid] == s for sid, s in splits[0].items())
    assert 0 < sum(s == "validation" for s in splits[1].values()) < 80


def test_lake_opens_in_datasets_pandas_and_duckdb(synthetic_raw):
    cfg, lake, raw = synthetic_raw
    curated = convert(raw, cfg, lake)
    import datasets
    import duckdb
    import pandas as pd

    ds = datasets.load_dataset("parquet", data_files=curated.shards, split="train")
    assert ds.num_rows == 400 and ds[0]["kind"] in ("caption", "vqa")
    assert isinstance(ds.features["image"], datasets.Image) and ds[0]["image"].size == (64, 64)  # a PIL image
    assert ds.features["image_width"] == datasets.Value("int32") and ds.features["answers"].feature == datasets.Value("string")
    assert ds.features["conversation"].feature["role"] == datasets.Value("string")
    vqa = next(r for r in ds if r["kind"] == "vqa")
    assert vqa["answers"] == [vqa["answer"]] and vqa["conversation"] is None
    df = pd.read_parquet(curated.root)  # the directory: _manifest.json is ignored
    assert len(df) == 400 and df["split"].value_counts().to_dict() == curated.splits
    assert df["image"][0]["bytes"][:4] == b"\x89PNG" and len(df["image_sha256"][0]) == 64
    con = duckdb.connect()
    n, vqa, width = con.execute(
        f"SELECT count(*), sum(CASE WHEN kind = 'vqa' THEN 1 ELSE 0 END), max(image_width) "
        f"FROM read_parquet('{curated.root}/*.parquet')").fetchone()
    assert (n, vqa, width) == (400, 100, 64)
    assert con.execute(f"SELECT octet_length(max(image.bytes)) > 0 FROM read_parquet('{curated.root}/*.parquet')").fetchone()[0]


# --------------------------------------------------------------------------- the vectorised fast path


def _messy_caption_file(root: Path) -> Path:
    """A caption JSONL that pyarrow.json parses, with every per-row problem the fast path must hand over."""
    root.mkdir()
    for i in range(4):
        (root / f"{i}.png").write_bytes(png((60 * i, 0, 0)))
    full = png(size=(32, 32), noise=True)
    (root / "trunc.png").write_bytes(full[: len(full) // 2])
    inline = base64.b64encode(png((1, 2, 3))).decode()
    j = lambda o: json.dumps(o, ensure_ascii=False)  # noqa: E731
    rows = [
        j({"image": "0.png", "text": "plain"}),
        j({"image": "1.png", "text": "  padded  "}),                      # stripped by parse_row
        j({"image": "1.png", "text": "\u3000wide space"}),                # unicode whitespace
        "",                                                                 # blank lines keep numbering
        "   ",
        j({"image": "2.png", "text": ""}),                                # empty_text
        j({"image": "2.png", "text": "x" * 101}),                         # text_too_long
        j({"image": "2.png"}),                                            # missing_field
        j({"image": None, "text": "null image"}),                         # missing_field
        j({"image": "../0.png", "text": "escape"}),                       # path_escape
        j({"image": "nope.png", "text": "missing"}),                      # image_missing
        j({"image": "trunc.png", "text": "truncated"}),                   # image_truncated
        j({"image": "0.png", "text": "plain"}),                           # duplicate of line 1
        j({"image": "3.png", "text": "红色的圆"}),                        # zh detected
        j({"image": "3.png", "text": "given", "language": "fr"}),         # language kept
        j({"image": "3.png", "text": "empty lang", "language": ""}),      # detected
        j({"image": "data:image/png;base64," + inline, "text": "inline"}),  # inline image
        j({"image": "0.png", "text": "extra fields", "meta": {"a": [1, 2]}, "score": 0.5}),
        j({"image": "1.png", "text": "pair \U0001F600 ok"}),
    ]
    path = root / "caps.jsonl"
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return path


def _convert_both(monkeypatch, tmp_path: Path, cap: Path, **kw) -> tuple:
    out = []
    for fast in (True, False):
        monkeypatch.setattr(reader_mod, "FAST_PATH", fast)
        cfg, lake = jsonl_cfg(cap, max_text_chars=100, **kw), tmp_path / f"lake-{fast}"
        curated = convert(download(cfg, lake), cfg, lake)
        quarantine = Path(curated.quarantine_path).read_text(encoding="utf-8").replace(str(lake), "<lake>")
        out.append((curated.model_dump(exclude={"root", "shards", "quarantine_path", "reused"}),
                    files_of(Path(curated.root)), quarantine))
    return out


def test_fast_path_agrees_with_line_by_line_path(tmp_path, monkeypatch):
    cap = _messy_caption_file(tmp_path / "user")
    assert reader_mod.parse_block(cap.read_bytes(), 1, "caption", 100) is not None  # the fast path is taken
    fast, slow = _convert_both(monkeypatch, tmp_path, cap)
    assert fast == slow  # same counts, byte-identical shards, same quarantine file
    summary, _, quarantine = fast
    assert summary["rows_in"] == 17 and summary["rows_kept"] == 9
    got = {b["line"]: b["reason"] for b in map(json.loads, quarantine.splitlines())}
    assert got == {6: "empty_text", 7: "text_too_long", 8: "missing_field", 9: "missing_field", 10: "path_escape",
                   11: "image_missing", 12: "image_truncated", 13: "duplicate"}
    monkeypatch.setattr(reader_mod, "BLOCK_BYTES", 150)  # a few lines a block: the same lake and quarantine
    assert _convert_both(monkeypatch, tmp_path / "small-blocks", cap) == [fast, slow]
    monkeypatch.setattr(reader_mod, "BLOCK_BYTES", 1 << 20)
    monkeypatch.setattr(reader_mod, "FAST_PATH", True)
    cfg = jsonl_cfg(cap, max_text_chars=100)
    rows = {r["source_line"]: r for r in read_rows(convert(download(cfg, tmp_path / "lake-True"), cfg, tmp_path / "lake-True"))}
    assert rows[2]["text"] == "padded" and rows[3]["text"] == "wide space"
    assert (rows[14]["language"], rows[15]["language"], rows[16]["language"], rows[1]["language"]) == ("zh", "fr", "en", "en")


def test_a_bad_line_sends_only_its_piece_line_by_line(tmp_path, monkeypatch):
    monkeypatch.setattr(reader_mod, "SUB_BLOCK_LINES", 4)
    (tmp_path / "a.png").write_bytes(png())
    lines = [json.dumps({"image": "a.png", "text": f"row {i}"}) for i in range(40)]
    lines[9] = '{"image": "a.png", "text": '                         # malformed: its piece goes line by line
    lines[22] = "\ufeff" + lines[22]                                    # BOM
    lines[30] = json.dumps({"image": "a.png", "text": "two"}) + json.dumps({"image": "a.png", "text": "objs"})
    lines[35] = json.dumps({"image": "a.png", "text": "lone \ud800"}, ensure_ascii=True)  # a lone surrogate escape
    cap = tmp_path / "c.jsonl"
    cap.write_bytes(("\n".join(lines) + "\n").encode("utf-8", errors="surrogatepass"))
    calls = []
    real = reader_mod._slow_lines
    monkeypatch.setattr(reader_mod, "_slow_lines", lambda f, ls, *a: calls.append(len(ls)) or real(f, ls, *a))
    fast, slow = _convert_both(monkeypatch, tmp_path, cap)
    assert fast == slow
    got = {b["line"]: b["reason"] for b in map(json.loads, fast[2].splitlines())}
    assert got == {10: "malformed_json", 23: "bom", 31: "malformed_json", 36: "invalid_utf8"}
    assert fast[0]["rows_in"] == 40 and fast[0]["rows_kept"] == 36
    assert sum(calls[: len(calls) - 1]) < 40  # the fast run sent only the bad pieces line by line


def test_block_lines_and_whitespace_table():
    from openmind_core.data.validate import PY_WHITESPACE, block_lines

    assert set(PY_WHITESPACE) == {chr(c) for c in range(0x110000) if chr(c).isspace()}
    for block in [b"a\nb\n", b"a\nb", b"a\n\nb\n", b"a\n  \nb", b"\na", b" a\nb\n", b"a\nb\n\n", b"a\n\x0b\n", b"\n", b""]:
        expected = [i for i, line in enumerate(block.split(b"\n"), 7) if line.strip()]
        assert block_lines(block, 7).tolist() == expected, block
    assert block_lines(b"a\r\nb\n", 1) is None


def test_vectorised_ids_and_splits_match_sample_id_and_split_of():
    import numpy as np
    import pyarrow as pa

    rows = pa.table({"text": ["a cat", None, "中文", ""], "question": [None, "how many?", None, None],
                     "answer": [None, "2", None, None]})
    shas = pa.array(["ab" * 32, "cd" * 32, "ef" * 32, "01" * 32])
    for kind in ("caption", "vqa"):
        digests = content.digests_of(kind, rows, shas)
        ids = content.hex_ids(digests).to_pylist()
        assert ids == [content.sample_id(kind, r, s) for r, s in zip(rows.to_pylist(), shas.to_pylist())]
        assert all(len(i) == 32 for i in ids) and len(set(ids)) == 4

    rng = np.random.default_rng(0)
    digests = rng.integers(0, 256, (3000, 16), dtype=np.uint8)
    edges = [bytes.fromhex(h) + bytes(12) for h in ("00000000", "19999999", "1999999a", "ffffffff")]
    digests = np.concatenate([digests, np.frombuffer(b"".join(edges), np.uint8).reshape(-1, 16)])
    sids = [bytes(d).hex() for d in digests]
    for fraction in (0.0, 0.1, 0.5, 0.999, 1 - 2**-40):
        got = content.splits_of(digests, fraction).to_pylist()
        assert got == [content.split_of(s, fraction) for s in sids], fraction


def test_long_work_shows_progress_bars(tmp_path, monkeypatch, capsys):
    """Download and conversion report files and rows done (shown at once here; normally after 2 s)."""
    import openmind_core.progress

    monkeypatch.setattr(openmind_core.progress, "DELAY", 0)
    (tmp_path / "a.png").write_bytes(png())
    rows = [json.dumps({"image": "a.png", "text": f"caption {i}"}) for i in range(30)] + ["not json"]
    (tmp_path / "c.jsonl").write_text("\n".join(rows) + "\n")
    cfg = jsonl_cfg(tmp_path / "c.jsonl")
    curated = convert(download(cfg, tmp_path / "lake"), cfg, tmp_path / "lake")
    assert (curated.rows_in, curated.rows_kept) == (31, 30)
    err = capsys.readouterr().err
    for bar in ("download: hashing inputs: 100%", "1/1", "download: checksums: 100%", "2/2",
                "converting: 100%", "31/31"):
        assert bar in err, bar
    monkeypatch.setattr(openmind_core.progress, "DELAY", 2.0)
    convert(download(jsonl_cfg(tmp_path / "c.jsonl"), tmp_path / "lake2"), cfg, tmp_path / "lake2")
    assert "converting" not in capsys.readouterr().err  # quick work prints no bar


def test_jsonl_is_read_in_blocks_that_end_at_line_breaks(tmp_path):
    lines = [b"a" * n for n in (3, 0, 40, 1, 17, 5, 0, 2)]
    for tail in (b"\n", b""):  # with and without a final line break
        path = tmp_path / "f.jsonl"
        path.write_bytes(b"\n".join(lines) + tail)
        blocks = list(reader_mod._blocks(path, 8))  # the 40-byte line spans several reads
        assert b"".join(b for _, b in blocks) == path.read_bytes()
        assert all(b.endswith(b"\n") for _, b in blocks[:-1])
        assert all(len(b) <= 2 * 8 or max(map(len, b.split(b"\n"))) > 8 for _, b in blocks)  # bounded but by a long line
        starts = [first for first, _ in blocks]
        assert starts == [1 + sum(b.count(b"\n") for _, b in blocks[:i]) for i in range(len(blocks))]


def test_batches_hold_a_bounded_size_of_images(tmp_path, monkeypatch):
    """Large images are inspected in batches of about IMAGE_BATCH_BYTES; the lake is the same."""
    sizes = {}
    rows = []
    for i in range(12):
        data = png(size=(24 + i, 24), noise=True)  # ~2 KB each, incompressible
        (tmp_path / f"{i}.png").write_bytes(data)
        sizes[f"{i}.png"] = len(data)
        rows += [json.dumps({"image": f"{i}.png", "text": f"t{i}"}), json.dumps({"image": f"{i}.png", "text": f"u{i}"})]
    cap = tmp_path / "c.jsonl"
    cap.write_text("\n".join(rows) + "\n", encoding="utf-8")
    cfg = jsonl_cfg(cap)
    whole = convert(download(cfg, tmp_path / "lake-whole"), cfg, tmp_path / "lake-whole")

    limit = 3 * min(sizes.values())
    monkeypatch.setattr(rows_mod, "IMAGE_BATCH_BYTES", limit)
    seen = []
    real = rows_mod.assemble
    monkeypatch.setattr(rows_mod, "assemble", lambda f, cand, *a: seen.append(cand["line"].to_pylist()) or real(f, cand, *a))
    sliced = convert(download(cfg, tmp_path / "lake-sliced"), cfg, tmp_path / "lake-sliced")
    assert files_of(Path(sliced.root)) == files_of(Path(whole.root))
    assert sorted(sum(seen, [])) == list(range(1, 25)) and len(seen) > 4
    for lines in seen:
        images = {rows[i - 1].split('"image": "')[1].split('"')[0] for i in lines}
        assert len(images) == 1 or sum(sizes[k] for k in images) <= limit, (lines, images)


def test_an_image_shared_by_far_apart_rows_is_decoded_once(tmp_path, monkeypatch):
    """With no bytes kept, a known image is read again and its sha256 checked, not decoded again."""
    for i in range(3):
        (tmp_path / f"{i}.png").write_bytes(png((80 * i, 0, 0)))
    rows = [json.dumps({"image": f"{i % 3}.png", "text": f"row {i}"}) for i in range(12)]
    cap = tmp_path / "c.jsonl"
    cap.write_text("\n".join(rows) + "\n", encoding="utf-8")
    cfg = jsonl_cfg(cap)
    whole = convert(download(cfg, tmp_path / "lake-whole"), cfg, tmp_path / "lake-whole")

    monkeypatch.setattr(rows_mod, "CHUNK_ROWS", 2)  # every image again in later batches
    monkeypatch.setattr(images_mod, "IMAGE_CACHE_BYTES", 0)
    inspected = []
    real = rows_mod.load_and_inspect
    monkeypatch.setattr(rows_mod, "load_and_inspect", lambda job: inspected.append(job[0].path) or real(job))
    lake = tmp_path / "lake-reread"
    raw = download(cfg, lake)
    again = convert(raw, cfg, lake)
    assert files_of(Path(again.root)) == files_of(Path(whole.root))
    assert sorted(Path(p).name for p in inspected) == ["0.png", "1.png", "2.png"]

    # an image changed behind the converter's back is inspected afresh, not trusted
    cache = images_mod.ImageCache()
    ref = images_mod.ImageRef(path=inspected[0])
    cache.put(ref.key, real((ref, 1 << 20, 1 << 24)))
    assert cache.get(ref.key, ref)[1].width == 16
    Path(inspected[0]).write_bytes(png((1, 2, 3)))
    assert cache.get(ref.key, ref) is None


def test_vqa_answers_agree_in_both_paths(tmp_path, monkeypatch):
    """An ``answers`` list: kept as given (or stripped), the target is ``answer`` or the most common."""
    (tmp_path / "a.png").write_bytes(png())
    j = json.dumps
    rows = [j({"image": "a.png", "question": "q1", "answer": "red", "answers": ["red", "dark red"]}),
            j({"image": "a.png", "question": "q2", "answers": ["2", "3", "3", "2", "3"]}),       # target: most common
            j({"image": "a.png", "question": "q3", "answers": [" pad ", "x"], "answer": "x"}),   # stripped (slow path)
            j({"image": "a.png", "question": "q4", "answer": "only"}),                           # answers: [answer]
            j({"image": "a.png", "question": "q5", "answers": [1, 2]}),                           # wrong_type
            j({"image": "a.png", "question": "q6", "answers": ["ok", ""]}),                       # empty_text
            j({"image": "a.png", "question": "q7", "answers": []}),                               # missing_field
            j({"image": "a.png", "question": "q8", "answers": [{"answer": "b", "answer_id": 1}] * 2})]  # VQAv2 layout
    vqa = tmp_path / "v.jsonl"
    vqa.write_text("\n".join(rows) + "\n", encoding="utf-8")
    out = []
    for fast in (True, False):
        monkeypatch.setattr(reader_mod, "FAST_PATH", fast)
        cfg = DataConfig(source="jsonl", jsonl={"vqa": str(vqa)}, num_workers=1)
        curated = convert(download(cfg, tmp_path / f"lake-{fast}"), cfg, tmp_path / f"lake-{fast}")
        out.append((files_of(Path(curated.root)), curated.quarantine_by_reason))
    assert out[0] == out[1] and out[0][1] == {"empty_text": 1, "missing_field": 1, "wrong_type": 1}
    got = {r["question"]: (r["answer"], r["answers"]) for r in read_rows(curated)}
    assert got == {"q1": ("red", ["red", "dark red"]), "q2": ("3", ["2", "3", "3", "2", "3"]),
                   "q3": ("x", ["pad", "x"]), "q4": ("only", ["only"]), "q8": ("b", ["b", "b"])}
