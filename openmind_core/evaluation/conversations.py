"""Scoring conversation rows: the model answers each conversation's last assistant turn.

A ``conversation`` row (LLaVA's or the ``messages`` form, ``openmind_core.data.conversations``)
trains on every assistant turn.  At inference the turns before the last assistant turn are the
prompt (the image where the user turn's ``<image>`` tag is, the earlier answers as the data gives
them), the model writes the next turn, and that answer is scored against the last assistant turn
with CIDEr-D and BLEU-4 as a corpus (``openmind_core.evaluation.captions``: the same tokenizer and
caveats as captions).  A reasoning trace (``<think>...</think>``) is left out on both sides: the
answer after it is scored.  The baseline is the last answer of a random other training
conversation.
"""

from __future__ import annotations

from openmind_core.chat_template import strip_reasoning
from openmind_core.evaluation.captions import caption_scores, random_other_texts
from schemas import Prediction


def turns_of(row: dict) -> list[tuple[str, str]]:
    return [(t["role"], t.get("content") or "") for t in (row.get("conversation") or [])]


def split_last_answer(row: dict) -> tuple[list[tuple[str, str]], str] | None:
    """(the turns before the last assistant turn, that turn's answer) of a conversation row, or None."""
    turns = turns_of(row)
    last = max((i for i, (r, _) in enumerate(turns) if r == "assistant"), default=None)
    if last is None or not any(r == "user" for r, _ in turns[:last]):
        return None
    return turns[:last], strip_reasoning(turns[last][1])


def conversation_baseline(refs: dict[str, str], train_rows: list[dict], seed: int = 0) -> dict | None:
    """Scores of the last answer of a random other training conversation, per evaluated conversation."""
    pool = [(r.get("sample_id"), s[1]) for r in train_rows if (s := split_last_answer(r)) and s[1]]
    if not refs or not pool:
        return None
    guess = random_other_texts(refs, pool, seed)
    return caption_scores(guess, {k: [v] for k, v in refs.items()})


def score_conversations(model, rows: list[dict], max_samples: int, batch_size: int, gen: dict,
                        train_rows: list[dict], seed: int = 0) -> tuple[list[Prediction], dict]:
    """Answer the last assistant turn of up to ``max_samples`` conversation rows; (predictions, scores).

    ``scores``: ``cider``, ``bleu4``, ``count``, ``chance_cider``, ``chance_bleu4`` and ``note`` (what
    was left out and why)."""
    convs = [r for r in rows if r.get("kind") == "conversation"]
    usable = [(r, s) for r in convs if (s := split_last_answer(r)) and s[1].strip()][:max_samples]
    skipped = len(convs) - len([r for r in convs if (s := split_last_answer(r)) and s[1].strip()])
    preds: list[Prediction] = []
    for with_image in (True, False):  # image rows and text-only rows are generated apart
        group = [(r, s) for r, s in usable if (r.get("image") is not None) == with_image]
        for i in range(0, len(group), batch_size):
            chunk = group[i: i + batch_size]
            images = [r["image"] for r, _ in chunk] if with_image else None
            outs = model.generate(images, [turns for _, (turns, _) in chunk], **gen)
            for (r, (turns, answer)), out in zip(chunk, outs):
                preds.append(Prediction(kind="conversation", sample_id=r["sample_id"], prompt=turns[-1][1],
                                        reference=answer, references=[answer], prediction=strip_reasoning(out),
                                        reasoning=out if out.strip() != strip_reasoning(out) else None))
    note = (f"{skipped} conversation(s) without a user turn before their last answer, or with an empty answer, "
            "not scored") if skipped else None
    if not preds:
        return preds, {"count": 0, "note": note}
    refs = {p.sample_id: p.reference for p in preds}
    scores = caption_scores({p.sample_id: p.prediction for p in preds}, {k: [v] for k, v in refs.items()})
    for p in preds:
        p.score = scores["cider_per_image"][p.sample_id]
    chance = conversation_baseline(refs, train_rows, seed)
    return preds, {"cider": scores["cider"], "bleu4": scores["bleu4"], "count": len(preds), "note": note,
                   "chance_cider": chance["cider"] if chance else None,
                   "chance_bleu4": chance["bleu4"] if chance else None}
