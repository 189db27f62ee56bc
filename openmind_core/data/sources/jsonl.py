"""The ``jsonl`` source: the user's JSONL files copied byte for byte, with the images they name.

``data.jsonl.captions`` / ``vqa`` / ``conversations`` (LLaVA ``conversations`` or ``messages`` rows,
see ``conversations.py``).  Image paths are relative to the JSONL file (``/`` or ``\\``
separators) or absolute; referenced images are copied into the raw directory, paths that escape
the JSONL's folder are not, nor Windows absolute paths (``D:\\...``) on another system
(conversion quarantines them, naming the path).  Inline images (base64 / data URIs) stay in the
JSONL.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pa_json

from schemas.artifacts import RawDataset
from schemas.config import DataConfig

from openmind_core.data.image_checks import looks_inline, windows_absolute
from openmind_core.data.layout import stable_hash
from openmind_core.data.sources.raw import CAPTIONS, CONVERSATIONS, IMAGE_DIR, VQA, commit, hash_file_into, is_within, require
from openmind_core.progress import tracked


def scan_image_refs(jsonl: Path) -> list[str]:
    """The distinct image path strings a JSONL references, in first-seen order (tolerant: bad
    lines are conversion's business).  A file ``pyarrow.json`` reads with string images is
    scanned a block at a time; any other goes line by line."""
    refs: dict[str, None] = {}
    try:
        for batch in pa_json.open_json(jsonl, parse_options=_IMAGE_ONLY):  # a block at a time
            refs.update(dict.fromkeys(pc.unique(batch.column("image").drop_null()).to_pylist()))
            images = batch.column("images")
            if images.null_count < len(images):  # conversation rows: "images": [path]
                refs.update(dict.fromkeys(pc.unique(pc.list_flatten(images).drop_null()).to_pylist()))
        return [v for v in refs if v and not looks_inline(v)]
    except pa.ArrowInvalid:
        refs.clear()  # an image given as an object, a malformed line, a BOM, ...: line by line
    with open(jsonl, "rb") as f:
        for raw in f:
            try:
                row = json.loads(raw.decode("utf-8", errors="replace").lstrip("\ufeff"))
            except ValueError:
                continue
            if not isinstance(row, dict):
                continue
            image = row.get("image")
            values = (image if isinstance(image, list) else [image]) + (
                row["images"] if isinstance(row.get("images"), list) else [])  # LLaVA-OneVision: "image": [a, b]
            for value in values:
                if isinstance(value, dict):
                    value = value.get("path") if not value.get("bytes") else None
                if isinstance(value, str) and value and not looks_inline(value):
                    refs[value] = None
    return list(refs)


_IMAGE_ONLY = pa_json.ParseOptions(explicit_schema=pa.schema([("image", pa.string()), ("images", pa.list_(pa.string()))]),
                                   unexpected_field_behavior="ignore")


def _plan_jsonl_images(jsonl: Path, root_key: str) -> tuple[dict[str, Path], dict[str, str], dict[str, str]]:
    """For one JSONL: (raw-relative destination -> source file, absolute-path map, problems)."""
    base = jsonl.resolve().parent
    copies: dict[str, Path] = {}
    abs_map: dict[str, str] = {}
    problems: dict[str, str] = {}
    for ref in scan_image_refs(jsonl):
        if windows_absolute(ref):
            continue  # not a path on this system: conversion quarantines it, naming it
        p = Path(ref) if os.sep == "\\" or Path(ref).is_absolute() else Path(ref.replace("\\", "/"))
        if p.is_absolute():
            if p.is_file():
                dest = f"{IMAGE_DIR}/abs/{hashlib.sha256(ref.encode()).hexdigest()[:16]}{p.suffix.lower()}"
                copies[dest] = p
                abs_map[ref] = dest
            continue
        target = (base / p).resolve()
        if not is_within(target, base):
            problems[ref] = "path_escape"  # includes symlinks pointing outside
            continue
        if target.is_file():
            copies[f"{root_key}/{target.relative_to(base).as_posix()}"] = target
    return copies, abs_map, problems


def download(cfg: DataConfig, lake: Path, seed: int) -> RawDataset:
    inputs = {CAPTIONS: cfg.jsonl.captions, VQA: cfg.jsonl.vqa, CONVERSATIONS: cfg.jsonl.conversations}
    paths = {name: require(p, f"data.jsonl.{name.split('.')[0]}") for name, p in inputs.items() if p}
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
        hash_file_into(h, paths[name])
    for dest in tracked(sorted(copies), "download: hashing inputs", unit="file"):
        h.update(dest.encode())
        hash_file_into(h, copies[dest])
    fingerprint = h.hexdigest()[:16]

    def build(tmp: Path) -> dict:
        for name, p in paths.items():
            shutil.copyfile(p, tmp / name)  # byte for byte
        for dest, src in tracked(list(copies.items()), "download: copying images", unit="file"):
            (tmp / dest).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, tmp / dest)
        return {"image_roots": roots, "absolute_images": abs_map, "image_problems": problems,
                "inputs": {name: str(p.resolve()) for name, p in paths.items()}}

    return commit("jsonl", lake, fingerprint, build)

