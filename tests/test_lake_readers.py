"""The curated lake as others read it: Hugging Face ``datasets``, pandas, and the quarantine file.

- ``datasets.load_dataset("parquet", data_dir=<version>)`` finds a ``train`` and a ``validation``
  split (shard names follow datasets' split patterns; ``_manifest.json`` is not taken for a shard)
  and decodes images as PIL; the manifest's shard list, given as ``data_files``, does the same;
- ``pandas.read_parquet`` gets the image sizes as nullable integers with a text-only row present;
- ``quarantine.jsonl``: ``line`` is an integer and ``text`` the line as it is in the file, also for
  rows rejected for their image or as duplicates;
- a version written by the previous converter (one mixed shard ``part-00000.parquet``) still reads.
"""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from openmind_core.data import convert, download
from openmind_core.data.curated import read_table
from schemas.config import DataConfig


def png(color, size=(16, 12)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="PNG")
    return buf.getvalue()


def make_lake(tmp_path: Path):
    src = tmp_path / "src"
    src.mkdir()
    lines = []
    for i in range(40):
        (src / f"{i}.png").write_bytes(png((i * 6, 255 - i * 6, 40)))
        lines.append(json.dumps({"image": f"{i}.png", "text": f"caption {i}"}))
    (src / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    lines.append('{"text":   "a broken image",  "image": "broken.png"}')  # rejected for its image
    lines.append('{ "image" : "3.png", "text": "caption 3" }')  # a duplicate of line 4, spelled otherwise
    lines.append(json.dumps({"image": ["5.png", "7.png"], "text": "two images"}))  # line 43: a list of images
    (src / "captions.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    conv = [{"conversations": [{"from": "human", "value": f"say {i}"}, {"from": "gpt", "value": f"ok {i}"}]}
            for i in range(6)]  # text-only rows: no image, no image size
    (src / "conv.jsonl").write_text("".join(json.dumps(c) + "\n" for c in conv), encoding="utf-8")
    cfg = DataConfig(source="jsonl", jsonl={"captions": str(src / "captions.jsonl"),
                                            "conversations": str(src / "conv.jsonl")},
                     val_fraction=0.3, num_workers=1)
    lake = tmp_path / "lake"
    return convert(download(cfg, lake), cfg, lake), src


def test_datasets_pandas_and_quarantine(tmp_path):
    import datasets

    cur, src = make_lake(tmp_path)
    root = Path(cur.root)
    assert cur.splits["train"] and cur.splits["validation"]
    names = sorted(p.name for p in root.iterdir())
    assert names == sorted(["_manifest.json"] + [f"{s}-00000-of-00001.parquet" for s in ("train", "validation")])

    cache = str(tmp_path / "hf-cache")
    by_dir = datasets.load_dataset("parquet", data_dir=str(root), cache_dir=cache)
    assert set(by_dir) == {"train", "validation"}
    assert {s: by_dir[s].num_rows for s in by_dir} == cur.splits
    with_image = next(r for r in by_dir["train"] if r["kind"] == "caption")
    assert isinstance(with_image["image"], Image.Image) and with_image["image"].size == (16, 12)
    assert any(r["image"] is None for s in by_dir for r in by_dir[s] if r["kind"] == "conversation")
    assert isinstance(by_dir["train"].features["extra_images"].feature, datasets.Image)
    two = next(r for s in by_dir for r in by_dir[s] if r["source_line"] == 43 and r["kind"] == "caption")
    assert two["image"].getpixel((0, 0)) == (30, 225, 40) and [im.getpixel((0, 0)) for im in two["extra_images"]] == [
        (42, 213, 40)] and with_image["extra_images"] is None

    manifest = json.loads((root / "_manifest.json").read_text())
    files = {s: [str(root / x["path"]) for x in manifest["shards"] if x["split"] == s] for s in ("train", "validation")}
    by_files = datasets.load_dataset("parquet", data_files=files, cache_dir=cache)
    assert {s: by_files[s].num_rows for s in by_files} == cur.splits

    df = pd.read_parquet(root)  # the whole version: pyarrow skips _manifest.json
    assert len(df) == cur.rows_kept and df["image_height"].isna().any()
    assert str(df["image_width"].dtype) == "Int32" and str(df["image_height"].dtype) == "Int32"
    extra = df[df["source_line"] == 43]["extra_images"].iloc[0]
    assert [e["bytes"] for e in extra] == [(src / "7.png").read_bytes()]

    bad = [json.loads(x) for x in Path(cur.quarantine_path).read_text(encoding="utf-8").splitlines()]
    assert [(b["line"], b["reason"]) for b in bad] == [(41, "image_unreadable"), (42, "duplicate")]
    assert all(isinstance(b["line"], int) for b in bad)
    original = (src / "captions.jsonl").read_text(encoding="utf-8").splitlines()
    assert [b["text"] for b in bad] == [original[40], original[41]]  # the lines as written, not our rewrite


def test_a_version_of_the_previous_layout_still_reads(tmp_path):
    cur, _ = make_lake(tmp_path)
    new = Path(cur.root)
    old = new.parent / "old-layout-version"
    old.mkdir()
    table = pa.concat_tables([pq.read_table(s) for s in cur.shards])  # both splits mixed in one shard
    table = table.take(pa.array(sorted(range(table.num_rows), key=lambda i: (table["source_file"][i].as_py(),
                                                                             table["source_line"][i].as_py()))))
    pq.write_table(table, old / "part-00000.parquet")
    manifest = json.loads((new / "_manifest.json").read_text())
    manifest["shards"] = [{"path": "part-00000.parquet", "rows": table.num_rows,
                           "bytes": (old / "part-00000.parquet").stat().st_size, "sha256": "-"}]
    (old / "_manifest.json").write_text(json.dumps(manifest))
    for split in ("train", "validation"):
        assert read_table(old, split).to_pylist() == read_table(new, split).to_pylist()
    shutil.rmtree(old)
