"""The ``hf`` source: ``datasets.load_dataset`` on a hub id, a local data set directory
(``save_to_disk`` or data files) or Parquet files, with a column mapping.

``data.hf`` is one data set or a list of them, each with its ``name``, ``config_name``, ``split``,
``kind`` and ``columns``; column paths may be nested (``sentences.raw``, ``answers.answer``) and
``hf_presets`` fills them in for the hub data sets the guide uses.  A hub id that cannot be
reached raises ``HubUnreachableError`` naming it."""

from __future__ import annotations

import base64
import hashlib
import io
import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from schemas.artifacts import RawDataset
from schemas.config import DataConfig

from openmind_core.data.image_checks import looks_inline
from openmind_core.data.layout import RAW_MANIFEST, DataError, HubUnreachableError, read_json, stable_hash
from openmind_core.data.sources.hf_presets import OPTIONAL, HFSpec, resolve
from openmind_core.data.sources.raw import IMAGE_DIR, commit, hash_file_into, table_name
from openmind_core.hub import hub_access
from openmind_core.progress import tracked


def _local_files(p: Path) -> list[Path]:
    return [p] if p.is_file() else sorted(f for f in p.rglob("*") if f.is_file() and ".cache" not in f.parts)


def _load_hf(name: str, config_name: str | None, split: str):
    """``datasets`` data set for a hub id, a save_to_disk directory, a data directory or Parquet files."""
    import datasets  # start-up cost: datasets loads only for the hf source

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
    try:
        with hub_access(name) as unreachable:  # unreachable: offline mode, the local cache only
            return datasets.load_dataset(name, config_name, split=split)
    except Exception as e:  # noqa: BLE001 - classify, then re-raise with a clear message
        text = f"{type(e).__name__}: {e}"
        network = any(k in text for k in ("ConnectionError", "Couldn't reach", "offline", "Offline",
                                          "Max retries", "Temporary failure", "Network", "timed out"))
        if unreachable or network:
            why = f"{unreachable}; not in the local cache" if unreachable else text.splitlines()[0][:200]
            raise HubUnreachableError(
                f"data.hf.name {name!r}: the Hugging Face hub is unreachable ({why}). "
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
    """Every data set of ``data.hf`` (one mapping or a list) into one raw directory: a JSONL a data
    set (``captions.jsonl``, ``captions-1.jsonl``, ``vqa.jsonl``, ...) and its images."""
    wheres = [where for where, _ in cfg.hf_sources()]
    specs = [resolve(s.name, s.config_name, s.split, s.kind, s.columns, where) for where, s in cfg.hf_sources()]
    h = hashlib.sha256(stable_hash({"source": "hf", "sets": [s.describe() for s in specs]}).encode())
    loaded: list = []
    for spec in specs:
        p = Path(spec.name).expanduser()
        if p.exists():
            for f in tracked(_local_files(p), "download: hashing inputs", unit="file"):
                h.update(f.relative_to(p).as_posix().encode() if p.is_dir() else f.name.encode())
                hash_file_into(h, f)
            loaded.append(None)
        else:
            ds = _load_hf(spec.name, spec.config_name, spec.split)
            h.update(str(getattr(ds, "_fingerprint", None)).encode())
            loaded.append(ds)
    fingerprint = h.hexdigest()[:16]
    done = read_json(lake / "raw" / "hf" / fingerprint / RAW_MANIFEST) is not None
    names: dict[str, int] = {}
    tables: list[tuple[str, HFSpec, Any, Path | None]] = []
    for i, (spec, ds) in enumerate(zip(specs, loaded)):
        p = Path(spec.name).expanduser()
        if not done:
            ds = ds if ds is not None else _load_hf(spec.name, spec.config_name, spec.split)
            ds = _checked(ds, spec, wheres[i])
        n = names[spec.kind] = names.get(spec.kind, -1) + 1
        tables.append((table_name(spec.kind, n), spec, ds, p if p.is_dir() else p.parent if p.exists() else None))

    def build(tmp: Path) -> dict:
        for i, (name, spec, ds, base) in enumerate(tables):
            img_dir = tmp / IMAGE_DIR / str(i)
            img_dir.mkdir(parents=True)
            with open(tmp / name, "w", encoding="utf-8") as f:
                for j, row in enumerate(tracked(_rows(ds, spec.columns), f"download: {spec.name}", "row", total=len(ds))):
                    data, suffix = _image_bytes(row.pop("image", None), base)
                    image = None
                    if data is not None:
                        image = f"{j:07d}{suffix if suffix and len(suffix) <= 6 else '.img'}"
                        (img_dir / image).write_bytes(data)
                    for out in _expanded(row, spec.kind):
                        f.write(json.dumps({**out, "image": image}, ensure_ascii=False, default=str) + "\n")
        return {"tables": [name for name, *_ in tables],
                "image_roots": {name: f"{IMAGE_DIR}/{i}" for i, (name, *_) in enumerate(tables)},
                "inputs": {name: spec.name for name, spec, *_ in tables},
                "hf": [{"table": name, **spec.describe()} for name, spec, *_ in tables]}

    return commit("hf", lake, fingerprint, build)


def _checked(ds, spec: HFSpec, where: str):
    """``ds`` with its image column left undecoded; every mapped column must exist (``answers`` may not)."""
    import datasets  # start-up cost: datasets loads only for the hf source

    missing = [f"{f} -> {col!r}" for f, col in spec.columns.items()
               if col.split(".")[0] not in ds.column_names and col not in ds.column_names and f not in OPTIONAL]
    if missing:
        raise DataError(f"{where}.columns: column(s) not in {spec.name} ({', '.join(missing)}); "
                        f"available: {ds.column_names}")
    image = spec.columns["image"]
    if isinstance(ds.features.get(image), datasets.Image):
        ds = ds.cast_column(image, datasets.Image(decode=False))
    return ds


def _get(row: dict, path: str) -> Any:
    """The value at a column path: ``sentences.raw`` walks into a struct, and into every element of
    a list (``answers.answer`` of a list of {answer, ...} is the list of answers)."""
    if path in row:
        return row[path]
    value: Any = row
    for part in path.split("."):
        if isinstance(value, dict):
            value = value.get(part)
        elif isinstance(value, list):
            value = [v.get(part) if isinstance(v, dict) else None for v in value]
        else:
            return None
    return value


def _rows(ds, mapping: dict[str, str]) -> Iterable[dict]:
    for row in ds:
        yield {field: _get(row, col) for field, col in mapping.items()}


def _expanded(row: dict, kind: str) -> Iterator[dict]:
    """The JSONL rows of one data set row: a caption row per caption when ``text`` is a list (an
    image's five COCO captions); a VQA row keeps its list of answers."""
    text = row.get("text")
    if kind == "caption" and isinstance(text, list):
        for t in text:
            yield {**row, "text": t}
        return
    answers = row.get("answers")
    if kind == "vqa" and answers is not None and not isinstance(answers, list):
        row = {**row, "answers": [answers]}
    yield row
