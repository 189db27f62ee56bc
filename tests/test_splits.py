"""Splits by image: rows that share an image share a split, stable under growth, at about
data.val_fraction, checked with DuckDB on the curated lake."""

from __future__ import annotations

import io
import json
from pathlib import Path

from PIL import Image

from openmind_core.data import convert, download, read_rows
from openmind_core.data.content import image_split_of, split_of
from schemas.config import DataConfig


def _coco_like(root: Path, images: int, per_image: int = 5) -> list[str]:
    """``images`` distinct PNGs with ``per_image`` captions each, the captions of an image far apart."""
    (root / "img").mkdir(parents=True, exist_ok=True)
    for i in range(images):
        buf = io.BytesIO()
        Image.new("RGB", (8, 8), (i % 256, i // 256, 7)).save(buf, format="PNG")
        (root / "img" / f"{i}.png").write_bytes(buf.getvalue())
    return [json.dumps({"image": f"img/{i}.png", "text": f"caption {j} of image {i}"})
            for j in range(per_image) for i in range(images)]


def test_no_image_in_both_splits_and_the_fraction_holds(tmp_path):
    import duckdb

    lines = _coco_like(tmp_path / "src", 400)
    jsonl = tmp_path / "src" / "captions.jsonl"
    jsonl.write_text("\n".join(lines) + "\n")
    cfg = DataConfig(source="jsonl", jsonl={"captions": str(jsonl)}, val_fraction=0.1, num_workers=1)
    curated = convert(download(cfg, tmp_path / "lake"), cfg, tmp_path / "lake")
    assert curated.rows_kept == 2000
    con = duckdb.connect()
    shards = f"read_parquet('{curated.root}/*.parquet')"
    leaked = con.execute(f"SELECT count(*) FROM (SELECT image_sha256 FROM {shards} GROUP BY image_sha256 "
                         "HAVING count(DISTINCT split) > 1)").fetchone()[0]
    images, val_images, val_rows = con.execute(
        f"SELECT count(DISTINCT image_sha256), count(DISTINCT CASE WHEN split = 'validation' THEN image_sha256 END), "
        f"sum(CASE WHEN split = 'validation' THEN 1 ELSE 0 END) FROM {shards}").fetchone()
    assert leaked == 0 and images == 400
    assert abs(val_images / images - 0.1) < 0.04 and val_rows == 5 * val_images  # within a few points
    rows = read_rows(curated, with_images=True)
    assert all(r["split"] == image_split_of(r["image_sha256"], 0.1) for r in rows)

    # stable when rows are added: the first 100 images' rows alone get the same splits
    small = tmp_path / "src" / "small.jsonl"
    small.write_text("\n".join(line for line in lines if int(json.loads(line)["image"][4:-4]) < 100) + "\n")
    cfg2 = DataConfig(source="jsonl", jsonl={"captions": str(small)}, val_fraction=0.1, num_workers=1)
    before = {r["image_sha256"]: r["split"] for r in read_rows(convert(download(cfg2, tmp_path / "lake"), cfg2,
                                                                        tmp_path / "lake"), with_images=True)}
    after = {r["image_sha256"]: r["split"] for r in rows}
    assert len(before) == 100 and all(after[k] == v for k, v in before.items())


def test_text_only_rows_split_by_content(tmp_path):
    rows = [{"conversations": [{"from": "human", "value": f"question {i}"}, {"from": "gpt", "value": "answer"}]}
            for i in range(200)]
    jsonl = tmp_path / "conv.jsonl"
    jsonl.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = DataConfig(source="jsonl", jsonl={"conversations": str(jsonl)}, val_fraction=0.2, num_workers=1)
    kept = read_rows(convert(download(cfg, tmp_path / "lake"), cfg, tmp_path / "lake"))
    assert all(r["split"] == split_of(r["sample_id"], 0.2) for r in kept)
    assert 0.1 < sum(r["split"] == "validation" for r in kept) / len(kept) < 0.3
