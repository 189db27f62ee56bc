"""Conversation rows (``data.jsonl.conversations``): LLaVA's ``conversations`` form or the ``messages`` form.

Two shapes are read, detected once per file from its first JSON object (``detect_format``):

- LLaVA: ``{"id", "image"?, "conversations": [{"from": "human" | "gpt" | "system", "value": ...}]}``
  (LLaVA-Pretrain, llava_instruct, ShareGPT4V);
- messages: ``{"messages": [{"role": "user" | "assistant" | "system", "content": ...}], "image"? |
  "images"?: [paths]}`` (LLaMA-Factory, ms-swift).

Either form may name several images (``"image": ["a.jpg", "b.jpg"]``, LLaVA-OneVision's form, or
``"images": [...]``), at most ``data.max_images_per_row``.

``parse_conversation`` normalises a row to turns ``{role, content}`` with roles ``system`` (optional,
first only), ``user``, ``assistant``, alternating from ``user`` and ending with ``assistant``.  A
user turn keeps the literal ``<image>`` tag where an image's tokens go, one tag per image, in
order: the number of tags must equal the row's images; a row without an image is a text-only row.  Every assistant turn
is a training target, user turns are masked (the training side's business).  Bad rows raise
``Problem``: ``roles_out_of_order``, ``empty_turn``, ``image_tag_mismatch``, ``image_tag_in_answer``,
``too_many_images``, ``missing_field``, ``wrong_type``, ``text_too_long``.
"""

from __future__ import annotations

import json
from typing import Any

from openmind_core.data.validate import IMAGE_TAG, Problem, _SURROGATE, detect_language, image_list, load_object

FORMATS = {"llava": ("conversations", "from", "value"), "messages": ("messages", "role", "content")}
ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}


def detect_format(head: bytes) -> str:
    """'llava' or 'messages', from the first JSON object of a file's first lines (default 'llava')."""
    for line in head.split(b"\n"):
        try:
            row = json.loads(line.decode("utf-8", errors="replace").lstrip("\ufeff"))
        except ValueError:
            continue
        if isinstance(row, dict):
            if "messages" in row and "conversations" not in row:
                return "messages"
            if "conversations" in row:
                return "llava"
    return "llava"


def parse_conversation(text: str, fmt: str, max_text_chars: int, max_images: int = 8) -> dict[str, Any]:
    """``{"images": [values], "conversation": [{role, content}], "language"}`` of one line."""
    row = load_object(text)
    key, role_key, text_key = FORMATS[fmt]
    turns = row.get(key)
    if turns is None:
        raise Problem("missing_field", f"this file is in the {fmt} form: rows need {key!r} "
                      f"(a list of {{{role_key}, {text_key}}})")
    if not isinstance(turns, list) or not turns:
        raise Problem("wrong_type" if not isinstance(turns, list) else "empty_turn",
                      f"{key!r} must be a non-empty list of turns")
    images = image_list(row, max_images)
    out: list[dict[str, str]] = []
    for i, turn in enumerate(turns, 1):
        if not isinstance(turn, dict):
            raise Problem("wrong_type", f"turn {i} must be an object {{{role_key}, {text_key}}}, got {type(turn).__name__}")
        role, content = turn.get(role_key), turn.get(text_key)
        if not isinstance(role, str) or role.lower() not in ROLES:
            raise Problem("wrong_type", f"turn {i}: {role_key}={role!r} is not one of {sorted(ROLES)}")
        if content is None:
            raise Problem("empty_turn", f"turn {i} ({role}) has no {text_key!r}")
        if not isinstance(content, str):
            raise Problem("wrong_type", f"turn {i}: {text_key!r} must be a string, got {type(content).__name__}")
        content = content.strip()
        if not content:
            raise Problem("empty_turn", f"turn {i} ({role}) is empty")
        if len(content) > max_text_chars:
            raise Problem("text_too_long", f"turn {i} has {len(content)} characters > data.max_text_chars={max_text_chars}")
        if _SURROGATE.search(content):
            raise Problem("invalid_utf8", f"turn {i} holds a lone surrogate escape (\\ud800-\\udfff), not UTF-8 text")
        out.append({"role": ROLES[role.lower()], "content": content})
    _check_order(out)
    tags = 0
    for i, turn in enumerate(out, 1):
        n = turn["content"].count(IMAGE_TAG)
        if n and turn["role"] != "user":
            raise Problem("image_tag_in_answer", f"turn {i} ({turn['role']}) holds {IMAGE_TAG}")
        tags += n
    if tags != len(images):
        raise Problem("image_tag_mismatch", f"{tags} {IMAGE_TAG} tag(s) for {len(images)} image(s): a row needs one "
                      f"tag per image, in a user turn, in the images' order (a text-only row has none)")
    lang = row.get("language")
    if not (isinstance(lang, str) and lang and not _SURROGATE.search(lang)):
        lang = detect_language(" ".join(t["content"] for t in out))
    return {"images": images, "conversation": out, "language": lang}


def _check_order(turns: list[dict[str, str]]) -> None:
    roles = [t["role"] for t in turns]
    body = roles[1:] if roles[0] == "system" else roles
    expected = ["user", "assistant"] * ((len(body) + 1) // 2)
    if not body or body != expected[:len(body)] or body[-1] != "assistant":
        raise Problem("roles_out_of_order", f"roles {roles}: expected [system,] user, assistant, ..., ending with assistant")


def as_json(turns: list[dict[str, str]]) -> str:
    """The turns as canonical JSON: what the content hash of a conversation row covers."""
    return json.dumps([[t["role"], t["content"]] for t in turns], ensure_ascii=False, separators=(",", ":"))
