"""The tokenizer stage: the one tokenizer of a run, prepared once and saved in ``<run>/tokenizer/``.

A pretrained tokenizer (``model.tokenizer.name_or_path``, or the LM's own) is loaded with the image
placeholder added; a chat template that writes today's date gets the date the run first started
instead, recorded in ``tokenizer/template_date.txt`` and the report.  Otherwise a byte-level BPE is
trained on the curated corpus's training split (captions, questions, answers, conversation turns,
the prompt templates).  Every later stage (the
smoke test, training, inference, torchrun's ranks) loads it from the directory the
``TokenizerReport`` names, so a resumed run keeps the tokenizer its checkpoints were trained with.
"""

from __future__ import annotations

from datetime import date
from pathlib import Path

from openmind_core.data.curated import read_rows
from openmind_core.io import staged_dir
from openmind_core.model.tokenizer import build_tokenizer, load_tokenizer
from openmind_core.chat_template import has_chat_template, pinned_date
from openmind_core.prompting import CAPTION_INSTRUCTION, IMAGE_TAG, format_prompt
from openmind_core.run_layout import TEMPLATE_DATE_FILE, TOKENIZER_DIR
from schemas import CuratedDataset, OpenMindConfig, TokenizerReport

def tokenizer_corpus(curated: CuratedDataset) -> list[str]:
    """The texts a trained tokenizer learns from: train-split captions, questions, answers,
    conversation turns (without their ``<image>`` tag), templates."""
    texts: list[str] = [format_prompt(i) for i in CAPTION_INSTRUCTION.values()]
    for row in read_rows(curated, split="train"):
        for key in ("text", "question", "answer"):
            if row.get(key):
                texts.append(row[key])
        for turn in row.get("conversation") or ():
            content = (turn.get("content") or "").replace(IMAGE_TAG, " ").strip()
            if content:
                texts.append(content)
    return texts


def build_run_tokenizer(cfg: OpenMindConfig, curated: CuratedDataset, template_date: date | None = None):
    """(tokenizer, where it came from) for a config, built now (``openmind data inspect`` saves nothing).
    A chat template that writes today's date renders ``template_date`` (default today) instead."""
    name = cfg.model.tokenizer.name_or_path
    if name is not None:
        return build_tokenizer(cfg.model.tokenizer, None, template_date), name
    corpus = tokenizer_corpus(curated)
    return build_tokenizer(cfg.model.tokenizer, corpus), f"trained on {len(corpus)} texts of the curated corpus"


def prepare_tokenizer(cfg: OpenMindConfig, curated: CuratedDataset, run_dir: str | Path) -> TokenizerReport:
    """Load ``<run>/tokenizer`` when it exists (a resume), else build it and save it there atomically."""
    tok_dir = Path(run_dir) / TOKENIZER_DIR
    reused = (tok_dir / "tokenizer_config.json").is_file()
    if reused:
        tok, source = load_tokenizer(tok_dir), f"{tok_dir} (kept from the run's first start)"
        stamp = tok_dir / TEMPLATE_DATE_FILE
        day = stamp.read_text(encoding="utf-8").strip() if stamp.is_file() else None
    else:
        today = date.today()
        tok, source = build_run_tokenizer(cfg, curated, today)
        pinned = pinned_date(tok)
        day = pinned.isoformat() if pinned else None
        with staged_dir(tok_dir, replace=True) as tmp:
            tok.save_pretrained(str(tmp))
            if day:  # the template is saved with the date written in; this records which
                (tmp / TEMPLATE_DATE_FILE).write_text(day + "\n", encoding="utf-8")
    image_token = cfg.model.tokenizer.image_token
    return TokenizerReport(
        path=str(tok_dir), source=source, vocab_size=len(tok), image_token=image_token,
        image_token_id=int(tok.convert_tokens_to_ids(image_token)), pad_token_id=tok.pad_token_id,
        chat_template=has_chat_template(tok), template_date=day, reused=reused,
    )


def load_prepared(report: TokenizerReport):
    """The tokenizer a ``TokenizerReport`` describes."""
    return load_tokenizer(report.path)
