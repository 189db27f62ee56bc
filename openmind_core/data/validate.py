"""Row validation for the JSONL -> Parquet conversion: every way a row can be bad, by name.

A row is checked in three layers, each raising ``Problem(reason, detail)``:

1. bytes of the line: invalid UTF-8, a byte-order mark inside the file (``check_encoding``).  A
   file's own format is not a bad row: the reader drops a leading BOM and turns CRLF line ends
   into LF before any check, and counts both;
2. the JSON object: malformed JSON, not an object, a missing field, a wrong type, empty or
   oversized text, a literal ``<image>`` in a caption or VQA text (``parse_row``; conversation
   rows: ``conversations.parse_conversation``); the image reference: a path escaping its root
   (``../``, ``..\\``), a Windows absolute path that does not exist here, a missing file,
   undecodable base64 (``images.resolve_image``);
3. the image bytes: too many bytes or pixels, unreadable, truncated (``images.inspect_image``;
   runs in worker processes when there are many images).

Layers 1 and 2 have two implementations that must agree on every row: the line-by-line one
above (``check_encoding`` + ``parse_row``), which names the reason, and a vectorised fast path
(``parse_block``) that parses a clean block of lines with ``pyarrow.json`` and checks the text
columns with ``pyarrow.compute``.  The fast path only ever *accepts* rows: a row it cannot prove
good (or a block it cannot parse) is handed to the line-by-line path, which decides its fate.
Conversation rows always go line by line.

A literal ``<image>`` in a caption, question or answer is quarantined (``image_tag_in_text``), not
escaped: the text is kept as the user wrote it or not at all, and nothing that looks like an image
placeholder reaches training outside a conversation's user turn.

Duplicates (same content hash) are found by the converter.  ``REASONS`` lists every reason.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pa_json

REASONS: dict[str, str] = {
    "invalid_utf8": "the line is not valid UTF-8",
    "bom": "a byte-order mark inside the file, not at its start (files pasted together?)",
    "malformed_json": "the line is not valid JSON",
    "not_an_object": "the line is JSON but not an object",
    "missing_field": "a required field is missing or null",
    "wrong_type": "a field has the wrong type",
    "empty_text": "a text field is empty",
    "text_too_long": "a text field is longer than data.max_text_chars",
    "image_tag_in_text": "a caption, question or answer holds a literal <image> (only conversations place images)",
    "path_escape": "the image path escapes the data set's folder",
    "windows_path": "the image path is a Windows absolute path (D:\\...) that does not exist on this machine",
    "image_missing": "the image file does not exist",
    "image_unreadable": "the image cannot be decoded",
    "image_truncated": "the image file is truncated",
    "image_too_large": "the image exceeds data.max_image_bytes or data.max_image_pixels",
    "duplicate": "the same content (text and image) appeared earlier",
    # conversation rows (conversations.py)
    "roles_out_of_order": "turns are not [system,] user, assistant, user, ..., assistant",
    "empty_turn": "a turn has no text",
    "image_tag_mismatch": "the number of <image> tags differs from the number of the row's images",
    "image_tag_in_answer": "an assistant turn holds an <image> tag",
    "too_many_images": "a row names more images than data.max_images_per_row",
}
IMAGE_TAG = "<image>"

FIELDS = {"caption": ("image", "text"), "vqa": ("image", "question", "answer")}  # ``answers`` may replace ``answer``
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



# --------------------------------------------------------------------------- lines


def check_encoding(raw: bytes) -> str:
    """The decoded line, or ``Problem`` for a BOM (the file's leading one is already gone) or
    invalid UTF-8.  A trailing ``\r`` is JSON whitespace."""
    if raw.startswith(BOM):
        raise Problem("bom", "UTF-8 byte-order mark at the start of a line inside the file")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise Problem("invalid_utf8", f"byte {e.start}: {raw[e.start:e.start + 4]!r} is not UTF-8") from None
    return text


def load_object(text: str) -> dict[str, Any]:
    """One JSONL line's JSON object, or ``Problem`` (malformed_json, not_an_object)."""
    try:
        row = json.loads(text)
    except ValueError as e:
        raise Problem("malformed_json", str(e)) from None
    if not isinstance(row, dict):
        raise Problem("not_an_object", f"got a JSON {type(row).__name__}")
    return row


def image_list(row: dict[str, Any], max_images: int) -> list[Any]:
    """A row's image values in order (path, base64 or ``{bytes, path}``): ``"image"`` (one value or a
    list, LLaVA-OneVision) or ``"images"`` (a list, LLaMA-Factory / ms-swift); ``[]`` for none.
    ``Problem`` when both are given, a value is null or empty, or there are more than ``max_images``."""
    image, images = row.get("image"), row.get("images")
    if images is not None and image not in (None, "", []):
        raise Problem("wrong_type", "both 'image' and 'images' are given; give one list of the row's images")
    values = images if images is not None else image
    if values is None or values == "":
        return []
    if not isinstance(values, list):
        values = [values]
    for i, v in enumerate(values, 1):
        if v is None or v == "" or isinstance(v, (list, int, float, bool)):
            raise Problem("wrong_type", f"image {i} of {len(values)} must be a path, base64 or {{bytes, path}}, "
                          f"got {v!r}")
    if len(values) > max_images:
        raise Problem("too_many_images", f"{len(values)} images > data.max_images_per_row={max_images}")
    return values


def parse_row(text: str, kind: str, max_text_chars: int, max_images: int = 8) -> dict[str, Any]:
    """The validated object of one JSONL line (text fields stripped; ``images``: the row's image
    values, one or more, in order)."""
    row = load_object(text)
    images = image_list(row, max_images)
    row = {**row, "image": images or None}
    answers = row.get("answers") if kind == "vqa" else None
    if isinstance(answers, list) and answers and all(isinstance(a, dict) and "answer" in a for a in answers):
        answers = [a["answer"] for a in answers]  # VQAv2's own layout: [{answer, answer_confidence, answer_id}]
    if answers is not None:
        if not isinstance(answers, list) or not all(isinstance(a, str) for a in answers):
            raise Problem("wrong_type", f"'answers' must be a list of strings, got {_type_of(answers)}")
        answers = [check_text(a, "answers", max_text_chars) for a in answers]
        if row.get("answer") is None and answers:
            row = {**row, "answer": most_common(answers)}
    missing = [f for f in FIELDS[kind] if row.get(f) is None]
    if missing:
        need = list(FIELDS[kind]) if kind != "vqa" else ["image", "question", "answer (or answers)"]
        raise Problem("missing_field", f"{kind} rows need {need}; missing {missing}")
    out: dict[str, Any] = {"images": images}
    for f in TEXT_FIELDS[kind]:
        value = row[f]
        if not isinstance(value, str):
            raise Problem("wrong_type", f"{f!r} must be a string, got {type(value).__name__}")
        out[f] = check_text(value, f, max_text_chars)
    if answers is not None:
        out["answers"] = answers
    lang = row.get("language")
    if isinstance(lang, str) and _SURROGATE.search(lang):
        raise Problem("invalid_utf8", "'language' holds a lone surrogate escape, not UTF-8 text")
    out["language"] = lang if isinstance(lang, str) and lang else detect_language(" ".join(out[f] for f in TEXT_FIELDS[kind]))
    return out


def check_text(value: str, name: str, max_text_chars: int, tag_ok: bool = False) -> str:
    """``value`` stripped, or ``Problem``: empty, too long, a lone surrogate, a literal ``<image>``."""
    value = value.strip()
    if not value:
        raise Problem("empty_text", f"{name!r} is empty")
    if len(value) > max_text_chars:
        raise Problem("text_too_long", f"{name!r} has {len(value)} characters > data.max_text_chars={max_text_chars}")
    if _SURROGATE.search(value):
        raise Problem("invalid_utf8", f"{name!r} holds a lone surrogate escape (\\ud800-\\udfff), not UTF-8 text")
    if not tag_ok and IMAGE_TAG in value:
        raise Problem("image_tag_in_text", f"{name!r} holds a literal {IMAGE_TAG}; only a conversation's user "
                      "turn may place the image")
    return value


def most_common(answers: list[str]) -> str:
    """The most frequent answer; ties go to the one given first."""
    counts: dict[str, int] = {}
    for a in answers:
        counts[a] = counts.get(a, 0) + 1
    return max(counts, key=counts.__getitem__)  # max keeps the first of equal counts


def _type_of(value: Any) -> str:
    return type(value).__name__ if not isinstance(value, list) else "a list holding " + ", ".join(
        sorted({type(v).__name__ for v in value}))


_CJK = re.compile("[\u4e00-\u9fff]")
_SURROGATE = re.compile("[\ud800-\udfff]")


def detect_language(text: str) -> str:
    """'zh' when the text holds CJK characters, else 'en'."""
    return "zh" if _CJK.search(text) else "en"


# --------------------------------------------------------------------------- the vectorised fast path

# every character ``str.isspace`` accepts (what ``str.strip()`` removes), as RE2 escapes
PY_WHITESPACE = ("\t\n\x0b\x0c\r\x1c\x1d\x1e\x1f \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005"
                 "\u2006\u2007\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000")


_CJK_RE2 = "[\\x{4e00}-\\x{9fff}]"
_LINE_START_WS = np.isin(np.arange(256), list(b"\n \t\x0b\x0c"))  # a line that may be blank starts so
_READ = pa_json.ReadOptions(use_threads=True, block_size=1 << 20)  # pieces parsed in parallel


@dataclass
class ParsedBlock:
    """A block of JSONL lines parsed at once: one table row per non-blank line.

    ``table`` has the ``image`` value, the text fields and the final ``language``; ``lines`` the
    1-based line number of each row; ``clean`` marks the rows that pass every text check of
    ``parse_row`` unchanged (texts need no stripping); the others must go through ``parse_row``.
    """

    table: pa.Table
    lines: np.ndarray
    clean: np.ndarray


def _schema(kind: str) -> pa.Schema:
    extra = [("answers", pa.list_(pa.string()))] if kind == "vqa" else []
    return pa.schema([(f, pa.string()) for f in FIELDS[kind]] + [("language", pa.string())] + extra)


_PARSE = {kind: pa_json.ParseOptions(explicit_schema=_schema(kind), unexpected_field_behavior="ignore")
          for kind in FIELDS}


def _text_ok(col, max_text_chars: int):
    """Texts ``check_text`` keeps unchanged: non-empty, not too long, nothing to strip, no ``<image>``."""
    n = pc.utf8_length(col)
    ok = pc.and_(pc.greater(n, 0), pc.less_equal(n, max_text_chars))
    # str.strip() would change the text when it starts or ends with whitespace
    ok = pc.and_(ok, pc.equal(pc.binary_length(pc.utf8_trim(col, characters=PY_WHITESPACE)), pc.binary_length(col)))
    ok = pc.and_(ok, pc.invert(pc.match_substring(col, IMAGE_TAG)))
    return pc.fill_null(ok, False)


def block_lines(block: bytes, first_line: int) -> np.ndarray | None:
    """Line numbers of the non-blank lines of a block with no ``\\r`` (None: it has some)."""
    if b"\r" in block:
        return None
    if not block:
        return np.empty(0, dtype=np.int64)
    buf = np.frombuffer(block, dtype=np.uint8)
    breaks = np.flatnonzero(buf == 10)
    starts = breaks[:-1] + 1 if buf[-1] == 10 else breaks + 1  # where every line but the first starts
    if not _LINE_START_WS[buf[0]] and not _LINE_START_WS[buf[starts]].any():  # no line is blank or starts blank
        return np.arange(first_line, first_line + len(starts) + 1, dtype=np.int64)
    return np.array([first_line + i for i, line in enumerate(block.split(b"\n")) if line.strip()], dtype=np.int64)


def parse_block(block: bytes, first_line: int, kind: str, max_text_chars: int) -> ParsedBlock | None:
    """The fast path for a block of whole lines, or None when the block must go line by line.

    None when a line has a BOM, a ``\\r`` or invalid UTF-8, when any line is not a JSON object
    with string fields (``pyarrow.json`` rejects the block), or when the rows do not map one to
    one onto the non-blank lines (two objects on one line).  Never rejects a row itself.
    """
    ascii_only = block.isascii()  # then no BOM and valid UTF-8, without looking further
    if not ascii_only and BOM in block:
        return None
    lines = block_lines(block, first_line)
    if lines is None or not len(lines):
        return None
    try:
        if not ascii_only:
            block.decode("utf-8")
        table = pa_json.read_json(pa.BufferReader(block), read_options=_READ, parse_options=_PARSE[kind])
    except (UnicodeDecodeError, pa.ArrowInvalid):
        return None
    if table.num_rows != len(lines):
        return None
    clean = pc.is_valid(table["image"])
    for f in TEXT_FIELDS[kind]:
        clean = pc.and_(clean, _text_ok(table[f], max_text_chars))
    clean = np.asarray(clean.to_numpy(zero_copy_only=False), dtype=bool)
    if kind == "vqa" and table["answers"].null_count < table.num_rows:  # every answer as check_text keeps it
        answers = table["answers"].combine_chunks()
        flat = pc.list_flatten(answers)
        if len(flat):
            bad = ~np.asarray(_text_ok(flat, max_text_chars).to_numpy(zero_copy_only=False), dtype=bool)
            clean[np.unique(pc.list_parent_indices(answers).to_numpy()[bad])] = False
    lang = table["language"]
    given = pc.fill_null(pc.greater(pc.utf8_length(lang), 0), False)
    if ascii_only:  # no CJK character anywhere
        detected: Any = "en"
    else:
        cjk = None
        for f in TEXT_FIELDS[kind]:
            hit = pc.fill_null(pc.match_substring_regex(table[f], _CJK_RE2), False)
            cjk = hit if cjk is None else pc.or_(cjk, hit)
        detected = pc.if_else(cjk, "zh", "en")
    language = pc.if_else(given, lang, detected)
    table = table.set_column(table.schema.get_field_index("language"), "language", language)
    return ParsedBlock(table, lines, clean)
