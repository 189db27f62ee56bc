"""The full-size GPU check: SigLIP-So400M 384/14 + an 8 B Llama-3-shaped LM, random bf16 weights, no hub.

Over 400 lines: one script that a lent GPU session runs whole (``bench/gpu_device.sh``), its rows
sharing one model build.

For stage "align" (and "finetune" where it fits; an out-of-memory becomes a row, not a crash) at a
few micro-batch sizes, and for PyTorch SDPA and flash-attn 2 (when installed), it measures:

* peak GPU memory (``torch.cuda.max_memory_allocated``) next to ``estimate_memory``'s prediction
  (goal: within 10%), and whether training fits the guide's budget (``memory.budget_gb``, 40 GB);
* step time, samples/s and tokens/s (non-padding tokens, image tokens included);
* MFU: model FLOPs per step (``bench/flops.py``: 2N per token per parameter matmul forward, input
  gradients through every layer gradients pass, weight gradients of trainable layers, attention
  scores; checkpointing recompute not counted) / step time / the card's dense bf16 peak.

The training step is the trainer's: AdamW (``build_optimizer``), bf16 autocast, clipping, on a
synthetic padded batch of ``1 + image_tokens + max_length`` tokens per sample.  Each setting runs
a warm-up (FLOPs are counted there) and a few timed steps; a row is printed as soon as it is
measured and ``bench/results/gpu.json`` (+ ``gpu.md``) is rewritten after every row, so a run that
is stopped (Ctrl-C, SIGTERM, ``--max-seconds``) still leaves its rows.  On a machine without CUDA it
says so and exits 0.

    python bench/gpu.py                      # ~4-6 min on an H100/H200
    python bench/gpu.py --quick              # align at the config's micro-batch (+ finetune b=1)
    python bench/gpu.py --align-batches 4,8 --finetune-batches 1 --steps 5 --max-seconds 300
    python bench/gpu.py --peak-tflops 989    # a card missing from PEAK_BF16_TFLOPS
    python bench/gpu.py --device cpu --config configs/default.yaml --quick   # smoke-test the code path

Two more rows (``--mix-batch``, default 8 samples; with ``--quick`` only under ``--packing``) train a
micro-batch of ``bench/bench_packing.py``'s instruct mix at its real lengths (100-2,000 text tokens,
15% text-only, 20% with 2-3 images) padded and then packed (``train.packing``, flash-attn varlen
where installed): real tokens/s and MFU both ways (lmms-engine reports 35-40% MFU packed against
20-25% unpacked for 7-8 B image fine-tuning).
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import signal
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

RESULTS = ROOT / "bench" / "results"
GIB = 1 << 30

# Dense (no sparsity) bf16 tensor-core peaks, TFLOP/s, by a substring of torch.cuda.get_device_name().
# First match wins, so the more specific names come first.
PEAK_BF16_TFLOPS: list[tuple[str, float]] = [
    ("GH200", 989.4),
    ("H200", 989.4),
    ("H100 PCIe", 756.0),
    ("H100 NVL", 835.0),
    ("H100", 989.4),   # SXM ("NVIDIA H100 80GB HBM3")
    ("H800", 989.4),
    ("B200", 2250.0),
    ("A100", 312.0),
    ("A800", 312.0),
    ("L40S", 362.0),
    ("L40", 181.0),
    ("L4", 121.0),
]

MFU_GOAL = 0.45  # stage align, 196 image tokens, H200
MEMORY_GOAL = 0.10  # measured peak within 10% of the estimate


def peak_tflops(device_name: str, override: float | None = None) -> tuple[float | None, str]:
    """(dense bf16 peak TFLOP/s, where it came from) for a CUDA device name."""
    if override:
        return float(override), "--peak-tflops"
    for key, tf in PEAK_BF16_TFLOPS:
        if key.lower() in device_name.lower():
            return tf, f"table ({key})"
    return None, "unknown card: pass --peak-tflops for MFU"


def llava15_stage1_anchor() -> dict[str, float]:
    """LLaVA-1.5 stage 1 on an A100: ~5.5 samples/s per GPU (7B Vicuna frozen, CLIP-L/336 frozen,
    576 image tokens + ~40 caption tokens).  Its MFU by the same counting as ours: the frozen LM
    costs forward + input-gradient backward (4N per token) plus attention scores (x3), the frozen
    vision tower a forward only, the projector is negligible."""
    samples_s, n_lm, layers, hidden, tokens = 5.5, 6.74e9, 32, 4096, 576 + 40
    n_vis, vis_tokens, vis_layers, vis_hidden = 0.304e9, 577, 24, 1024
    lm = 4 * n_lm * tokens + 3 * 4 * tokens * tokens * hidden * layers
    vis = 2 * n_vis * vis_tokens + 4 * vis_tokens * vis_tokens * vis_hidden * vis_layers
    flops = lm + vis
    return {"samples_s": samples_s, "flops_per_sample": flops, "mfu": samples_s * flops / 312e12}


# --------------------------------------------------------------------------- table


def _f(x: Any, spec: str) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return ""
    return format(x, spec)


TABLE_COLUMNS = ("stage", "attention", "ckpt", "micro-batch", "tokens/sample", "step s", "samples/s", "tokens/s",
                 "TFLOP/s", "MFU", "peak GiB", "estimate GiB", "peak/est", "fits budget", "status")


def table_row(r: dict) -> list[str]:
    fits = "" if r.get("fits_budget") is None else ("yes" if r["fits_budget"] else "NO")
    return [
        r.get("stage", ""), r.get("attention", ""),
        {True: "on", False: "off"}.get(r.get("checkpointing"), ""), str(r.get("batch", "")), str(r.get("seq_len", "")),
        _f(r.get("step_s"), ".3f"), _f(r.get("samples_s"), ".2f"), _f(r.get("tokens_s"), ",.0f"),
        _f(r.get("achieved_tflops"), ".4g"), _f(r.get("mfu") * 100 if r.get("mfu") is not None else None, ".1f") +
        ("%" if r.get("mfu") is not None else ""),
        _f(r.get("peak_gib"), ".2f"), _f(r.get("estimate_gib"), ".2f"), _f(r.get("memory_ratio"), ".3f"), fits,
        r.get("status", ""),
    ]


def format_table(rows: list[dict]) -> str:
    """The measured rows as one Markdown table."""
    lines = ["| " + " | ".join(TABLE_COLUMNS) + " |", "|" + "---|" * len(TABLE_COLUMNS)]
    lines += ["| " + " | ".join(table_row(r)) + " |" for r in rows]
    return "\n".join(lines)


def format_row_line(r: dict) -> str:
    """One line for a row as soon as it is measured (partial results)."""
    ck = {True: " ckpt", False: " no-ckpt"}.get(r.get("checkpointing"), "")
    head = f"[{r['stage']} {r['attention']}{ck} b={r['batch']}]"
    if r.get("status") != "ok":
        est = f"; estimate {r['estimate_gib']:.2f} GiB" if r.get("estimate_gib") is not None else ""
        return f"{head} {r.get('status')}{est} {r.get('notes', '')}".rstrip()
    mfu = f", MFU {r['mfu'] * 100:.1f}%" if r.get("mfu") is not None else ""
    mem = ""
    if r.get("peak_gib") is not None:
        mem = (f", peak {r['peak_gib']:.2f} GiB (estimate {r['estimate_gib']:.2f}, x{r['memory_ratio']:.3f}), "
               f"{'fits' if r['fits_budget'] else 'DOES NOT FIT'} {r['budget_gib']:.0f} GiB")
    return (f"{head} {r['step_s']:.3f} s/step, {r['samples_s']:.2f} samples/s, {r['tokens_s']:,.0f} tokens/s, "
            f"{r['achieved_tflops']:.1f} TFLOP/s{mfu}{mem}")


def summary(rows: list[dict], meta: dict) -> list[str]:
    """Verdict lines under the table: the 40 GB criterion, the MFU goal, the estimate, the anchors."""
    out: list[str] = []
    ok = [r for r in rows if r.get("status") == "ok"]
    budget = meta.get("budget_gib")
    ck = meta.get("gradient_checkpointing")
    crit = [r for r in ok if r["stage"] == "align" and r["batch"] == meta.get("config_micro_batch")
            and r.get("peak_gib") is not None and r.get("checkpointing", ck) == ck]
    if crit:
        r = min(crit, key=lambda r: r["peak_gib"])
        out.append(f"guide criterion, training under {budget:.0f} GiB on one GPU (align, micro-batch {r['batch']}): "
                   f"{'PASS' if r['fits_budget'] else 'FAIL'} ({r['peak_gib']:.2f} GiB measured)")
    aligned = [r for r in ok if r["stage"] == "align" and r.get("mfu") is not None]
    if aligned:
        best = max(aligned, key=lambda r: r["mfu"])
        verdict = "PASS" if best["mfu"] >= MFU_GOAL else "below goal"
        out.append(f"best align MFU: {best['mfu'] * 100:.1f}% ({best['attention']}, micro-batch {best['batch']}, "
                   f"{best['image_tokens']} image tokens) vs goal >= {MFU_GOAL * 100:.0f}% on an H200: {verdict}"
                   + ("" if "H200" in meta.get("device", "") else f" (this card: {meta.get('device', '?')})"))
    mem = [r for r in ok if r.get("memory_ratio") is not None]
    if mem:
        worst = max(mem, key=lambda r: abs(r["memory_ratio"] - 1))
        within = all(abs(r["memory_ratio"] - 1) <= MEMORY_GOAL for r in mem)
        out.append(f"memory estimate: measured/estimated peak {min(r['memory_ratio'] for r in mem):.3f}-"
                   f"{max(r['memory_ratio'] for r in mem):.3f} over {len(mem)} rows; "
                   f"{'all within' if within else 'NOT all within'} {MEMORY_GOAL * 100:.0f}% "
                   f"(worst: {worst['stage']} b={worst['batch']})")
    a = llava15_stage1_anchor()
    out.append(f"anchor: LLaVA-1.5 stage 1 ~{a['samples_s']} samples/s per A100 (7B, 576 image tokens) "
               f"= ~{a['mfu'] * 100:.0f}% MFU by the same FLOP counting")
    out.append(f"goal: stage align, 196 image tokens, >= {MFU_GOAL * 100:.0f}% MFU on an H200")
    return out


def write_results(rows: list[dict], meta: dict, out: Path) -> None:
    """``gpu.json`` (meta + rows) and ``gpu.md`` (table + summary), each written atomically."""
    out.parent.mkdir(parents=True, exist_ok=True)
    payload = json.dumps({"meta": meta, "rows": rows, "summary": summary(rows, meta)}, indent=2, default=str)
    md = (f"{format_table(rows)}\n\n" + "\n".join(f"- {s}" for s in summary(rows, meta)) +
          f"\n\n{meta.get('device', '')}; {meta.get('command', '')}\n")
    for path, text in ((out, payload), (out.with_suffix(".md"), md)):
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)


# --------------------------------------------------------------------------- model + batch


def build(cfg, device: str):
    """(model, tokenizer) for ``cfg`` on ``device``: random init (no hub), in ``model.dtype``."""
    import torch

    from openmind_core.model import build_model, train_bpe_tokenizer

    words = "a red blue green circle square triangle on the left right of small large image what colour is".split()
    corpus = [" ".join(words[i:] + words[:i]) for i in range(len(words))]
    tok = train_bpe_tokenizer(corpus, vocab_size=300, image_token=cfg.model.tokenizer.image_token)
    torch.manual_seed(cfg.run.seed)
    with torch.device(device):  # initialise directly on the GPU (fp32 init, then the model casts itself)
        model = build_model(cfg.model, tok)
    model.train()
    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
    return model, tok


def synthetic_batch(model, batch: int, max_length: int, device: str, generator=None) -> dict:
    """A padded training batch shaped like the collator's: bos, image placeholders, ``max_length``
    text tokens (the last row one shorter, so a padding mask is passed as in real training)."""
    import torch

    n_img = model.num_image_tokens
    seq = 1 + n_img + max_length
    vocab = min(model.language_model.get_input_embeddings().weight.shape[0], 32000)
    low = model.image_token_id + 1
    ids = torch.randint(low, max(vocab, low + 2), (batch, seq), generator=generator)
    ids[:, 0] = model.tokenizer.bos_token_id if model.tokenizer.bos_token_id is not None else 1
    ids[:, 1:1 + n_img] = model.image_token_id
    mask = torch.ones_like(ids)
    pad = model.tokenizer.pad_token_id if model.tokenizer.pad_token_id is not None else 0
    if seq > 1 + n_img + 1:
        ids[-1, -1] = pad
        mask[-1, -1] = 0
    labels = ids.clone()
    labels[:, :1 + n_img] = -100
    labels[mask == 0] = -100
    pixels = torch.randn(batch, 3, model.img_size, model.img_size, generator=generator)
    out = {"input_ids": ids, "attention_mask": mask, "labels": labels, "pixel_values": pixels}
    return {k: v.to(device) for k, v in out.items()}


# --------------------------------------------------------------------------- one setting


def measure(model, cfg, stage: str, batch: int, attention: str, steps: int, warmup: int, device: str,
            peak: float | None, budget_gib: float, estimate_gib: float | None = None, mix: str | None = None,
            mix_scale: int = 1) -> dict:
    """Train ``steps`` timed steps (after ``warmup``) of ``stage`` at micro-batch ``batch``; one row.

    Activation checkpointing follows ``cfg.model.gradient_checkpointing``.  ``mix`` ("padded" or
    "packed"): a micro-batch of ``bench_packing``'s instruct mix at its real lengths instead of the
    fixed-length synthetic batch (tokens/s counts real tokens, so the two rows compare)."""
    import torch

    from bench.flops import FlopRecorder, set_attention_backend
    from openmind_core.training.optim import build_optimizer
    from openmind_core.training.precision import autocast, resolve_amp

    cuda = device.startswith("cuda")
    if model.stage != stage:
        model.freeze(stage)
    if attention != "default":
        set_attention_backend(model, attention)
    ckpt = cfg.model.gradient_checkpointing
    set_checkpointing(model, ckpt)
    row: dict[str, Any] = {"stage": stage, "attention": attention, "batch": batch, "checkpointing": ckpt,
                           "image_tokens": model.num_image_tokens, "seq_len": 1 + model.num_image_tokens + cfg.model.max_length,
                           "trainable_params": model.parameter_counts()["total"][0], "estimate_gib": estimate_gib,
                           "budget_gib": budget_gib, "status": "ok", "notes": ""}
    amp = resolve_amp(cfg.train.amp, torch.device(device))
    if mix:
        from bench.bench_packing import mix_batch

        data = mix_batch(model, batch, mix == "packed", device, scale=mix_scale)
        real = int(data["attention_mask"].sum())
        row.update(attention=f"{attention} mix-{mix}", seq_len=real // batch,
                   notes=f"pad fraction {1 - real / data['input_ids'].numel():.1%}")
    else:
        data = synthetic_batch(model, batch, cfg.model.max_length, device, torch.Generator().manual_seed(batch))
    trainable = [p for p in model.parameters() if p.requires_grad]
    opt = build_optimizer(model, cfg.train)
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()

    def step(recorder=None) -> float:
        t0 = time.perf_counter()
        if recorder is not None:
            recorder.active = True
        with autocast(amp):
            loss = model(**data).loss
        if recorder is not None:
            recorder.active = False
        loss.float().backward()
        torch.nn.utils.clip_grad_norm_(trainable, cfg.train.clip_grad_norm)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if cuda:
            torch.cuda.synchronize()
        return time.perf_counter() - t0

    recorder = FlopRecorder(model)
    try:
        step(recorder)  # warm-up 1: counts the model FLOPs of one step
    finally:
        recorder.remove()
    for _ in range(max(0, warmup - 1)):
        step()
    times = [step() for _ in range(steps)]
    step_s = statistics.median(times)
    tokens = int(data["attention_mask"].sum())
    flops = recorder.count
    row.update(
        step_s=step_s, step_spread=[min(times), max(times)], steps=steps, warmup=max(1, warmup),
        samples_s=batch / step_s, tokens_s=tokens / step_s, flops_per_step=flops.total,
        flops_by_module=flops.by_module, achieved_tflops=flops.total / step_s / 1e12,
        mfu=(flops.total / step_s / (peak * 1e12)) if peak else None,
    )
    if cuda:
        peak_bytes = torch.cuda.max_memory_allocated()
        row.update(peak_gib=peak_bytes / GIB, fits_budget=peak_bytes <= budget_gib * GIB)
        if estimate_gib:
            row["memory_ratio"] = row["peak_gib"] / estimate_gib
    del opt
    return row


def set_checkpointing(model, on: bool) -> None:
    """Activation checkpointing on/off in both towers (transformers v5 and v4 method names)."""
    if on:
        model.gradient_checkpointing_enable()
        return
    for hf in (model.vision_encoder.siglip, model.language_model):
        if hasattr(hf, "activation_checkpointing_disable"):
            hf.activation_checkpointing_disable()
        else:
            hf.gradient_checkpointing_disable()


def free(model, device: str) -> None:
    import torch

    model.zero_grad(set_to_none=True)
    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python bench/gpu.py", description=__doc__.splitlines()[0])
    p.add_argument("--config", default=str(ROOT / "configs" / "full.yaml"), help="config (default: configs/full.yaml)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="config override (repeatable), e.g. --set model.max_length=256")
    p.add_argument("--align-batches", default=None, help="micro-batch sizes for stage align (default: 4,8,16,32; quick: the config's)")
    p.add_argument("--finetune-batches", default=None, help="micro-batch sizes for stage finetune (default: 1,4; quick: 1; '' = none)")
    p.add_argument("--attention", default=None, help="comma list of sdpa, flash_attention_2 (default: sdpa + flash when installed)")
    p.add_argument("--steps", type=int, default=None, help="timed steps per setting (default 5; quick 3)")
    p.add_argument("--warmup", type=int, default=2, help="warm-up steps per setting, not timed (>= 1; FLOPs counted there)")
    p.add_argument("--max-seconds", type=float, default=420.0, help="stop starting new settings after this (default 420)")
    p.add_argument("--peak-tflops", type=float, default=None, help="the card's dense bf16 peak TFLOP/s (overrides the table)")
    p.add_argument("--quick", action="store_true", help="fewest settings and steps (~2 min)")
    p.add_argument("--mix-batch", type=int, default=8, help="samples per micro-batch of the packed/padded instruct-mix "
                   "rows (align; 0 = none; quick: none unless --packing)")
    p.add_argument("--mix-scale", type=int, default=1, help="the mix's text lengths / this (1: real lengths)")
    p.add_argument("--packing", action="store_true", help="measure the packed/padded instruct-mix rows also with --quick")
    p.add_argument("--device", default="cuda", help="cuda (default) or cpu (a smoke test of the code path, tiny configs only)")
    p.add_argument("--out", type=Path, default=RESULTS / "gpu.json", help="JSON path (gpu.md is written beside it)")
    return p.parse_args(argv)


def _ints(text: str | None, default: list[int]) -> list[int]:
    if text is None:
        return default
    return [int(x) for x in text.split(",") if x.strip()]


def plan(a: argparse.Namespace, micro_batch: int, flash: bool, checkpointing: bool = True) -> list[tuple[str, int, str, bool]]:
    """(stage, batch, attention, activation checkpointing) settings in priority order: the guide's
    criterion first; with checkpointing configured, align is also measured without it (model FLOPs
    exclude the recompute, so checkpointing costs MFU)."""
    align = _ints(a.align_batches, [micro_batch] if a.quick else sorted({micro_batch, 8, 16, 32}))
    finetune = _ints(a.finetune_batches, [1] if a.quick else [1, 4])
    if a.attention:
        backends = [x.strip() for x in a.attention.split(",") if x.strip()]
    else:
        backends = ["sdpa"] + (["flash_attention_2"] if flash else [])
    c = checkpointing
    settings = [("align", b, backends[0], c) for b in align]
    settings += [("align", b, be, c) for be in backends[1:] for b in align]
    if c and not a.quick:
        settings += [("align", b, backends[-1], False) for b in sorted({micro_batch, 16})]
    settings += [("finetune", b, be, c) for be in backends[:1] for b in finetune]
    return settings


def mix_plan(a: argparse.Namespace, flash: bool, checkpointing: bool) -> list[tuple[str, int, str, bool, str]]:
    """The instruct mix padded, then packed (stage align, the fastest attention here): tokens/s and MFU both ways."""
    if a.mix_batch <= 0 or (a.quick and not a.packing):
        return []
    backend = "flash_attention_2" if flash else "sdpa"
    return [("align", a.mix_batch, backend, checkpointing, mix) for mix in ("padded", "packed")]


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    t_start = time.perf_counter()
    import torch

    if a.device.startswith("cuda") and not torch.cuda.is_available():
        print("bench/gpu.py: no CUDA device here (torch.cuda.is_available() is False; torch "
              f"{torch.__version__}). This script measures the full-size model on a GPU: run it on a CUDA "
              "machine (`python bench/gpu.py`); for the CPU benchmarks run `python -m bench`.", file=sys.stderr)
        return 0

    from openmind_core.model import estimate_memory, flash_attn_available
    from schemas.loading import load_config

    cfg = load_config(a.config, a.overrides)
    steps = a.steps or (3 if a.quick else 5)
    cuda = a.device.startswith("cuda")
    name = torch.cuda.get_device_name(0) if cuda else "cpu"
    peak, peak_src = peak_tflops(name, a.peak_tflops)
    flash = cuda and flash_attn_available()
    budget = cfg.memory.budget_gb
    meta: dict[str, Any] = {
        "device": name, "peak_bf16_tflops": peak, "peak_source": peak_src, "config": a.config,
        "overrides": a.overrides, "dtype": cfg.model.dtype, "amp": cfg.train.amp,
        "gradient_checkpointing": cfg.model.gradient_checkpointing, "max_length": cfg.model.max_length,
        "config_micro_batch": cfg.train.micro_batch_size, "budget_gib": budget, "steps": steps,
        "warmup": max(1, a.warmup), "torch": torch.__version__, "cuda": torch.version.cuda,
        "flash_attn": flash, "command": "python bench/gpu.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"), "finished": False,
    }
    if flash:
        import flash_attn

        meta["flash_attn_version"] = flash_attn.__version__
    rows: list[dict] = []

    def on_term(signum, frame):  # SIGTERM (timeout, scheduler) ends like Ctrl-C: rows kept, table printed
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, on_term)
    print(f"bench/gpu.py: {name}, dense bf16 peak {peak or '?'} TFLOP/s ({peak_src}); config {a.config}", flush=True)
    try:
        t0 = time.perf_counter()
        model, tok = build(cfg, a.device)
        counts = model.parameter_counts()
        meta.update(build_s=round(time.perf_counter() - t0, 1), params={k: v[1] for k, v in counts.items()})
        print(f"built {counts['total'][1] / 1e9:.2f} B parameters ({cfg.model.dtype}) in {meta['build_s']} s; "
              f"{model.num_image_tokens} image tokens, {1 + model.num_image_tokens + cfg.model.max_length} tokens/sample",
              flush=True)
        last_s = 0.0
        settings = [(*s, None) for s in plan(a, cfg.train.micro_batch_size, flash, cfg.model.gradient_checkpointing)]
        for stage, batch, attention, ckpt, mix in settings + mix_plan(a, flash, cfg.model.gradient_checkpointing):
            elapsed = time.perf_counter() - t_start
            if elapsed + max(15.0, 1.5 * last_s) > a.max_seconds:
                row = {"stage": stage, "attention": attention, "batch": batch, "checkpointing": ckpt, "status": "skipped",
                       "notes": f"--max-seconds {a.max_seconds:.0f} reached ({elapsed:.0f} s)"}
                rows.append(row)
                print(format_row_line(row), flush=True)
                continue
            variant = cfg.model_copy(deep=True)
            variant.model.stage = stage
            variant.train.micro_batch_size = batch
            variant.model.gradient_checkpointing = ckpt
            est = estimate_memory(variant, device=a.device, tokenizer=tok)
            est_gib = None if mix else est.train_peak_bytes / GIB  # the estimate assumes max_length samples
            t0 = time.perf_counter()
            error = None
            try:
                row = measure(model, variant, stage, batch, attention, steps, a.warmup, a.device, peak, budget, est_gib,
                              mix=mix, mix_scale=a.mix_scale)
            except torch.cuda.OutOfMemoryError as e:
                error = ("OOM", str(e).splitlines()[0][:160])
            except (RuntimeError, ValueError, ImportError) as e:  # e.g. flash-attn refusing a shape
                error = ("error", f"{type(e).__name__}: {str(e).splitlines()[0][:200]}")
            if error is not None:
                row = {"stage": stage, "attention": attention + (f" mix-{mix}" if mix else ""), "batch": batch,
                       "checkpointing": ckpt, "status": error[0],
                       "estimate_gib": est_gib, "budget_gib": budget, "notes": error[1]}
            free(model, a.device)
            last_s = time.perf_counter() - t0
            row["setting_s"] = round(last_s, 1)
            rows.append(row)
            print(format_row_line(row), flush=True)
            write_results(rows, meta, a.out)
        meta["finished"] = True
    except KeyboardInterrupt:
        meta["interrupted"] = True
        print("\ninterrupted: the table below holds the rows measured so far", flush=True)
    finally:
        signal.signal(signal.SIGTERM, previous)
    meta["seconds"] = round(time.perf_counter() - t_start, 1)
    write_results(rows, meta, a.out)
    print()
    print(format_table(rows))
    print()
    for line in summary(rows, meta):
        print(f"- {line}")
    print(f"\nwrote {a.out} and {a.out.with_suffix('.md')} ({meta['seconds']} s)")
    return 130 if meta.get("interrupted") else 0


if __name__ == "__main__":
    raise SystemExit(main())
