"""The download step: every source becomes raw JSONL plus image files under one fingerprint.

``download(cfg, lake)`` writes ``<lake>/raw/<source>/<fingerprint>/`` holding ``captions.jsonl``
and/or ``vqa.jsonl``, the images they reference under ``files/<root>/``, and ``manifest.json``
(written last; row counts and the sha256 of every file).  The fingerprint hashes the source
config and the contents of every input file, so a second download of the same input is a no-op
(``reused=True``) and a changed input gets a new directory beside the old one.

Sources (``cfg.source``):
- ``synthetic``: the seeded shape generator (``synthetic.py``).
- ``jsonl``: the user's files, copied byte for byte (conversion reports their line numbers and
  encodings).  Image paths are relative to the JSONL file or absolute; referenced images are
  copied into the raw directory, paths that escape the JSONL's folder are not (conversion
  quarantines them).  Inline images (base64 / data URIs) stay in the JSONL.
- ``coco``: a captions annotation JSON plus its image folder, the first ``limit`` captions.
- ``hf``: ``datasets.load_dataset`` on a hub id, a local data set directory (``save_to_disk`` or
  data files) or Parquet files, with a column mapping.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import logging
import os
import shutil
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pa_json

from schemas.artifacts import RawDataset, RawFile
from schemas.config import DataConfig

from openmind_core.data import synthetic
from openmind_core.data.lake import (
    RAW_MANIFEST,
    DataError,
    HubUnreachableError,
    clean_stale_tmp,
    read_json,
    stable_hash,
    staged_dir,
)
from openmind_core.data.validate import looks_inline
from openmind_core.io import atomic_write_json, sha256_file
from openmind_core.progress import tracked

log = logging.getLogger(__name__)

CAPTIONS, VQA = "captions.jsonl", "vqa.jsonl"
IMAGE_DIR = "files"


# --------------------------------------------------------------------------- helpers


def _hash_file_into(h: "hashlib._Hash", path: Path) -> None:
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)


def _require(path: str | Path, what: str) -> Path:
    p = Path(path).expanduser()
    if not p.exists():
        raise FileNotFoundError(f"{what}: file not found: {p.resolve() if not p.is_absolute() else p}")
    return p


def _is_within(path: Path, root: Path) -> bool:
    try:
        path.relative_to(root)
        return True
    except ValueError:
        return False


def _count_rows(path: Path) -> int:
    with open(path, "rb") as f:
        return sum(1 for line in f if line.strip())


def _scan_image_refs(jsonl: Path) -> list[str]:
    """The distinct image path strings a JSONL references, in first-seen order (tolerant: bad
    lines are conversion's business).  A file ``pyarrow.json`` reads with string images is
    scanned a block at a time; any other goes line by line."""
    refs: dict[str, None] = {}
    try:
        for batch in pa_json.open_json(jsonl, parse_options=_IMAGE_ONLY):  # a block at a time
            refs.update(dict.fromkeys(pc.unique(batch.column("image").drop_null()).to_pylist()))
        return [v for v in refs if v and not looks_inline(v)]
    except pa.ArrowInvalid:
        refs.clear()  # an image given as an object, a malformed line, a BOM, ...: line by line
    with open(jsonl, "rb") as f:
        for raw in f:
            try:
                row = json.loads(raw.decode("utf-8", errors="replace").lstrip("\ufeff"))
            except ValueError:
                continue
            value = row.get("image") if isinstance(row, dict) else None
            if isinstance(value, dict):
                value = value.get("path") if not value.get("bytes") else None
            if isinstance(value, str) and value and not looks_inline(value):
                refs[value] = None
    return list(refs)


_IMAGE_ONLY = pa_json.ParseOptions(explicit_schema=pa.schema([("image", pa.string())]),
                                   unexpected_field_behavior="ignore")


def _finish(root: Path, source: str, fingerprint: str, extra: dict[str, Any]) -> dict:
    """Hash every file under ``root``, write the manifest last, return it."""
    files = []
    images = 0
    paths = [p for p in sorted(root.rglob("*")) if p.is_file() and p.name != RAW_MANIFEST]
    for p in tracked(paths, "download: checksums", unit="file"):
        rel = p.relative_to(root).as_posix()
        kind = "caption" if rel == CAPTIONS else "vqa" if rel == VQA else "image" if rel.startswith(IMAGE_DIR + "/") else "other"
        images += kind == "image"
        files.append({
            "path": rel,
            "kind": kind,
            "rows": _count_rows(p) if kind in ("caption", "vqa") else None,
            "bytes": p.stat().st_size,
            "sha256": sha256_file(p),
        })
    manifest = {
        "source": source,
        "fingerprint": fingerprint,
        "captions": CAPTIONS if (root / CAPTIONS).exists() else None,
        "vqa": VQA if (root / VQA).exists() else None,
        "caption_rows": next((f["rows"] for f in files if f["path"] == CAPTIONS), 0),
        "vqa_rows": next((f["rows"] for f in files if f["path"] == VQA), 0),
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
        shutil.rmtree(final)
    return None


def load_raw(root: str | Path) -> dict:
    """The manifest of a raw download directory (raises if it is incomplete)."""
    manifest = read_json(Path(root) / RAW_MANIFEST)
    if manifest is None:
        raise FileNotFoundError(f"raw download {root} has no complete {RAW_MANIFEST}")
    return manifest


# --------------------------------------------------------------------------- entry point


def download(cfg: DataConfig, lake: str | Path, seed: int = 0) -> RawDataset:
    """Bring the configured source into ``<lake>/raw/<source>/<fingerprint>/`` (idempotent)."""
    lake = Path(lake)
    fn = {"synthetic": _synthetic, "jsonl": _jsonl, "coco": _coco, "hf": _hf}[cfg.source]
    return fn(cfg, lake, seed)


def _commit(cfg_source: str, lake: Path, fingerprint: str, build, extra: dict | None = None) -> RawDataset:
    final = lake / "raw" / cfg_source / fingerprint
    clean_stale_tmp(final.parent, final.name)
    manifest = _existing(final)
    if manifest is not None:
        log.info("raw %s download %s already complete: reusing it", cfg_source, fingerprint)
        return _artifact(final, manifest, reused=True)
    with staged_dir(final) as tmp:
        more = build(tmp) or {}
        manifest = _finish(tmp, cfg_source, fingerprint, {**(extra or {}), **more})
    log.info("raw %s download written to %s (%d caption rows, %d vqa rows, %d images)",
             cfg_source, final, manifest["caption_rows"], manifest["vqa_rows"], manifest["images"])
    return _artifact(final, read_json(final / RAW_MANIFEST) or manifest, reused=False)


# --------------------------------------------------------------------------- synthetic


def _synthetic(cfg: DataConfig, lake: Path, seed: int) -> RawDataset:
    s = cfg.synthetic
    params = {"source": "synthetic", "config": s.model_dump(mode="json"), "seed": seed,
              "generator": synthetic.GENERATOR_VERSION}
    fingerprint = stable_hash(params)

    def build(tmp: Path) -> dict:
        synthetic.generate(tmp, s.num_captions, s.num_vqa, s.image_size, s.language,
                           seed=s.seed * 1_000_003 + seed, image_subdir=IMAGE_DIR)
        return {"image_roots": {CAPTIONS: IMAGE_DIR, VQA: IMAGE_DIR}}

    return _commit("synthetic", lake, fingerprint, build)


# --------------------------------------------------------------------------- jsonl


def _plan_jsonl_images(jsonl: Path, root_key: str) -> tuple[dict[str, Path], dict[str, str], dict[str, str]]:
    """For one JSONL: (raw-relative destination -> source file, absolute-path map, problems)."""
    base = jsonl.resolve().parent
    copies: dict[str, Path] = {}
    abs_map: dict[str, str] = {}
    problems: dict[str, str] = {}
    for ref in _scan_image_refs(jsonl):
        p = Path(ref)
        if p.is_absolute():
            if p.is_file():
                dest = f"{IMAGE_DIR}/abs/{hashlib.sha256(ref.encode()).hexdigest()[:16]}{p.suffix.lower()}"
                copies[dest] = p
                abs_map[ref] = dest
            continue
        target = (base / p).resolve()
        if not _is_within(target, base):
            problems[ref] = "path_escape"  # includes symlinks pointing outside
            continue
        if target.is_file():
            copies[f"{root_key}/{target.relative_to(base).as_posix()}"] = target
    return copies, abs_map, problems


def _jsonl(cfg: DataConfig, lake: Path, seed: int) -> RawDataset:
    inputs = {CAPTIONS: cfg.jsonl.captions, VQA: cfg.jsonl.vqa}
    paths = {name: _require(p, f"data.jsonl.{name.split('.')[0]}") for name, p in inputs.items() if p}
    copies: dict[str, Path] = {}
    abs_map: dict[str, dict[str, str]] = {}
    problems: dict[str, dict[str, str]] = {}
    roots: dict[str, str] = {}
    parents: dict[Path, str] = {}
    for name, p in paths.items():
        parent = p.resolve().parent
        key = parents.setdefault(parent, f"{IMAGE_DIR}/{len(parents)}")
        roots[name] = key
        c, a, pr = _plan_jsonl_images(p, key)
        copies.update(c)
        abs_map[name], problems[name] = a, pr
    h = hashlib.sha256()
    h.update(stable_hash({"source": "jsonl", "names": sorted(paths)}).encode())
    for name in sorted(paths):
        h.update(name.encode())
        _hash_file_into(h, paths[name])
    for dest in tracked(sorted(copies), "download: hashing inputs", unit="file"):
        h.update(dest.encode())
        _hash_file_into(h, copies[dest])
    fingerprint = h.hexdigest()[:16]

    def build(tmp: Path) -> dict:
        for name, p in paths.items():
            shutil.copyfile(p, tmp / name)  # byte for byte
        for dest, src in tracked(list(copies.items()), "download: copying images", unit="file"):
            (tmp / dest).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, tmp / dest)
        return {"image_roots": roots, "absolute_images": abs_map, "image_problems": problems,
                "inputs": {name: str(p.resolve()) for name, p in paths.items()}}

    return _commit("jsonl", lake, fingerprint, build)


# --------------------------------------------------------------------------- coco


def _coco(cfg: DataConfig, lake: Path, seed: int) -> RawDataset:
    c = cfg.coco
    ann_path = _require(c.annotations, "data.coco.annotations")
    img_root = _require(c.images, "data.coco.images")
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
            if _is_within(target, base) and target.is_file():
                copies[f"{IMAGE_DIR}/0/{target.relative_to(base).as_posix()}"] = target
    h = hashlib.sha256()
    h.update(stable_hash({"source": "coco", "limit": c.limit}).encode())
    _hash_file_into(h, ann_path)
    for dest in tracked(sorted(copies), "download: hashing inputs", unit="file"):
        h.update(dest.encode())
        _hash_file_into(h, copies[dest])
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

    return _commit("coco", lake, fingerprint, build)


# --------------------------------------------------------------------------- hf


def _local_files(p: Path) -> list[Path]:
    return [p] if p.is_file() else sorted(f for f in p.rglob("*") if f.is_file() and ".cache" not in f.parts)


def _env_offline() -> bool:
    return any(os.environ.get(k, "0").strip().lower() in ("1", "true", "yes", "on")
               for k in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))


@contextmanager
def _offline_mode(offline: bool) -> Iterator[None]:
    """Honour HF_HUB_OFFLINE set after ``datasets`` was imported (it reads it at import time)."""
    if not offline:
        yield
        return
    import datasets
    import huggingface_hub.constants as hub_constants

    saved = datasets.config.HF_HUB_OFFLINE, hub_constants.HF_HUB_OFFLINE
    datasets.config.HF_HUB_OFFLINE = hub_constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        datasets.config.HF_HUB_OFFLINE, hub_constants.HF_HUB_OFFLINE = saved


def _load_hf(name: str, config_name: str | None, split: str):
    """``datasets`` data set for a hub id, a save_to_disk directory, a data directory or Parquet files."""
    import datasets

    p = Path(name).expanduser()
    if p.exists():
        if p.is_dir() and ((p / "state.json").exists() or (p / "dataset_dict.json").exists()):
            ds = datasets.load_from_disk(str(p))
            if isinstance(ds, datasets.DatasetDict):
                base = split.split("[")[0]
                if base not in ds:
                    raise DataError(f"data.hf.split {split!r}: {p} has splits {sorted(ds)}")
                full = ds[base]
            else:
                full = ds
                base = split.split("[")[0]
            try:
                absolute = datasets.ReadInstruction.from_spec(split).to_absolute({base: len(full)})
            except (ValueError, AssertionError) as e:
                raise DataError(f"data.hf.split {split!r}: {e}") from None
            indices = [i for a in absolute for i in range(a.from_, a.to)]
            return full.select(indices)
        if p.is_file() or any(p.rglob("*.parquet")) and not any(p.rglob("*.py")):
            files = [str(f) for f in _local_files(p) if f.suffix in (".parquet", ".arrow", ".jsonl", ".json", ".csv")]
            if not files:
                raise DataError(f"data.hf.name {p}: no data files (.parquet/.jsonl/.json/.csv/.arrow) found")
            builder = {".parquet": "parquet", ".arrow": "arrow", ".jsonl": "json", ".json": "json", ".csv": "csv"}[
                Path(files[0]).suffix]
            base = split.split("[")[0]
            return datasets.load_dataset(builder, data_files={base: files}, split=split)
        return datasets.load_dataset(str(p), config_name, split=split)
    if name.startswith((".", "/", "~")):
        raise FileNotFoundError(f"data.hf.name: file not found: {p}")
    offline = _env_offline()
    try:
        with _offline_mode(offline):
            return datasets.load_dataset(name, config_name, split=split)
    except Exception as e:  # noqa: BLE001 - classify, then re-raise with a clear message
        text = f"{type(e).__name__}: {e}"
        network = any(k in text for k in ("ConnectionError", "Couldn't reach", "offline", "Offline",
                                          "Max retries", "Temporary failure", "Network", "timed out"))
        if offline or network:
            raise HubUnreachableError(
                f"data.hf.name {name!r}: the Hugging Face hub is unreachable ({text.splitlines()[0][:200]}). "
                "Use a local data set directory or Parquet files for data.hf.name, set data.source=jsonl "
                "or data.source=synthetic, or run where the hub can be reached."
            ) from None
        raise DataError(f"data.hf.name {name!r}: load_dataset failed: {text.splitlines()[0][:300]}") from e


def _image_bytes(value: Any, base: Path | None) -> tuple[bytes | None, str]:
    """(bytes, file suffix) of an HF image cell: {bytes, path}, bytes, a path, or a PIL image."""
    if value is None:
        return None, ""
    if isinstance(value, dict):
        if value.get("bytes"):
            return bytes(value["bytes"]), Path(value.get("path") or "x.img").suffix or ".img"
        value = value.get("path")
    if isinstance(value, (bytes, bytearray)):
        return bytes(value), ".img"
    if isinstance(value, str):
        if looks_inline(value):
            data = value.split(",", 1)[1] if value.startswith("data:") else value
            try:
                return base64.b64decode(data, validate=False), ".img"
            except ValueError:
                return None, ""
        p = Path(value)
        if not p.is_absolute() and base is not None:
            p = base / p
        return (p.read_bytes(), p.suffix) if p.is_file() else (None, "")
    if hasattr(value, "save"):  # PIL image
        buf = io.BytesIO()
        value.save(buf, format=value.format or "PNG")
        return buf.getvalue(), "." + (value.format or "png").lower()
    return None, ""


def _hf(cfg: DataConfig, lake: Path, seed: int) -> RawDataset:
    import datasets

    c = cfg.hf
    fields = ["image", "text"] if c.kind == "caption" else ["image", "question", "answer"]
    mapping = {f: c.columns.get(f, f) for f in fields}
    unknown = sorted(set(c.columns) - set(fields))
    if unknown:
        raise DataError(f"data.hf.columns: unknown field(s) {unknown} for kind {c.kind!r}; use {fields}")
    params = {"source": "hf", "config": c.model_dump(mode="json")}
    p = Path(c.name).expanduser()
    ds = None
    if p.exists():
        h = hashlib.sha256(stable_hash(params).encode())
        for f in tracked(_local_files(p), "download: hashing inputs", unit="file"):
            h.update(f.relative_to(p).as_posix().encode() if p.is_dir() else f.name.encode())
            _hash_file_into(h, f)
        fingerprint = h.hexdigest()[:16]
    else:
        ds = _load_hf(c.name, c.config_name, c.split)
        fingerprint = stable_hash({**params, "hf_fingerprint": getattr(ds, "_fingerprint", None)})
    final_manifest = read_json(lake / "raw" / "hf" / fingerprint / RAW_MANIFEST)
    if final_manifest is None and ds is None:
        ds = _load_hf(c.name, c.config_name, c.split)
    missing = [f"{f} -> {col!r}" for f, col in mapping.items() if ds is not None and col not in ds.column_names]
    if missing:
        raise DataError(f"data.hf.columns: column(s) not in {c.name} ({', '.join(missing)}); "
                        f"available: {ds.column_names}")
    if ds is not None and isinstance(ds.features.get(mapping["image"]), datasets.Image):
        ds = ds.cast_column(mapping["image"], datasets.Image(decode=False))
    base = p if p.is_dir() else p.parent if p.exists() else None
    out_name = CAPTIONS if c.kind == "caption" else VQA

    def build(tmp: Path) -> dict:
        img_dir = tmp / IMAGE_DIR / "0"
        img_dir.mkdir(parents=True)
        with open(tmp / out_name, "w", encoding="utf-8") as f:
            for i, row in enumerate(tracked(_rows(ds, mapping), "download: writing rows", "row", total=len(ds))):
                data, suffix = _image_bytes(row.get("image"), base)
                out = {k: v for k, v in row.items() if k != "image"}
                out["image"] = None
                if data is not None:
                    name = f"{i:07d}{suffix if suffix and len(suffix) <= 6 else '.img'}"
                    (img_dir / name).write_bytes(data)
                    out["image"] = name
                f.write(json.dumps(out, ensure_ascii=False, default=str) + "\n")
        return {"image_roots": {out_name: f"{IMAGE_DIR}/0"}, "inputs": {"name": c.name, "split": c.split}}

    return _commit("hf", lake, fingerprint, build)


def _rows(ds, mapping: dict[str, str]) -> Iterable[dict]:
    for row in ds:
        yield {field: row.get(col) for field, col in mapping.items()}
