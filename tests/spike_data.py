"""Clean data for the spike guard's false-alarm checks, and real tiny trainings that record loss traces.

``digits_jsonl`` writes a real-shaped data set: 8 x 8 "scans" of the digits 0-9 (the shape of
scikit-learn's 1,797 digits, on which an earlier, stricter guard rolled back falsely), each drawn from a fixed
stroke template with per-writer jitter, blur and noise, upscaled to 32 px, as caption JSONL ("a
handwritten digit three", several phrasings) and VQA JSONL ("what digit is this?" -> "3").  No
download: the glyphs are drawn here.

``train_trace`` runs the real pipeline (download/convert, tokenizer, the default tiny VLM,
ProductionTrainer) with the spike guard recording only (rollbacks off), and returns the step losses
of metrics.jsonl, so a detector can be replayed over them: the first alarm a replay finds is exactly
where the live detector would have rolled back.
"""

from __future__ import annotations

import io
import json
import random
from pathlib import Path

WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
# 5 x 3 stroke templates (rows of a 7-segment-ish glyph), scaled into 8 x 8
GLYPHS = {
    0: ["###", "#.#", "#.#", "#.#", "###"], 1: [".#.", "##.", ".#.", ".#.", "###"],
    2: ["###", "..#", "###", "#..", "###"], 3: ["###", "..#", ".##", "..#", "###"],
    4: ["#.#", "#.#", "###", "..#", "..#"], 5: ["###", "#..", "###", "..#", "###"],
    6: ["###", "#..", "###", "#.#", "###"], 7: ["###", "..#", ".#.", ".#.", ".#."],
    8: ["###", "#.#", "###", "#.#", "###"], 9: ["###", "#.#", "###", "..#", "###"],
}
PHRASES = ["a handwritten digit {w}", "the digit {w}, written by hand", "a scan of a handwritten {w}",
           "{w}", "a low resolution scan showing the number {w}"]
QUESTIONS = ["what digit is this?", "which number is written here?", "what number does the scan show?"]


def _scan(digit: int, rng: random.Random) -> bytes:
    from PIL import Image, ImageFilter

    img = Image.new("L", (8, 8), 0)
    px = img.load()
    dx, dy = rng.randint(0, 2), rng.randint(0, 1)
    for r, row in enumerate(GLYPHS[digit]):
        for c, ch in enumerate(row):
            if ch == "#":
                for yy in (dy + int(r * 1.4), dy + int(r * 1.4) + 1):
                    x = dx + 1 + int(c * 1.7)
                    if 0 <= yy < 8 and 0 <= x < 8:
                        px[x, yy] = rng.randint(150, 255)
    img = img.filter(ImageFilter.GaussianBlur(rng.uniform(0.2, 0.7)))
    noisy = Image.eval(img, lambda v: max(0, min(255, v + rng.randint(-25, 25))))
    out = io.BytesIO()
    noisy.resize((32, 32), Image.NEAREST).convert("RGB").save(out, format="PNG")
    return out.getvalue()


def digits_jsonl(out_dir: str | Path, n: int = 1797, seed: int = 0) -> tuple[Path, Path]:
    """Half the rows captions, half VQA; ``n`` images in all (digits drawn with a skew, as real data)."""
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    caps, vqas = [], []
    for i in range(n):
        d = rng.choices(range(10), weights=[10, 11, 10, 10, 10, 9, 10, 10, 9, 11])[0]
        name = f"digit_{i:05d}.png"
        (out / "images" / name).write_bytes(_scan(d, rng))
        if i % 2 == 0:
            caps.append({"image": str(out / "images" / name), "text": rng.choice(PHRASES).format(w=WORDS[d])})
        else:
            vqas.append({"image": str(out / "images" / name), "question": rng.choice(QUESTIONS), "answer": str(d)})
    cap, vqa = out / "captions.jsonl", out / "vqa.jsonl"
    cap.write_text("".join(json.dumps(r) + "\n" for r in caps))
    vqa.write_text("".join(json.dumps(r) + "\n" for r in vqas))
    return cap, vqa


def prepared(lake: str | Path, overrides: list[str]):
    """(config, curated, tokenizer_dir) for the real pipeline without Prefect."""
    from openmind_core.data import convert, download
    from openmind_core.app.tokenizer import prepare_tokenizer
    from schemas import load_config

    cfg = load_config(overrides=overrides)
    lake = Path(lake)
    curated = convert(download(cfg.data, lake), cfg.data, lake)
    tok_dir = prepare_tokenizer(cfg, curated, lake / "tok").path
    return cfg, curated, tok_dir


def train_trace(cfg, curated, tok_dir, run_dir: str | Path, overrides: list[str]) -> tuple[list[float], int, object]:
    """Train with ``overrides`` on top of ``cfg``, the guard recording only; (step losses, warm-up steps, result)."""
    from openmind_core.app.train import train_from_config
    from openmind_core.training.metrics import read_metrics
    from openmind_core.training.optim import warmup_steps
    from schemas.loading import apply_overrides

    data = apply_overrides(cfg.model_dump(mode="json"), overrides + [
        "train.spike.max_rollbacks=0", "train.spike.z_threshold=1e30", "train.spike.factor=1e30",
        "train.wandb.mode=disabled", "train.eval_steps=100000", "train.save_steps=100000"])
    from schemas import OpenMindConfig

    run_cfg = OpenMindConfig.model_validate(data)
    res = train_from_config(run_cfg, curated, run_dir, tok_dir)
    losses = [r["loss"] for r in read_metrics(res.metrics_path) if "event" not in r]
    return losses, warmup_steps(run_cfg.train, res.steps if run_cfg.train.max_steps is None else run_cfg.train.max_steps), res


def cell_trace(base: str | Path, prep: dict, data: str, micro: int, epochs: int):
    """One cell of the spike grid: ``data`` ("generated" or "digits") prepared once under ``base`` (kept
    in ``prep``), trained at ``micro`` x ``epochs`` with the guard recording only, then replayed through
    the default guard.  (cfg, curated, step losses, warm-up steps, alarms)."""
    from openmind_core.training.guard import SpikeDetector, replay
    from schemas.config import SpikeConfig

    base = Path(base)
    if data not in prep:
        over: list[str] = []
        if data == "digits":
            cap, vqa = digits_jsonl(base / "digits_src")
            over = ["data.source=jsonl", f"data.jsonl.captions={cap}", f"data.jsonl.vqa={vqa}"]
        prep[data] = prepared(base / f"lake-{data}", over)
    cfg, curated, tok = prep[data]
    losses, warm, _ = train_trace(cfg, curated, tok, base / f"run-{data}-{micro}-{epochs}",
                                  [f"train.micro_batch_size={micro}", f"train.epochs={epochs}"])
    return cfg, curated, losses, warm, replay(losses, SpikeDetector.from_config(SpikeConfig(), start_step=warm))
