"""The ``coco`` source: a COCO captions annotation JSON plus its image folder, the first ``limit`` captions."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

from schemas.artifacts import RawDataset
from schemas.config import DataConfig

from openmind_core.data.layout import DataError, stable_hash
from openmind_core.data.sources.raw import CAPTIONS, IMAGE_DIR, commit, hash_file_into, is_within, require
from openmind_core.progress import tracked


def download(cfg: DataConfig, lake: Path, seed: int) -> RawDataset:
    c = cfg.coco
    ann_path = require(c.annotations, "data.coco.annotations")
    img_root = require(c.images, "data.coco.images")
    if not img_root.is_dir():
        raise NotADirectoryError(f"data.coco.images: not a directory: {img_root}")
    try:
        ann = json.loads(ann_path.read_text(encoding="utf-8-sig"))
        images = {im["id"]: im["file_name"] for im in ann["images"]}
        annotations = list(ann["annotations"])
    except (ValueError, KeyError, TypeError) as e:
        raise DataError(f"{ann_path}: not a COCO captions annotation file ({type(e).__name__}: {e}); "
                        "expected {{'images': [{{id, file_name}}], 'annotations': [{{image_id, caption}}]}}") from None
    if c.limit is not None:
        annotations = annotations[: c.limit]
    base = img_root.resolve()
    rows: list[dict] = []
    copies: dict[str, Path] = {}
    planned: set[str] = set()
    for a in annotations:
        file_name = images.get(a.get("image_id")) if isinstance(a, dict) else None
        rows.append({"image": file_name, "text": a.get("caption") if isinstance(a, dict) else None,
                     "coco_image_id": a.get("image_id") if isinstance(a, dict) else None,
                     "coco_id": a.get("id") if isinstance(a, dict) else None})
        if isinstance(file_name, str) and file_name not in planned:  # COCO has ~5 captions per image
            planned.add(file_name)
            target = (base / file_name).resolve()
            if is_within(target, base) and target.is_file():
                copies[f"{IMAGE_DIR}/0/{target.relative_to(base).as_posix()}"] = target
    h = hashlib.sha256()
    h.update(stable_hash({"source": "coco", "limit": c.limit}).encode())
    hash_file_into(h, ann_path)
    for dest in tracked(sorted(copies), "download: hashing inputs", unit="file"):
        h.update(dest.encode())
        hash_file_into(h, copies[dest])
    fingerprint = h.hexdigest()[:16]

    def build(tmp: Path) -> dict:
        with open(tmp / CAPTIONS, "w", encoding="utf-8") as f:
            for r in rows:
                f.write(json.dumps(r, ensure_ascii=False) + "\n")
        for dest, src in tracked(list(copies.items()), "download: copying images", unit="file"):
            (tmp / dest).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, tmp / dest)
        return {"image_roots": {CAPTIONS: f"{IMAGE_DIR}/0"},
                "inputs": {"annotations": str(ann_path.resolve()), "images": str(base)}}

    return commit("coco", lake, fingerprint, build)

