"""Baseline inference: load a saved model, answer held-out questions, caption held-out images.

VQA is scored by exact match after normalisation (lower case, punctuation and articles removed),
next to a chance baseline: always giving the most common training answer.  Captions are scored by
token F1 against the reference (SQuAD-style; Chinese counted character by character).  Extra prompts (the guide's Chinese "这张图片里有什么？")
are asked about the first held-out images and reported as generated.
"""

from __future__ import annotations

import logging
import re
import string
import time
from collections import Counter
from pathlib import Path

from schemas import CuratedDataset, InferenceConfig, InferenceReport, Prediction

log = logging.getLogger(__name__)

_PUNCT = set(string.punctuation) | set("，。？！、：；")


def normalize_answer(text: str) -> str:
    text = "".join(ch for ch in text.lower() if ch not in _PUNCT)
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def _tokens(text: str) -> list[str]:
    """Words; CJK text (no spaces between words) counts character by character."""
    out: list[str] = []
    for word in normalize_answer(text).split():
        if any("\u4e00" <= ch <= "\u9fff" for ch in word):
            out.extend(word)
        else:
            out.append(word)
    return out


def token_f1(prediction: str, reference: str) -> float:
    p, r = _tokens(prediction), _tokens(reference)
    if not p or not r:
        return float(p == r)
    common = sum((Counter(p) & Counter(r)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(p), common / len(r)
    return 2 * precision * recall / (precision + recall)


def _batched(rows: list[dict], size: int):
    for i in range(0, len(rows), size):
        yield rows[i : i + size]


def run_inference(
    model_dir: str | Path,
    curated: CuratedDataset,
    cfg: InferenceConfig,
    seed: int = 0,
    device: str | None = None,
) -> InferenceReport:
    import torch

    from openmind_core.data import read_rows
    from openmind_core.model import MultimodalReasoningModel
    from openmind_core.prompting import caption_instruction

    t0 = time.perf_counter()
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    model = MultimodalReasoningModel.from_pretrained(model_dir).to(device).eval()
    held_out = read_rows(curated, split="validation", with_images=True)
    if not held_out:  # tiny data sets may have no validation rows: fall back to training rows
        log.warning("no validation rows; answering training rows instead")
        held_out = read_rows(curated, split="train", with_images=True)
    vqa = [r for r in held_out if r["kind"] == "vqa"][: cfg.max_samples]
    caps = [r for r in held_out if r["kind"] == "caption"][: cfg.max_samples]
    gen = dict(max_new_tokens=cfg.max_new_tokens, do_sample=cfg.do_sample, temperature=cfg.temperature,
               top_p=cfg.top_p, seed=seed)
    preds: list[Prediction] = []

    correct = 0
    for chunk in _batched(vqa, cfg.batch_size):
        outs = model.generate([r["image"] for r in chunk], [r["question"] for r in chunk], **gen)
        for r, out in zip(chunk, outs):
            ok = normalize_answer(out) == normalize_answer(r["answer"])
            correct += ok
            preds.append(Prediction(kind="vqa", sample_id=r["sample_id"], prompt=r["question"],
                                    reference=r["answer"], prediction=out, correct=ok))
    chance = None
    if vqa:
        train_answers = Counter(normalize_answer(r["answer"]) for r in read_rows(curated, split="train")
                                if r["kind"] == "vqa")
        top = train_answers.most_common(1)[0][0] if train_answers else ""
        chance = sum(normalize_answer(r["answer"]) == top for r in vqa) / len(vqa)

    f1s: list[float] = []
    for chunk in _batched(caps, cfg.batch_size):
        instr = [caption_instruction(r.get("language") or "en") for r in chunk]
        outs = model.generate([r["image"] for r in chunk], instr, **gen)
        for r, p, out in zip(chunk, instr, outs):
            f1 = token_f1(out, r["text"])
            f1s.append(f1)
            preds.append(Prediction(kind="caption", sample_id=r["sample_id"], prompt=p,
                                    reference=r["text"], prediction=out))

    images = [r for r in held_out[:2]]
    for prompt in cfg.extra_prompts:
        if not images:
            break
        outs = model.generate([r["image"] for r in images], prompt, **gen)
        for r, out in zip(images, outs):
            preds.append(Prediction(kind="prompt", sample_id=r["sample_id"], prompt=prompt,
                                    reference=r.get("text") or r.get("answer"), prediction=out))

    report = InferenceReport(
        model_dir=str(model_dir),
        vqa_accuracy=correct / len(vqa) if vqa else None,
        vqa_chance=chance,
        vqa_count=len(vqa),
        caption_score=sum(f1s) / len(f1s) if f1s else None,
        caption_count=len(caps),
        predictions=preds,
        wall_seconds=round(time.perf_counter() - t0, 2),
    )
    log.debug("inference: VQA accuracy %s (chance %s) on %d; caption F1 %s on %d",
              report.vqa_accuracy, report.vqa_chance, len(vqa), report.caption_score, len(caps))
    return report
