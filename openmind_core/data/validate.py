"""Row validation for the JSONL -> Parquet conversion: every way a row can be bad, by name.

A row is checked in three layers, each raising ``Problem(reason, detail)``:

1. bytes of the line: invalid UTF-8, a byte-order mark, a CRLF line end (``check_encoding``);
2. the JSON object: malformed JSON, not an object, a missing field, a wrong type, empty or
   oversized text (``parse_row``); the image reference: a path escaping its root (``../``),
   a missing file, undecodable base64 (``resolve_image``);
3. the image bytes: too many bytes or pixels, unreadable, truncated (``inspect_image``; runs in
   worker processes when there are many images).

Duplicates (same content hash) are found by the converter.  ``REASONS`` lists every reason.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import json
import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from PIL import Image

REASONS: dict[str, str] = {
    "invalid_utf8": "the line is not valid UTF-8",
    "bom": "the line starts with a byte-order mark (save the file as UTF-8 without BOM)",
    "crlf": "the line ends with CRLF (convert the file to LF line endings)",
    "malformed_json": "the line is not valid JSON",
    "not_an_object": "the line is JSON but not an object",
    "missing_field": "a required field is missing or null",
    "wrong_type": "a field has the wrong type",
    "empty_text": "a text field is empty",
    "text_too_long": "a text field is longer than data.max_text_chars",
    "path_escape": "the image path escapes the data set's folder",
    "image_missing": "the image file does not exist",
    "image_unreadable": "the image cannot be decoded",
    "image_truncated": "the image file is truncated",
    "image_too_large": "the image exceeds data.max_image_bytes or data.max_image_pixels",
    "duplicate": "the same content (text and image) appeared earlier",
}

FIELDS = {"caption": ("image", "text"), "vqa": ("image", "question", "answer")}
TEXT_FIELDS = {"caption": ("text",), "vqa": ("question", "answer")}
BOM = b"\xef\xbb\xbf"


class Problem(Exception):
    """Why one row is quarantined: a reason from ``REASONS`` and a detail for humans."""

    def __init__(self, reason: str, detail: str) -> None:
        assert reason in REASONS, reason
        super().__init__(reason, detail)  # both in args, so it pickles across worker processes
        self.reason = reason
        self.detail = detail

    def __str__(self) -> str:
        return f"{self.reason}: {self.detail}"


@dataclass(frozen=True)
class ImageRef:
    """Where a row's image is: a file in the raw directory, or bytes given inline."""

    path: str | None = None
    data: bytes | None = None

    @property
    def key(self) -> str:
        return self.path if self.path is not None else "inline:" + hashlib.sha256(self.data or b"").hexdigest()


@dataclass(frozen=True)
class ImageInfo:
    sha256: str
    width: int
    height: int
    format: str


# --------------------------------------------------------------------------- lines


def split_lines(data: bytes) -> list[tuple[int, bytes]]:
    """(1-based line number, raw bytes without the ``\\n``) for every non-blank line."""
    return [(i, line) for i, line in enumerate(data.split(b"\n"), 1) if line.strip()]


def check_encoding(raw: bytes) -> str:
    """The decoded line, or ``Problem`` for a BOM, a CRLF ending or invalid UTF-8."""
    if raw.startswith(BOM):
        raise Problem("bom", "UTF-8 byte-order mark at the start of the line")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise Problem("invalid_utf8", f"byte {e.start}: {raw[e.start:e.start + 4]!r} is not UTF-8") from None
    if text.endswith("\r"):
        raise Problem("crlf", "the line ends with \\r\\n")
    return text


def parse_row(text: str, kind: str, max_text_chars: int) -> dict[str, Any]:
    """The validated object of one JSONL line (text fields stripped)."""
    try:
        row = json.loads(text)
    except ValueError as e:
        raise Problem("malformed_json", str(e)) from None
    if not isinstance(row, dict):
        raise Problem("not_an_object", f"got a JSON {type(row).__name__}")
    missing = [f for f in FIELDS[kind] if row.get(f) is None]
    if missing:
        raise Problem("missing_field", f"{kind} rows need {list(FIELDS[kind])}; missing {missing}")
    out: dict[str, Any] = {"image": row["image"]}
    for f in TEXT_FIELDS[kind]:
        value = row[f]
        if not isinstance(value, str):
            raise Problem("wrong_type", f"{f!r} must be a string, got {type(value).__name__}")
        value = value.strip()
        if not value:
            raise Problem("empty_text", f"{f!r} is empty")
        if len(value) > max_text_chars:
            raise Problem("text_too_long", f"{f!r} has {len(value)} characters > data.max_text_chars={max_text_chars}")
        out[f] = value
    lang = row.get("language")
    out["language"] = lang if isinstance(lang, str) and lang else detect_language(" ".join(out[f] for f in TEXT_FIELDS[kind]))
    return out


_CJK = re.compile("[\u4e00-\u9fff]")


def detect_language(text: str) -> str:
    """'zh' when the text holds CJK characters, else 'en'."""
    return "zh" if _CJK.search(text) else "en"


# --------------------------------------------------------------------------- image references


def _decode_base64(text: str) -> bytes:
    payload = text.split(",", 1)[1] if text.startswith("data:") else text
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError) as e:
        raise Problem("image_unreadable", f"inline image is not valid base64 ({e})") from None


def resolve_image(value: Any, root: Path, absolute: dict[str, str], problems: dict[str, str],
                  raw_root: Path) -> ImageRef:
    """Turn a row's ``image`` value into an ``ImageRef`` inside the raw directory.

    ``value``: a path relative to the JSONL's folder (copied under ``root``), an absolute path
    (copied, listed in ``absolute``), a data URI / base64 string, or ``{"bytes": base64 or list of
    ints, "path": ...}``.  ``problems``: what the download found for a path (e.g. a symlink out).
    """
    from openmind_core.data.sources import looks_inline  # avoid an import cycle at module load

    if isinstance(value, dict):
        data = value.get("bytes")
        if isinstance(data, str) and data:
            return ImageRef(data=_decode_base64(data))
        if isinstance(data, list) and data and all(isinstance(b, int) and 0 <= b < 256 for b in data):
            return ImageRef(data=bytes(data))
        if data not in (None, "", []):
            raise Problem("wrong_type", f"image.bytes must be base64 text or a list of byte values, got {type(data).__name__}")
        value = value.get("path")
        if value is None:
            raise Problem("missing_field", "image object has neither 'bytes' nor 'path'")
    if not isinstance(value, str):
        raise Problem("wrong_type", f"'image' must be a path, base64 text or {{bytes, path}}, got {type(value).__name__}")
    if not value.strip():
        raise Problem("empty_text", "'image' is empty")
    if looks_inline(value):
        return ImageRef(data=_decode_base64(value))
    if value in problems:
        raise Problem(problems[value], f"{value!r} resolves outside the JSONL's folder")
    if os.path.isabs(value):
        if value not in absolute:
            raise Problem("image_missing", f"{value} does not exist")
        return ImageRef(path=str(raw_root / absolute[value]))
    norm = PurePosixPath(os.path.normpath(value.replace("\\", "/")))
    if norm.parts and norm.parts[0] == "..":
        raise Problem("path_escape", f"{value!r} escapes the JSONL's folder")
    p = root / norm
    if not p.is_file():
        raise Problem("image_missing", f"{value!r} not found next to the JSONL file")
    return ImageRef(path=str(p))


# --------------------------------------------------------------------------- image bytes


def inspect_image(data: bytes, max_bytes: int, max_pixels: int) -> ImageInfo:
    """sha256, size and format of fully decodable image bytes, else ``Problem``."""
    if len(data) > max_bytes:
        raise Problem("image_too_large", f"{len(data)} bytes > data.max_image_bytes={max_bytes}")
    if not data:
        raise Problem("image_unreadable", "the image is empty (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            w, h = img.size
            if w * h > max_pixels:
                raise Problem("image_too_large", f"{w}x{h} = {w * h} pixels > data.max_image_pixels={max_pixels}")
            fmt = img.format or "unknown"
            img.load()
    except Problem:
        raise
    except Image.DecompressionBombError as e:
        raise Problem("image_too_large", str(e)) from None
    except Image.UnidentifiedImageError:
        raise Problem("image_unreadable", f"not a recognised image format (starts with {data[:8]!r})") from None
    except (OSError, SyntaxError, ValueError) as e:
        text = str(e)
        if "truncated" in text.lower() or "broken data stream" in text.lower() or "unexpected end" in text.lower():
            raise Problem("image_truncated", text) from None
        raise Problem("image_unreadable", f"{type(e).__name__}: {text}") from None
    return ImageInfo(hashlib.sha256(data).hexdigest(), w, h, fmt)


def load_and_inspect(job: tuple[ImageRef, int, int]) -> tuple[bytes, ImageInfo] | Problem:
    """Worker body: read (if a file) and inspect one image; a ``Problem`` is returned, not raised."""
    ref, max_bytes, max_pixels = job
    try:
        if ref.data is not None:
            data = ref.data
        else:
            size = os.path.getsize(ref.path)
            if size > max_bytes:
                raise Problem("image_too_large", f"{size} bytes > data.max_image_bytes={max_bytes}")
            with open(ref.path, "rb") as f:
                data = f.read()
        return data, inspect_image(data, max_bytes, max_pixels)
    except Problem as p:
        return p
    except OSError as e:
        return Problem("image_missing", f"{ref.path}: {e}")
