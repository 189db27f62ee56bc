"""Image references and image bytes: where a row's image is, and whether it decodes.

- ``resolve_image`` turns a row's ``image`` value (a relative or absolute path, a data URI or
  base64 text, ``{bytes, path}``) into an ``ImageRef`` inside the raw download, or ``Problem``;
- ``inspect_image`` / ``load_and_inspect`` read and fully decode it (sha256, size, format), in
  worker processes when a batch has many new images (``Pool``);
- ``ImageCache`` remembers every inspected image's verdict, so an image shared by many rows is
  decoded once.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import multiprocessing as mp
import os
import re
import warnings
from collections.abc import Collection
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from openmind_core.data.validate import Problem
from openmind_core.io import sha256_bytes

PARALLEL_MIN_IMAGES = 256  # new images in a batch below which worker start-up costs more than it saves
IMAGE_CACHE_KEYS = 1_000_000  # inspected images whose verdict is remembered (a few hundred bytes each)
IMAGE_CACHE_BYTES = 32 << 20  # and whose bytes are kept for later rows (others are read again: no decode)


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


# --------------------------------------------------------------------------- image references


def _decode_base64(text: str) -> bytes:
    payload = text.split(",", 1)[1] if text.startswith("data:") else text
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError) as e:
        raise Problem("image_unreadable", f"inline image is not valid base64 ({e})") from None


_WINDOWS_ABSOLUTE = re.compile(r"^(?:[A-Za-z]:[\\/]|\\\\[^\\])")  # D:\... or D:/..., \\server\share


def windows_absolute(value: str) -> bool:
    """True for a Windows absolute path (``D:\\data\\x.jpg``, ``\\\\server\\share``) on another
    system, where it names no file; on Windows such paths are ordinary absolute paths."""
    return os.name != "nt" and bool(_WINDOWS_ABSOLUTE.match(value))


def looks_inline(value: str) -> bool:
    """True for an image given in the text itself: a data URI or a long base64 string."""
    return value.startswith("data:") or (len(value) > 256 and "/" not in value[:64] and "." not in value[-8:])


def resolve_image(value: Any, root: Path, absolute: dict[str, str], problems: dict[str, str],
                  raw_root: Path, files: Collection[str] | None = None) -> ImageRef:
    """Turn a row's ``image`` value into an ``ImageRef`` inside the raw directory.

    ``value``: a path relative to the JSONL's folder (copied under ``root``), an absolute path
    (copied, listed in ``absolute``), a data URI / base64 string, or ``{"bytes": base64 or list of
    ints, "path": ...}``.  ``problems``: what the download found for a path (e.g. a symlink out).
    ``files``: the download's image files (full paths), which spares a ``stat`` per path.
    """
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
    if windows_absolute(value):
        raise Problem("windows_path", f"{value} is a Windows absolute path, which names no file on this "
                      "machine: give image paths relative to the JSONL's folder (e.g. images\\x.jpg)")
    if value in problems:
        raise Problem(problems[value], f"{value!r} resolves outside the JSONL's folder")
    if os.path.isabs(value):
        if value not in absolute:
            raise Problem("image_missing", f"{value} does not exist")
        return ImageRef(path=str(raw_root / absolute[value]))
    norm = os.path.normpath(value.replace("\\", "/"))
    if norm == ".." or norm.startswith("../"):
        raise Problem("path_escape", f"{value!r} escapes the JSONL's folder")
    p = str(root) if norm == "." else os.path.join(str(root), norm)
    try:
        found = p in files if files is not None else os.path.isfile(p)
    except ValueError:  # an embedded NUL or a lone surrogate
        found = False
    if not found:
        raise Problem("image_missing", f"{value!r} not found next to the JSONL file")
    return ImageRef(path=p)


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
            with open(ref.path, "rb", buffering=0) as f:
                size = os.fstat(f.fileno()).st_size
                if size > max_bytes:
                    raise Problem("image_too_large", f"{size} bytes > data.max_image_bytes={max_bytes}")
                data = f.read()
        return data, inspect_image(data, max_bytes, max_pixels)
    except Problem as p:
        return p
    except OSError as e:
        return Problem("image_missing", f"{ref.path}: {e}")


class ImageCache:
    """What inspecting each image found, by key: rows often share images, near or far apart.

    The verdict (``ImageInfo`` or ``Problem``) is kept for up to ``IMAGE_CACHE_KEYS`` images, the
    bytes only up to ``IMAGE_CACHE_BYTES``.  A known image whose bytes were not kept is read again
    and its sha256 checked: a read and a hash instead of a decode (COCO's five captions of an
    image lie far apart in its file).
    """

    def __init__(self) -> None:
        self.found: dict[str, ImageInfo | Problem] = {}
        self.data: dict[str, bytes] = {}
        self.size = 0

    def get(self, key: str, ref: ImageRef) -> tuple[bytes, ImageInfo] | Problem | None:
        """A known image's (bytes, info) or Problem; None when it must be inspected."""
        found = self.found.get(key)
        if found is None or isinstance(found, Problem):
            return found
        data = self.data.get(key, ref.data)
        if data is None:
            try:
                with open(ref.path or "", "rb") as fh:
                    data = fh.read()
            except OSError:
                return None
            if sha256_bytes(data) != found.sha256:
                return None
        return data, found

    def put(self, key: str, value: tuple[bytes, ImageInfo] | Problem) -> None:
        if len(self.found) < IMAGE_CACHE_KEYS:
            self.found[key] = value[1] if isinstance(value, tuple) else value
        if isinstance(value, tuple) and key in self.found and self.size + len(value[0]) <= IMAGE_CACHE_BYTES:
            self.data[key] = value[0]
            self.size += len(value[0])


class Pool:
    """Image decoding on ``workers`` cores: this process and ``workers - 1`` worker processes.

    The workers start only when a batch has enough new images to pay for them; this process
    decodes its own share meanwhile instead of waiting.
    """

    def __init__(self, workers: int) -> None:
        self.workers = workers
        self.pool: ProcessPoolExecutor | None = None

    def map(self, fn, jobs: list) -> list:
        if self.workers <= 1 or len(jobs) < PARALLEL_MIN_IMAGES:
            return [fn(j) for j in jobs]
        if self.pool is None:
            ctx = mp.get_context("fork") if "fork" in mp.get_all_start_methods() else mp.get_context("spawn")
            self.pool = ProcessPoolExecutor(max_workers=self.workers - 1, mp_context=ctx)
        own = len(jobs) // self.workers
        rest = jobs[own:]
        size = max(1, len(rest) // (4 * (self.workers - 1)))
        futures = [self.pool.submit(_map_chunk, fn, rest[i:i + size]) for i in range(0, len(rest), size)]
        out = [fn(j) for j in jobs[:own]]
        for fut in futures:
            out.extend(fut.result())
        return out

    def shutdown(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(cancel_futures=True)


def _map_chunk(fn, jobs: list) -> list:
    return [fn(j) for j in jobs]


