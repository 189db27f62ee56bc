"""The ``hf`` source: ``datasets.load_dataset`` on a hub id, a local data set directory
(``save_to_disk`` or data files) or Parquet files, with a column mapping."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from schemas.artifacts import RawDataset
from schemas.config import DataConfig

from openmind_core.data.images import looks_inline
from openmind_core.data.lake import RAW_MANIFEST, DataError, HubUnreachableError, read_json, stable_hash
from openmind_core.data.sources.raw import CAPTIONS, IMAGE_DIR, VQA, commit, hash_file_into
from openmind_core.progress import tracked


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


def download(cfg: DataConfig, lake: Path, seed: int) -> RawDataset:
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
            hash_file_into(h, f)
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

    return commit("hf", lake, fingerprint, build)


def _rows(ds, mapping: dict[str, str]) -> Iterable[dict]:
    for row in ds:
        yield {field: row.get(col) for field, col in mapping.items()}
