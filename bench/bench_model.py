"""Benchmark: MultimodalReasoningModel vs transformers' LlavaForConditionalGeneration, same size.

Both models get the same SigLIP vision config, the same Llama LM config, the same LLaVA-1.5 MLP
projector on all patch tokens (our ``projector.type=mlp``), the same batch and the same AdamW.
Measured in one run: forward + backward + optimizer step time (median of several steps after a
warm-up), and greedy generation tokens/s with a KV cache (eos ignored so both decode the same
number of tokens).  Goal: ours is no slower (ratio = ours / baseline <= ~1).

    python bench/bench_model.py            # default size
    python bench/bench_model.py --quick    # a few seconds
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from transformers import LlavaConfig, LlavaForConditionalGeneration  # noqa: E402

from openmind_core.model import build_model, build_tokenizer  # noqa: E402
from schemas.loading import load_config  # noqa: E402

CORPUS = ["a red circle on a blue background", "What color is the circle?", "Describe the image.",
          "这张图片里有什么？ 一个红色的圆。", "a green square next to a small yellow triangle"] * 20


def _build(quick: bool):
    size = (["model.vision.embed_dim=64", "model.vision.depth=2", "model.lm.hidden_size=128", "model.lm.num_layers=2"]
            if quick else
            ["model.vision.img_size=112", "model.vision.patch_size=16", "model.vision.embed_dim=192",
             "model.vision.depth=4", "model.vision.num_heads=3", "model.vision.mlp_dim=768",
             "model.lm.hidden_size=384", "model.lm.num_layers=4", "model.lm.num_heads=6",
             "model.lm.num_kv_heads=2", "model.lm.intermediate_size=1024"])
    cfg = load_config(overrides=size + ["model.projector.type=mlp", "model.stage=full", "model.vision.feature_layer=-2",
                                        "model.vision.use_flash_attn=false"])
    tok = build_tokenizer(cfg.model.tokenizer.model_copy(update={"vocab_size": 400}), CORPUS)
    torch.manual_seed(0)
    ours = build_model(cfg.model, tok)
    v = ours.vision_encoder.siglip.config
    lcfg = ours.language_model.config
    llava_cfg = LlavaConfig(
        vision_config=v.to_dict() | {"model_type": "siglip_vision_model", "num_hidden_layers": cfg.model.vision.depth},
        text_config=lcfg.to_dict(),
        image_token_index=ours.image_token_id,
        image_seq_length=ours.num_image_tokens,
        projector_hidden_act="gelu",
        vision_feature_select_strategy="full",
        vision_feature_layer=cfg.model.vision.feature_layer,
        tie_word_embeddings=lcfg.tie_word_embeddings,
    )
    torch.manual_seed(0)
    llava = LlavaForConditionalGeneration(llava_cfg)
    llava.config._attn_implementation = "sdpa"
    for sub in (llava.config.vision_config, llava.config.text_config):
        sub._attn_implementation = "sdpa"
    return cfg, tok, ours, llava


def _batch(model, b: int, text_len: int):
    s = 1 + model.num_image_tokens + text_len
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(10, len(model.tokenizer), (b, s), generator=g)
    ids[:, 0] = model.tokenizer.bos_token_id
    ids[:, 1:1 + model.num_image_tokens] = model.image_token_id
    labels = ids.clone()
    labels[:, : 1 + model.num_image_tokens] = -100
    return dict(input_ids=ids, attention_mask=torch.ones_like(ids),
                pixel_values=torch.randn(b, 3, model.img_size, model.img_size, generator=g), labels=labels)


def _step(model, opt, batch) -> float:
    t0 = time.perf_counter()
    loss = model(**batch).loss
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return time.perf_counter() - t0


def _time_train(models, batch, steps: int) -> list[float]:
    """Median step time of each model, steps interleaved so machine load hits both alike."""
    opts = [torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=1e-4) for m in models]
    for m, o in zip(models, opts):
        _step(m, o, batch)  # warm-up
    times: list[list[float]] = [[] for _ in models]
    for _ in range(steps):
        for i, (m, o) in enumerate(zip(models, opts)):
            times[i].append(_step(m, o, batch))
    return [statistics.median(t) for t in times]


def run(quick: bool = False) -> list[dict]:
    from bench import torch_threads

    with torch_threads(1 if quick else None):
        return _run(quick)


def _run(quick: bool) -> list[dict]:
    cfg, tok, ours, llava = _build(quick)
    b, text_len = (2, 16) if quick else (8, 48)
    batch = _batch(ours, b, text_len)
    ours.train()
    llava.train()
    steps = 3 if quick else 7
    t_ours, t_llava = _time_train([ours, llava], batch, steps)
    rows = [dict(name="train step (fwd+bwd+AdamW)", ours_s=t_ours, baseline_s=t_llava, ratio=t_ours / t_llava,
                 goal="<= 1.0 (no slower than LlavaForConditionalGeneration)", unit="s/step",
                 notes=f"batch {b}, seq {batch['input_ids'].shape[1]}, {ours.num_image_tokens} image tokens, mlp projector")]

    ours.eval()
    llava.eval()
    new = 8 if quick else 32
    gb = 2 if quick else 8
    pixels = batch["pixel_values"][:gb]
    prompt = "What color is the circle?"
    ours.generate(pixels, prompt, max_new_tokens=2, ignore_eos=True)  # warm-up
    t0 = time.perf_counter()
    ours.generate(pixels, prompt, max_new_tokens=new, ignore_eos=True)
    t_ours = time.perf_counter() - t0
    ids, mask = ours._prepare_prompts(prompt, gb)
    with torch.no_grad():
        llava.generate(input_ids=ids, attention_mask=mask, pixel_values=pixels, max_new_tokens=2, do_sample=False)
        t0 = time.perf_counter()
        out = llava.generate(input_ids=ids, attention_mask=mask, pixel_values=pixels, max_new_tokens=new,
                             min_new_tokens=new, do_sample=False)
        t_llava = time.perf_counter() - t0
    assert out.shape[1] - ids.shape[1] == new
    tps_ours, tps_llava = gb * new / t_ours, gb * new / t_llava
    rows.append(dict(name="greedy generation", ours_s=t_ours, baseline_s=t_llava, ratio=t_ours / t_llava,
                     goal="<= 1.0", unit="s per batch",
                     notes=f"batch {gb} x {new} new tokens: ours {tps_ours:.0f} tok/s, llava {tps_llava:.0f} tok/s"))
    return rows


if __name__ == "__main__":
    from bench import print_rows

    print_rows(run(quick="--quick" in sys.argv))
