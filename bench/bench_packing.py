"""Packed against padded micro-batches (``train.packing``): real tokens/s and the pad fraction, same data and steps.

Data, scaled to what two CPU cores train in seconds (lengths / 8, image tokens the tiny model's 16):

* ``instruct mix``, shaped like LLaVA-Instruct + LLaVA-OneVision + ShareGPT: 65% one-image multi-turn
  rows (text 100-1,000 tokens at full size), 20% rows with 2-3 images (200-2,000), 15% text-only
  rows (300-2,000), lengths log-uniform within each range: a spread of about 20x;
* ``short captions``, shaped like the guide's caption data: one image and 8-16 text tokens per row,
  where the gain should be small.

Both ways train the same model from the same weights on the same micro-batches (the same samples in
the same order, ``micro_batch_size`` samples each) with AdamW: padded to the longest sample
(``Collator``) or first-fit-decreasing into rows of ``pack_length`` tokens (``PackingCollator``,
samples isolated).  Ratio: real tokens/s packed over padded (goal >= 1.8x on the mix; the real
tokens are the same, so it is padded time over packed time); the pad fraction row: 1 - tokens/slots
packed (goal <= 5%).  Timed alternately, the faster of the repeats each way, on one thread.
The window is the micro-batch: ``micro_batch_size`` 64 by default here (8, 16, 32, 64 samples gave
pad fractions of about 19%, 11%, 9% and 4.5% on this mix; a longer ``pack_length`` did not help).

    python bench/bench_packing.py [--quick] [--model tiny|100m] [--steps N] [--mbs N] [--repeats N]
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

SCALE = 8  # full-size token counts / SCALE
CORPUS = ["a red circle on a blue background", "What color is the circle?", "Describe the image.",
          "a green square next to a small yellow triangle", "red", "blue", "green"] * 10
# ~100 M parameters in the LM (hidden 768, 12 layers, MLP 3072): the "small model" row
MODEL_100M = ["model.lm.hidden_size=768", "model.lm.num_layers=12", "model.lm.num_heads=12", "model.lm.num_kv_heads=4",
              "model.lm.intermediate_size=3072"]


def build(model: str):
    from openmind_core.model import build_model, build_tokenizer
    from schemas.loading import load_config

    over = ["model.stage=full", "model.lm.max_position_embeddings=512"] + (MODEL_100M if model == "100m" else [])
    cfg = load_config(overrides=over)
    tok = build_tokenizer(cfg.model.tokenizer.model_copy(update={"vocab_size": 320}), CORPUS)
    torch.manual_seed(0)
    return build_model(cfg.model, tok)


def _log_uniform(g: torch.Generator, lo: int, hi: int) -> int:
    return int(math.exp(math.log(lo) + float(torch.rand((), generator=g)) * (math.log(hi) - math.log(lo))))


def make_rows(model, n: int, kind: str, seed: int = 0, scale: int = SCALE) -> list[dict]:
    """``n`` dataset items of the ``kind`` mix ("instruct" or "captions"), text lengths / ``scale``."""
    g = torch.Generator().manual_seed(seed)
    n_img, img_id, size = model.num_image_tokens, model.image_token_id, model.img_size
    vocab = model.language_model.config.vocab_size
    rows = []
    for i in range(n):
        u = float(torch.rand((), generator=g))
        if kind == "captions":
            images, text = 1, int(torch.randint(8, 17, (), generator=g))
        elif u < 0.15:  # ShareGPT: text only
            images, text = 0, _log_uniform(g, 300 // scale, 2000 // scale)
        elif u < 0.35:  # OneVision / M4-Instruct: 2-3 images
            images, text = int(torch.randint(2, 4, (), generator=g)), _log_uniform(g, 200 // scale, 2000 // scale)
        else:  # LLaVA-Instruct: one image, multi-turn
            images, text = 1, _log_uniform(g, 100 // scale, 1000 // scale)
        ids = torch.randint(img_id + 1, vocab, (text,), generator=g)
        prompt = max(1, text // 3)
        input_ids = torch.cat([ids[:1], torch.full((images * n_img,), img_id), ids[1:]])
        labels = input_ids.clone()
        labels[: 1 + images * n_img + prompt] = -100
        px = torch.randn(images, 3, size, size, generator=g) if images else None
        rows.append({"sample_id": f"{kind}{i}", "input_ids": input_ids, "labels": labels,
                     "pixel_values": px[0] if images == 1 else px})
    return rows


def mix_batch(model, samples: int, packed: bool, device: str, scale: int = 1, seed: int = 0) -> dict:
    """One micro-batch of ``samples`` instruct-mix rows at 1/``scale`` of the real lengths (``bench/gpu.py``:
    full size), packed into rows of the longest sample's tokens or padded, on ``device``."""
    from openmind_core.data.collate import Collator
    from openmind_core.data.packing import PackingCollator

    rows = make_rows(model, samples, "instruct", seed, scale=scale)
    pad = model.tokenizer.pad_token_id if model.tokenizer.pad_token_id is not None else 0
    longest = 1 + 3 * model.num_image_tokens + 2000 // scale
    batch = (PackingCollator(pad, longest) if packed else Collator(pad))(rows)
    batch.pop("sample_ids")
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def train(model, state: dict, batches: list[list[dict]], collate) -> tuple[float, int, int]:
    """(seconds, real tokens, slots) of AdamW steps over ``batches`` from ``state``."""
    model.load_state_dict(state)
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    tokens = slots = 0
    t0 = time.perf_counter()
    for items in batches:
        batch = collate(items)
        batch.pop("sample_ids")
        tokens += int(batch["attention_mask"].sum())
        slots += batch["input_ids"].numel()
        model(**batch).loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return time.perf_counter() - t0, tokens, slots


def compare(model_name: str, kind: str, steps: int, mbs: int, repeats: int) -> list[dict]:
    from openmind_core.data.collate import Collator
    from openmind_core.data.packing import PackingCollator

    model = build(model_name)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    rows = make_rows(model, steps * mbs, kind)
    batches = [rows[i * mbs:(i + 1) * mbs] for i in range(steps)]
    # the default pack_length: the longest sample the config allows (captions: the default max_length 48)
    pack_length = 1 + 16 + 48 if kind == "captions" else 1 + 3 * 16 + 2000 // SCALE
    packed_c, padded_c = PackingCollator(0, pack_length), Collator(0)
    train(model, state, batches[:1], padded_c)  # warm-up
    packed, padded = [], []
    for _ in range(repeats):  # alternated: drift on a shared machine hits both alike
        padded.append(train(model, state, batches, padded_c))
        packed.append(train(model, state, batches, packed_c))
    (tp, tok, sp), (tb, tok_b, sb) = min(packed), min(padded)
    assert tok == tok_b, "packed and padded trained different tokens"
    params = sum(p.numel() for p in model.parameters()) / 1e6
    label = f"{model_name} ({params:.0f} M), {kind}, {steps} steps x {mbs} samples"
    pad_p, pad_b = 1 - tok / sp, 1 - tok / sb
    return [
        {"name": f"packed vs padded tokens/s: {label}", "ours_s": round(tp, 3), "baseline_s": round(tb, 3),
         "ratio": round(tb / tp, 3), "goal": ">= 1.8x tokens/s" if kind == "instruct" else "small gain", "unit": "s",
         "notes": f"{tok / tp:,.0f} vs {tok / tb:,.0f} real tokens/s; pad fraction {pad_p:.1%} packed, {pad_b:.1%} "
                  f"padded; pack_length {pack_length}; CPU, {torch.get_num_threads()} thread(s)"},
        {"name": f"pad fraction packed: {label}", "ours_s": sp - tok, "baseline_s": sp, "ratio": round(pad_p, 4),
         "goal": "<= 0.05" if kind == "instruct" else "-", "unit": "slots",
         "notes": f"padding slots / all slots packed; padded: {sb - tok:,} / {sb:,} ({pad_b:.1%})"},
    ]


def run(quick: bool = False, model: str = "tiny", steps: int | None = None, mbs: int | None = None,
        repeats: int | None = None) -> list[dict]:
    from bench import torch_threads

    steps = steps or (2 if quick else 6)
    repeats = repeats or (1 if quick else 2)
    mbs = mbs or (8 if quick else 64)  # the packing window: more samples fill the rows better
    with torch_threads(1):  # one thread: timings steady on a shared 2-core machine
        rows = compare(model, "instruct", steps, mbs, repeats)
        if model == "tiny":
            rows += compare(model, "captions", steps, mbs, repeats)
    return rows


if __name__ == "__main__":
    from bench import print_rows

    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--model", choices=("tiny", "100m"), default="tiny")
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--mbs", type=int, default=None, help="samples per micro-batch (the packing window)")
    ap.add_argument("--repeats", type=int, default=None)
    a = ap.parse_args()
    print_rows(run(quick=a.quick, model=a.model, steps=a.steps, mbs=a.mbs, repeats=a.repeats))
