"""Benchmark: a LoRA train step (stage finetune, PEFT adapters on the LM's attention + MLP
projections) against the same step with the LM frozen and no adapters (stage align).

Same model size, batch and AdamW; the only difference is the adapters.  The frozen-LM step
already pays the LM's forward and its input gradients (the projector needs them); the LoRA step
adds the low-rank matmuls, their LoRA dropout, their weight gradients and AdamW state.
Ratio = LoRA step time / frozen-LM step time (goal <= 2x; the issue sets none, this is the number to
watch).  Tokens/s for both in the notes.

    python bench/bench_lora.py            # default size
    python bench/bench_lora.py --quick    # a few seconds
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.bench_model import _batch, _time_train  # noqa: E402  (the same batch and timed steps)
from openmind_core.model.lora import is_lora_name  # noqa: E402
from openmind_core.model import build_model, build_tokenizer  # noqa: E402
from schemas.loading import load_config  # noqa: E402

CORPUS = ["a red circle on a blue background", "What color is the circle?", "Describe the image.",
          "a green square next to a small yellow triangle"] * 20


def _size(quick: bool) -> list[str]:
    if quick:
        return ["model.vision.embed_dim=64", "model.vision.depth=2", "model.lm.hidden_size=128",
                "model.lm.num_layers=2"]
    return ["model.vision.img_size=112", "model.vision.patch_size=16", "model.vision.embed_dim=192",
            "model.vision.depth=4", "model.vision.num_heads=3", "model.vision.mlp_dim=768",
            "model.lm.hidden_size=512", "model.lm.num_layers=4", "model.lm.num_heads=8",
            "model.lm.num_kv_heads=2", "model.lm.intermediate_size=1536"]


def _models(quick: bool):
    size = _size(quick) + ["model.vision.use_flash_attn=false"]
    base = load_config(overrides=size + ["model.stage=align"])
    tok = build_tokenizer(base.model.tokenizer.model_copy(update={"vocab_size": 400}), CORPUS)
    lora = load_config(overrides=size + ["model.stage=finetune", "model.lm.lora.r=16"])
    torch.manual_seed(0)
    frozen = build_model(base.model, tok)
    torch.manual_seed(0)
    adapted = build_model(lora.model, tok)
    return tok, frozen, adapted, lora.model.lm.lora


def run(quick: bool = False) -> list[dict]:
    from bench import torch_threads

    with torch_threads(1 if quick else None):
        return _run(quick)


def _run(quick: bool) -> list[dict]:
    tok, frozen, adapted, lora = _models(quick)
    b, text_len = (2, 16) if quick else (8, 96)
    batch = _batch(frozen, b, text_len)
    t_lora, t_frozen = _time_train([adapted.train(), frozen.train()], batch, 3 if quick else 7)  # interleaved
    tokens = batch["input_ids"].numel()
    n_lora = sum(p.numel() for n, p in adapted.named_parameters() if is_lora_name(n))
    return [dict(name="LoRA train step vs frozen LM (fwd+bwd+AdamW)", ours_s=t_lora, baseline_s=t_frozen,
                 ratio=t_lora / t_frozen, goal="<= 2.0x time (the adapters' overhead)", unit="s/step",
                 notes=f"r={lora.r} on {len(lora.target_modules)} projections ({n_lora:,} adapter params), batch {b}, "
                       f"seq {batch['input_ids'].shape[1]}: LoRA {tokens / t_lora:.0f} tok/s, "
                       f"frozen LM {tokens / t_frozen:.0f} tok/s")]


if __name__ == "__main__":
    from bench import print_rows

    print_rows(run(quick="--quick" in sys.argv))
