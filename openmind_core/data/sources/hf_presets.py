"""Built-in column mappings for hub data sets the guide uses: naming the id is enough.

``HuggingFaceM4/COCO`` (Karpathy splits of COCO 2014): config ``2014`` (the default) has one row
per caption, its text at ``sentences.raw`` (``sentences`` is a struct of tokens, raw, imgid,
sentid); config ``2014_captions`` gathers an image's captions in the list ``sentences_raw``, which
becomes one caption row per sentence.  ``HuggingFaceM4/VQAv2``: ``question``, the training target
``multiple_choice_answer``, and all ten ``answers`` (a list of {answer, answer_confidence,
answer_id}) kept as ``answers.answer``.  A source's own ``kind`` and ``columns`` override the preset.
A local copy (``save_to_disk`` or data files) in a folder ending in the hub id gets its preset too.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from openmind_core.data.layout import DataError

PRESETS: dict[str, dict] = {
    "HuggingFaceM4/COCO": {"kind": "caption", "columns": {"image": "image", "text": "sentences.raw"},
                           "configs": {"2014_captions": {"text": "sentences_raw"}}},
    "HuggingFaceM4/VQAv2": {"kind": "vqa", "columns": {"image": "image", "question": "question",
                                                      "answer": "multiple_choice_answer",
                                                      "answers": "answers.answer"}},
}
FIELDS = {"caption": ("image", "text"), "vqa": ("image", "question", "answer", "answers")}
OPTIONAL = {"answers"}  # fields whose column may be absent


def preset_of(name: str) -> dict:
    """The preset of a hub id, or of a local copy whose path ends in it (``.../HuggingFaceM4/COCO``)."""
    return PRESETS.get(name) or PRESETS.get("/".join(Path(name).parts[-2:])) or {}


@dataclass(frozen=True)
class HFSpec:
    """One data set to download: hub id or local path, config, split, row kind, field -> column path."""

    name: str
    config_name: str | None
    split: str
    kind: str
    columns: dict[str, str]

    def describe(self) -> dict:
        return {"name": self.name, "config_name": self.config_name, "split": self.split, "kind": self.kind,
                "columns": dict(sorted(self.columns.items()))}


def resolve(name: str, config_name: str | None, split: str, kind: str | None, columns: dict[str, str],
            where: str = "data.hf") -> HFSpec:
    """The data set's kind and full column mapping: the preset's (when ``name`` has one) under the
    user's own; an unknown field is an error naming it."""
    preset = preset_of(name)
    kind = kind or preset.get("kind") or "caption"
    mapping = {f: f for f in FIELDS[kind] if f not in OPTIONAL}
    if preset.get("kind") == kind:
        mapping.update(preset["columns"])
        mapping.update(preset.get("configs", {}).get(config_name or "", {}))
    unknown = sorted(set(columns) - set(FIELDS[kind]))
    if unknown:
        raise DataError(f"{where}.columns: unknown field(s) {unknown} for kind {kind!r}; use {list(FIELDS[kind])}")
    mapping.update(columns)
    return HFSpec(name, config_name, split, kind, mapping)
