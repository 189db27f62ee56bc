"""Files written on Windows: CRLF line ends, a leading BOM, backslash paths."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

from PIL import Image

from openmind_core.data import convert, download, read_rows
from schemas.config import DataConfig


def png(color) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (16, 12), color).save(buf, format="PNG")
    return buf.getvalue()


def _windows_dataset(root: Path) -> Path:
    """A folder as the guide's author has it: images\\coco\\..., a CRLF JSONL with a BOM."""
    (root / "images" / "coco").mkdir(parents=True)
    for i in range(3):
        (root / "images" / "coco" / f"00012{i}.jpg").write_bytes(png((70 * i, 20, 20)))
    rows = [
        {"image": "images\\coco\\000120.jpg", "text": "a red square"},          # 1 kept (the BOM line)
        {"image": "images\\coco\\000121.jpg", "text": "a green circle"},        # 2 kept
        {"image": "images/coco/000122.jpg", "text": "forward slashes too"},     # 3 kept
        {"image": "D:\\OpenMind\\images\\000123.jpg", "text": "absolute"},      # 4 windows_path
        {"image": "..\\outside.jpg", "text": "escapes"},                         # 5 path_escape
        {"image": "images\\coco\\missing.jpg", "text": "missing"},              # 6 image_missing
    ]
    data = b"\xef\xbb\xbf" + b"".join(json.dumps(r).encode() + b"\r\n" for r in rows)
    data += b'{"image": "images\\\\coco\\\\000120.jpg", "text": "bad \xff byte"}\r\n'  # 7 invalid_utf8
    data += json.dumps({"image": "images\\coco\\000121.jpg", "text": "no final line end"}).encode() + b"\r"  # 8 kept
    path = root / "train.jsonl"
    path.write_bytes(data)
    return path


def test_crlf_bom_and_backslash_paths_are_kept(tmp_path):
    src = _windows_dataset(tmp_path / "user")
    (tmp_path / "outside.jpg").write_bytes(png((1, 2, 3)))
    cfg = DataConfig(source="jsonl", jsonl={"captions": str(src)}, num_workers=1)
    lake = tmp_path / "lake"
    curated = convert(download(cfg, lake), cfg, lake)

    assert curated.rows_in == 8 and curated.rows_in == curated.rows_kept + curated.rows_quarantined
    kept = read_rows(curated, with_images=True)
    assert [(r["source_line"], r["text"]) for r in kept] == [
        (1, "a red square"), (2, "a green circle"), (3, "forward slashes too"), (8, "no final line end")]
    assert kept[0]["image"] == png((0, 20, 20))  # the backslash path found its file
    bad = {b["line"]: b for b in map(json.loads, Path(curated.quarantine_path).read_text(encoding="utf-8").splitlines())}
    assert {k: b["reason"] for k, b in bad.items()} == {4: "windows_path", 5: "path_escape", 6: "image_missing",
                                                        7: "invalid_utf8"}
    assert bad[4]["detail"].startswith("D:\\OpenMind\\images\\000123.jpg is a Windows absolute path")
    manifest = json.loads(Path(curated.root, "_manifest.json").read_text())
    assert manifest["normalised"] == {"crlf_lines": 8, "bom_files": 1} == curated.normalised
    assert manifest["inputs"] == [{"file": str(src.resolve()), "kind": "caption", "rows_in": 8, "crlf_lines": 8,
                                   "bom": True}]

    # the same rows with LF line ends and no BOM give the same shards (ids, splits, images, lines)
    unix = tmp_path / "unix"
    shutil.copytree(tmp_path / "user" / "images", unix / "images")
    (unix / "train.jsonl").write_bytes(src.read_bytes()[3:].replace(b"\r\n", b"\n").rstrip(b"\r"))
    cfg2 = DataConfig(source="jsonl", jsonl={"captions": str(unix / "train.jsonl")}, num_workers=1)
    other = convert(download(cfg2, tmp_path / "lake2"), cfg2, tmp_path / "lake2")
    strip = lambda rows: [{k: v for k, v in r.items() if k != "source_file"} for r in rows]  # noqa: E731
    assert strip(read_rows(other, with_images=True)) == strip(kept)

    # a rerun is byte-identical
    files = {p.name: p.read_bytes() for p in Path(curated.root).iterdir()}
    shutil.rmtree(curated.root)
    again = convert(download(cfg, lake), cfg, lake)
    assert {p.name: p.read_bytes() for p in Path(again.root).iterdir()} == files


def test_a_bom_inside_the_file_is_still_quarantined(tmp_path):
    (tmp_path / "a.png").write_bytes(png((9, 9, 9)))
    lines = [json.dumps({"image": "a.png", "text": f"row {i}"}).encode() for i in range(3)]
    lines[1] = b"\xef\xbb\xbf" + lines[1]  # two files pasted together
    (tmp_path / "c.jsonl").write_bytes(b"\r\n".join(lines) + b"\r\n")
    cfg = DataConfig(source="jsonl", jsonl={"captions": str(tmp_path / "c.jsonl")}, num_workers=1)
    curated = convert(download(cfg, tmp_path / "lake"), cfg, tmp_path / "lake")
    assert (curated.rows_kept, curated.quarantine_by_reason) == (2, {"bom": 1})
