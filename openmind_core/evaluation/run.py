"""Evaluate a saved model: VQAv2 accuracy and CIDEr-D / BLEU-4 captions, each beside a chance baseline.

One code path serves the Week-1 inference task and ``openmind eval``:

- :func:`evaluate_model` loads a ``save_pretrained`` directory and scores rows (lake rows as
  ``read_rows`` returns them: ``kind``, ``question``, ``answer``/``answers``, ``text``, ``language``,
  ``image`` bytes, ``image_sha256``);
- :func:`evaluate_path` resolves what ``openmind eval PATH`` names (a run directory, its ``final/``
  or ``best/``), finds the data (the run's lake validation split, a JSONL file or a Hugging Face data
  set converted into the lake like any input) and writes ``eval.json``.

VQA: every question is answered once and scored with :func:`~openmind_core.evaluation.vqa.vqa_score`
(the official consensus formula with ten answers, exact match with one).  Chance baselines use the
same metric: always the most common training answer, and a random training answer per question.

Captions: one caption per *image* (rows sharing an image are its references), scored as a corpus
with CIDEr-D and BLEU-4 (:mod:`openmind_core.evaluation.captions`); the baseline is a random training
caption of another image.  The extra prompts (the guide's "这张图片里有什么？") are asked about the
first held-out images and reported as generated, unscored.

Conversations: the last assistant turn of each conversation row is answered and scored with
CIDEr-D / BLEU-4 (:mod:`openmind_core.evaluation.conversations`).

Reasoning: generation prompts let a reasoning template think (``inference.thinking``; by default
when the training answers hold ``<think>`` traces), and every score is of the text after the trace.
"""

from __future__ import annotations

import json
import logging
import random
import time
from collections import Counter
from pathlib import Path

from openmind_core.chat_template import split_reasoning, strip_reasoning
from openmind_core.data import convert, download, read_rows
from openmind_core.evaluation.captions import TOKENIZER, caption_scores, random_other_texts
from openmind_core.evaluation.conversations import score_conversations, turns_of
from openmind_core.evaluation.vqa import answers_of, normalize_vqa_answer, vqa_score
from openmind_core.io import atomic_write_text
from openmind_core.prompting import caption_instruction
from schemas import DataConfig, InferenceConfig, InferenceReport, Prediction, load_config

log = logging.getLogger(__name__)


class EvalError(ValueError):
    """Nothing to evaluate, or a path that is not a model: the message says what and where."""


def _batched(rows: list, size: int):
    for i in range(0, len(rows), size):
        yield rows[i : i + size]


def _image_key(row: dict) -> str:
    return row.get("image_sha256") or row.get("sample_id") or str(id(row))


def _method_summary(methods: Counter) -> str | None:
    if not methods:
        return None
    names = {"vqav2": "VQAv2 10-answer consensus", "exact": "normalised exact match (one answer)",
             "any": "match with any of 2-9 answers"}
    return "; ".join(f"{names[m]} on {n}" for m, n in methods.most_common())


def vqa_baselines(eval_rows: list[dict], train_rows: list[dict], seed: int = 0) -> tuple[float | None, str | None, float | None]:
    """(most-common-answer score, that answer, random-answer score) over ``eval_rows``, from ``train_rows``."""
    train_answers = [normalize_vqa_answer(r["answer"]) for r in train_rows if r.get("answer") is not None]
    if not eval_rows or not train_answers:
        return None, None, None
    top = Counter(train_answers).most_common(1)[0][0]
    chance = sum(vqa_score(top, answers_of(r))[0] for r in eval_rows) / len(eval_rows)
    rng = random.Random(seed)
    rand = sum(vqa_score(rng.choice(train_answers), answers_of(r))[0] for r in eval_rows) / len(eval_rows)
    return chance, top, rand


def caption_groups(rows: list[dict]) -> dict[str, list[dict]]:
    """Caption rows grouped by image (insertion order kept)."""
    groups: dict[str, list[dict]] = {}
    for r in rows:
        groups.setdefault(_image_key(r), []).append(r)
    return groups


def caption_baseline(refs: dict[str, list[str]], train_rows: list[dict], seed: int = 0) -> dict | None:
    """Scores of a random training caption per image, never one of that image's own captions."""
    pool = [(_image_key(r), r["text"]) for r in train_rows if r.get("text")]
    if not refs or not pool:
        return None
    guess = random_other_texts(refs, pool, seed)
    return caption_scores(guess, refs)


def holds_traces(rows: list[dict]) -> bool:
    """Some training answer (a VQA answer, a conversation's assistant turn) starts with a reasoning trace."""
    texts = [r.get("answer") or "" for r in rows] + [t for r in rows for role, t in turns_of(r) if role == "assistant"]
    return any(split_reasoning(t)[0] is not None for t in texts)


def _answer(out: str) -> tuple[str, str | None]:
    """(the answer scored, the whole output when it held a reasoning trace)."""
    answer = strip_reasoning(out)
    return answer, (out if answer != out.strip() else None)


def evaluate_model(model, rows: list[dict], cfg: InferenceConfig, *, chance_rows: list[dict] | None = None,
                   chance_from: str | None = None, seed: int = 0, model_dir: str = "", data: str | None = None,
                   progress=None) -> InferenceReport:
    """Answer and caption ``rows`` with a loaded ``MultimodalReasoningModel``; score them.

    ``chance_rows`` (default: ``rows`` themselves, said so in ``chance_from``) give the baselines.
    """
    t0 = time.perf_counter()
    vqa = [r for r in rows if r["kind"] == "vqa"][: cfg.max_samples]
    groups = list(caption_groups([r for r in rows if r["kind"] == "caption"]).items())[: cfg.max_samples]
    if chance_rows is None:
        chance_rows, chance_from = rows, "the evaluated rows themselves (no training split known)"
    thinking = cfg.thinking if cfg.thinking is not None else holds_traces(chance_rows)
    gen = dict(max_new_tokens=cfg.max_new_tokens, do_sample=cfg.do_sample, temperature=cfg.temperature,
               top_p=cfg.top_p, seed=seed, thinking=thinking)
    preds: list[Prediction] = []
    methods: Counter = Counter()
    total = 0.0
    for chunk in _batched(vqa, cfg.batch_size):
        outs = model.generate([r["image"] for r in chunk], [r["question"] for r in chunk], **gen)
        for r, out in zip(chunk, outs):
            answers = [strip_reasoning(a) for a in answers_of(r)]
            out, trace = _answer(out)
            score, method = vqa_score(out, answers)
            methods[method] += 1
            total += score
            preds.append(Prediction(kind="vqa", sample_id=r["sample_id"], prompt=r["question"],
                                    reference=strip_reasoning(r["answer"]) if r.get("answer") else None,
                                    references=answers, prediction=out, reasoning=trace, score=score, method=method,
                                    correct=score >= 1.0))
        if progress:
            progress(len(preds))
    chance, top, rand = vqa_baselines(vqa, [r for r in chance_rows if r["kind"] == "vqa"], seed)

    cap_out: dict[str, str] = {}
    refs = {key: [r["text"] for r in group if r.get("text")] for key, group in groups}
    cap_preds: list[Prediction] = []
    for chunk in _batched(groups, cfg.batch_size):
        instr = [caption_instruction(group[0].get("language") or "en") for _, group in chunk]
        outs = model.generate([group[0]["image"] for _, group in chunk], instr, **gen)
        for (key, group), p, out in zip(chunk, instr, outs):
            out, trace = _answer(out)
            cap_out[key] = out
            cap_preds.append(Prediction(kind="caption", sample_id=group[0]["sample_id"], prompt=p,
                                        reference=refs[key][0] if refs[key] else None, references=refs[key],
                                        prediction=out, reasoning=trace))
        if progress:
            progress(len(preds) + len(cap_preds))
    caps = caption_scores(cap_out, refs) if cap_out else None
    if caps:
        for p, key in zip(cap_preds, cap_out):
            p.score = caps["cider_per_image"][key]
    preds += cap_preds
    cap_chance = caption_baseline(refs, [r for r in chance_rows if r["kind"] == "caption"], seed) if caps else None

    conv_preds, conv = score_conversations(model, rows, cfg.max_samples, cfg.batch_size, gen,
                                           [r for r in chance_rows if r["kind"] == "conversation"], seed)
    preds += conv_preds
    if progress and conv_preds:
        progress(len(preds))

    shown = [r for r in (vqa + [g[0] for _, g in groups])][:2]
    for prompt in cfg.extra_prompts:
        if not shown:
            break
        outs = model.generate([r["image"] for r in shown], prompt, **gen)
        for r, out in zip(shown, outs):
            out, trace = _answer(out)
            preds.append(Prediction(kind="prompt", sample_id=r["sample_id"], prompt=prompt,
                                    reference=r.get("text") or r.get("answer"), prediction=out, reasoning=trace))

    scored = [p for p in preds if p.kind != "prompt"]
    report = InferenceReport(
        model_dir=str(model_dir), data=data,
        vqa_accuracy=total / len(vqa) if vqa else None, vqa_method=_method_summary(methods),
        vqa_chance=chance, vqa_chance_answer=top, vqa_random=rand, vqa_count=len(vqa),
        nonempty=sum(bool(p.prediction.strip()) for p in scored), scored=len(scored),
        caption_cider=caps["cider"] if caps else None, caption_bleu4=caps["bleu4"] if caps else None,
        caption_chance_cider=cap_chance["cider"] if cap_chance else None,
        caption_chance_bleu4=cap_chance["bleu4"] if cap_chance else None,
        caption_tokenizer=TOKENIZER if (caps or conv.get("count")) else None, caption_count=len(cap_out),
        conversation_cider=conv.get("cider"), conversation_bleu4=conv.get("bleu4"),
        conversation_chance_cider=conv.get("chance_cider"), conversation_chance_bleu4=conv.get("chance_bleu4"),
        conversation_count=conv.get("count", 0), conversation_note=conv.get("note"), thinking=thinking,
        chance_from=chance_from, predictions=preds, wall_seconds=round(time.perf_counter() - t0, 2),
    )
    log.info("eval: VQA accuracy %s (chance %s) on %d; CIDEr-D %s BLEU-4 %s on %d images", report.vqa_accuracy,
             report.vqa_chance, len(vqa), report.caption_cider, report.caption_bleu4, len(cap_out))
    return report


def load_model(model_dir: str | Path, device: str | None = None):
    import torch  # start-up cost: torch and the model classes only where a model is loaded

    from openmind_core.model import MultimodalReasoningModel

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    return MultimodalReasoningModel.from_pretrained(model_dir).to(device).eval()


def one_image_rows(rows: list[dict]) -> list[dict]:
    """``rows`` without those holding several images: generation answers about one image (or none)."""
    kept = [r for r in rows if not r.get("extra_images")]
    if len(kept) < len(rows):
        log.warning("%d row(s) with several images not evaluated: generation takes one image a prompt",
                    len(rows) - len(kept))
    return kept


def held_out_rows(curated) -> tuple[list[dict], list[dict], str]:
    """(validation rows with images, training rows, description) of a curated lake version (rows holding
    several images are left out: ``one_image_rows``)."""
    root = getattr(curated, "root", curated)
    rows = one_image_rows(read_rows(curated, split="validation", with_images=True))
    train = read_rows(curated, split="train")
    if rows:
        return rows, train, f"lake {root} validation split"
    log.warning("no validation rows; answering training rows instead")
    return (one_image_rows(read_rows(curated, split="train", with_images=True)), train,
            f"lake {root} train split (no validation rows)")


# --------------------------------------------------------------------------- openmind eval PATH


def resolve_model_path(path: str | Path) -> tuple[Path, Path | None]:
    """(model directory, run directory or None) for a run directory, its final/ or best/, or any saved model."""
    p = Path(path).expanduser()
    if (p / "final" / "config.json").is_file():
        return p / "final", p
    if (p / "config.json").is_file():
        run = p.parent if (p.parent / "config.yaml").is_file() and p.name in ("final", "best") else None
        return p, run
    if (p / "checkpoints").is_dir():
        raise EvalError(f"{p}: a run directory without final/ (the run has not finished); "
                        "evaluate it after training ends, or point at best/")
    raise EvalError(f"{p}: neither a run directory (with final/) nor a saved model directory (with config.json)")


def run_lake(run_dir: Path):
    """The curated lake version a run trained on: from its report.json, else by preparing its config's data again."""
    report = run_dir / "report.json"
    if report.is_file():
        root = json.loads(report.read_text())["curated"]["root"]
        if Path(root).is_dir():
            return root
    cfg = load_config(run_dir / "config.yaml")
    lake = run_dir.parent.parent  # <lake>/runs/<run>
    log.info("no report.json in %s: preparing its data from config.yaml (cached in %s)", run_dir, lake)
    return convert(download(cfg.data, lake, seed=cfg.run.seed), cfg.data, lake)


def _detect_jsonl_kind(path: Path) -> str:
    with open(path, encoding="utf-8-sig") as f:
        for line in f:
            if line.strip():
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as e:
                    raise EvalError(f"{path}: first row is not JSON ({e})") from None
                return "vqa" if isinstance(row, dict) and "question" in row else "caption"
    raise EvalError(f"{path}: empty file")


def external_rows(lake: str | Path, *, jsonl: str | None = None, hf: str | None = None, kind: str | None = None,
                  split: str = "validation", columns: dict[str, str] | None = None, seed: int = 0):
    """(rows, description) of a JSONL file or an HF data set, converted into ``lake`` like any input (cached)."""
    if jsonl:
        p = Path(jsonl).expanduser()
        if not p.is_file():
            raise EvalError(f"--jsonl {jsonl}: file not found")
        kind = kind or _detect_jsonl_kind(p)
        key = "vqa" if kind == "vqa" else "captions"
        dc = DataConfig(source="jsonl", jsonl={key: str(p)}, val_fraction=0.0)
        what = f"jsonl {p} ({kind})"
    else:
        dc = DataConfig(source="hf", hf={"name": hf, "split": split, "kind": kind, "columns": columns or {}},
                        val_fraction=0.0)  # kind None: the data set's preset (VQAv2, COCO), else caption
        what = f"hf {hf} split {split}" + (f" ({kind})" if kind else "")
    cur = convert(download(dc, Path(lake), seed=seed), dc, Path(lake))
    rows = one_image_rows(read_rows(cur, with_images=True))
    if not rows:
        raise EvalError(f"{what}: no usable rows ({cur.rows_quarantined} quarantined: {cur.quarantine_path})")
    return rows, what


def evaluate_path(path: str | Path, cfg: InferenceConfig, *, lake: str | Path | None = None, jsonl: str | None = None,
                  hf: str | None = None, kind: str | None = None, split: str = "validation",
                  columns: dict[str, str] | None = None, out: str | Path | None = None, seed: int = 0,
                  device: str | None = None) -> tuple[InferenceReport, Path]:
    """``openmind eval``: evaluate a run / final/ / best/ on its lake's validation split or given data.

    Writes the report to ``out`` (default ``PATH/eval.json``) and returns it with that path.
    """
    model_dir, run_dir = resolve_model_path(path)
    train_lake = run_lake(run_dir) if run_dir is not None else None
    if jsonl or hf:
        if lake is None:
            lake = run_dir.parent.parent if run_dir is not None else Path("data_lake")
        rows, data = external_rows(lake, jsonl=jsonl, hf=hf, kind=kind, split=split, columns=columns, seed=seed)
        chance_rows = read_rows(train_lake, split="train") if train_lake is not None else None
        chance_from = f"training split of {getattr(train_lake, 'root', train_lake)}" if train_lake is not None else None
    else:
        if train_lake is None:
            raise EvalError(f"{path}: not inside a run directory, so there is no lake validation split to use; "
                            "pass --jsonl FILE or --hf NAME")
        rows, chance_rows, data = held_out_rows(train_lake)
        chance_from = "the lake's training split"
    report = evaluate_model(load_model(model_dir, device), rows, cfg, chance_rows=chance_rows, chance_from=chance_from,
                            seed=seed, model_dir=str(model_dir), data=data)
    target = Path(out) if out else Path(path).expanduser() / "eval.json"
    target.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(target, report.model_dump_json(indent=2))
    return report, target


# --------------------------------------------------------------------------- text


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.1%}"


def _num(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.3f}"


def summary_lines(r: InferenceReport) -> list[str]:
    """The scores with their baselines, one line per kind (CLI, logs, markdown)."""
    lines = []
    if r.vqa_count:
        lines.append(f"VQA accuracy {_pct(r.vqa_accuracy)} on {r.vqa_count} questions ({r.vqa_method}); chance: "
                     f"most common answer {r.vqa_chance_answer!r} {_pct(r.vqa_chance)}, random answer {_pct(r.vqa_random)}")
    if r.caption_count:
        lines.append(f"captions CIDEr-D {_num(r.caption_cider)}, BLEU-4 {_num(r.caption_bleu4)} on {r.caption_count} "
                     f"images; random caption: CIDEr-D {_num(r.caption_chance_cider)}, BLEU-4 "
                     f"{_num(r.caption_chance_bleu4)} ({r.caption_tokenizer})")
    if r.conversation_count:
        lines.append(f"conversations (last answer) CIDEr-D {_num(r.conversation_cider)}, BLEU-4 "
                     f"{_num(r.conversation_bleu4)} on {r.conversation_count}; a random training answer: CIDEr-D "
                     f"{_num(r.conversation_chance_cider)}, BLEU-4 {_num(r.conversation_chance_bleu4)}")
    if r.conversation_note:
        lines.append(r.conversation_note)
    if not lines:
        lines.append("nothing scored (no VQA, caption or conversation rows)")
    return lines


def _cell(text: str | None) -> str:
    return (text or "").replace("|", "\\|").replace("\n", " ")[:120]


def report_markdown(r: InferenceReport, title: str = "Evaluation", rows: int = 20) -> str:
    shown = [p for p in r.predictions if p.kind == "prompt"] + [p for p in r.predictions if p.kind != "prompt"][:rows]
    table = "\n".join(f"| {p.kind} | {_cell(p.prompt)} | {_cell(p.prediction)} | {_cell(' / '.join(p.references[:3]) or p.reference)} "
                      f"| {'' if p.score is None else f'{p.score:.2f}'} |" for p in shown)
    body = "\n".join(f"- {line}" for line in summary_lines(r))
    return (f"# {title}\n\nModel `{r.model_dir}` on {r.data or 'n/a'}; baselines from {r.chance_from or 'n/a'}.\n\n"
            f"{body}\n\n| kind | prompt | prediction | reference | score |\n|---|---|---|---|---|\n{table}")
