"""The raw download directory every source writes: staged, hashed, manifest last, reused.

``commit(source, lake, fingerprint, build)`` reuses a complete ``<lake>/raw/<source>/<fingerprint>/``
or builds it in a staged directory (``build(tmp)`` writes the files) and writes ``manifest.json``
last: row counts and the sha256 of every file.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Any

from schemas.artifacts import RawDataset, RawFile

from openmind_core.data.layout import RAW_MANIFEST, read_json
from openmind_core.io import atomic_write_json, clean_stale, remove_dir, sha256_file, staged_dir
from openmind_core.progress import tracked

log = logging.getLogger(__name__)

CAPTIONS, VQA, CONVERSATIONS = "captions.jsonl", "vqa.jsonl", "conversations.jsonl"
IMAGE_DIR = "files"
KINDS = {"captions": "caption", "vqa": "vqa", "conversations": "conversation"}  # raw file name -> row kind


def kind_of(name: str) -> str | None:
    """The row kind of a raw JSONL file by its name: ``captions.jsonl`` / ``captions-<n>.jsonl``
    (caption), ``vqa*`` (vqa), ``conversations*`` (conversation); None for any other file."""
    if not name.endswith(".jsonl") or "/" in name:
        return None
    return next((k for prefix, k in KINDS.items() if name == f"{prefix}.jsonl" or name.startswith(f"{prefix}-")), None)


def table_name(kind: str, n: int) -> str:
    """The raw file of the ``n``-th table (from 0) of a kind: captions.jsonl, captions-1.jsonl, ..."""
    prefix = next(p for p, k in KINDS.items() if k == kind)
    return f"{prefix}.jsonl" if n == 0 else f"{prefix}-{n}.jsonl"


def hash_file_into(h: "hashlib._Hash", path: Path) -> None:
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)


def require(path: str | Path, what: str) -> Path:
    p = Path(path).expanduser()
    if not p.exists():
        raise FileNotFoundError(f"{what}: file not found: {p.resolve() if not p.is_absolute() else p}")
    return p


def is_within(path: Path, root: Path) -> bool:
    try:
        path.relative_to(root)
        return True
    except ValueError:
        return False


def _count_rows(path: Path) -> int:
    with open(path, "rb") as f:
        return sum(1 for line in f if line.strip())

def finish(root: Path, source: str, fingerprint: str, extra: dict[str, Any]) -> dict:
    """Hash every file under ``root``, write the manifest last, return it."""
    files = []
    images = 0
    paths = [p for p in sorted(root.rglob("*")) if p.is_file() and p.name != RAW_MANIFEST]
    for p in tracked(paths, "download: checksums", unit="file"):
        rel = p.relative_to(root).as_posix()
        kind = kind_of(rel) or ("image" if rel.startswith(IMAGE_DIR + "/") else "other")
        images += kind == "image"
        files.append({
            "path": rel,
            "kind": kind,
            "rows": _count_rows(p) if kind in KINDS.values() else None,
            "bytes": p.stat().st_size,
            "sha256": sha256_file(p),
        })
    tables = extra.pop("tables", None) or [n for n in (CAPTIONS, VQA, CONVERSATIONS) if (root / n).exists()]
    rows = {f["path"]: f["rows"] for f in files if f["rows"] is not None}
    manifest = {
        "source": source,
        "fingerprint": fingerprint,
        "captions": CAPTIONS if (root / CAPTIONS).exists() else None,
        "vqa": VQA if (root / VQA).exists() else None,
        "tables": tables,  # the raw JSONL files, in the order they are converted
        "caption_rows": sum(rows[t] for t in tables if kind_of(t) == "caption"),
        "vqa_rows": sum(rows[t] for t in tables if kind_of(t) == "vqa"),
        "conversation_rows": sum(rows[t] for t in tables if kind_of(t) == "conversation"),
        "images": images,
        "files": files,
        **extra,
    }
    atomic_write_json(root / RAW_MANIFEST, manifest)
    return manifest


def _artifact(final: Path, manifest: dict, reused: bool) -> RawDataset:
    return RawDataset(
        source=manifest["source"],
        fingerprint=manifest["fingerprint"],
        root=str(final),
        manifest=str(final / RAW_MANIFEST),
        caption_jsonl=str(final / manifest["captions"]) if manifest.get("captions") else None,
        vqa_jsonl=str(final / manifest["vqa"]) if manifest.get("vqa") else None,
        caption_rows=manifest["caption_rows"],
        vqa_rows=manifest["vqa_rows"],
        conversation_rows=manifest.get("conversation_rows", 0),
        images=manifest["images"],
        # image files are listed in manifest.json; the artifact keeps the small files only
        files=[RawFile(**f) for f in manifest["files"] if f["kind"] != "image"],
        reused=reused,
    )


def _existing(final: Path) -> dict | None:
    """The manifest of a complete earlier download, or None (removing an incomplete one)."""
    manifest = read_json(final / RAW_MANIFEST)
    if manifest and all((final / f["path"]).is_file() and (final / f["path"]).stat().st_size == f["bytes"]
                        for f in manifest.get("files", [])):
        return manifest
    if final.exists():
        log.warning("removing incomplete raw download %s", final)
        remove_dir(final)
    return None


def load_raw(root: str | Path) -> dict:
    """The manifest of a raw download directory (raises if it is incomplete)."""
    manifest = read_json(Path(root) / RAW_MANIFEST)
    if manifest is None:
        raise FileNotFoundError(f"raw download {root} has no complete {RAW_MANIFEST}")
    return manifest


def commit(cfg_source: str, lake: Path, fingerprint: str, build, extra: dict | None = None) -> RawDataset:
    final = lake / "raw" / cfg_source / fingerprint
    clean_stale(final.parent, final.name)
    manifest = _existing(final)
    if manifest is not None:
        log.info("raw %s download %s already complete: reusing it", cfg_source, fingerprint)
        return _artifact(final, manifest, reused=True)
    with staged_dir(final) as tmp:
        more = build(tmp) or {}
        manifest = finish(tmp, cfg_source, fingerprint, {**(extra or {}), **more})
    log.info("raw %s download written to %s (%d caption rows, %d vqa rows, %d images)",
             cfg_source, final, manifest["caption_rows"], manifest["vqa_rows"], manifest["images"])
    return _artifact(final, read_json(final / RAW_MANIFEST) or manifest, reused=False)


