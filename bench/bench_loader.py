"""Benchmark: data loader throughput (images/s) and the fraction of step time spent waiting for data.

Throughput rows: a ``VLMDataset`` over a synthetic curated lake, read through a ``DataLoader``
with the ``ResumableSampler`` and ``Collator`` as the trainer uses them, at the tiny (56 px) and
full (384 px) image sizes: images/s from the pixel cache (decoded and resized once; only SigLIP
normalisation per sample) against decoding every sample (decode + resize + normalisation), in the
main process; the notes add decoding in 2 loader workers and the cache's build time.

Data-wait row (goal < 5%): the embedded default config (``schemas.load_config()``), its data
downloaded and converted into a temporary lake, its tokenizer, model and datasets built by
``openmind_core.app.train`` exactly as a run builds them (images decoded once into the pixel
cache), fed by a ``DataLoader`` with the config's ``train.num_workers`` into the tiny model's
train step (forward, backward, clipping, AdamW).  Per step: the time blocked in ``next(loader)``
against the whole step; the first steps (worker start-up) are not counted.  A second row does the
same with 2 loader workers for contrast.

Run: ``python bench/bench_loader.py [--quick]``.
"""

from __future__ import annotations

import logging
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from torch.utils.data import DataLoader  # noqa: E402

from openmind_core.data import Collator, ResumableSampler, VLMDataset, convert, download, read_rows  # noqa: E402
from openmind_core.prompting import format_prompt, instruction_for  # noqa: E402
from schemas.config import DataConfig  # noqa: E402


def tiny_tokenizer(texts: list[str]):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(texts, trainers.BpeTrainer(
        vocab_size=400, special_tokens=["<pad>", "<s>", "</s>", "<unk>", "<image>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                   unk_token="<unk>")


def _throughput(ds, workers: int, batches: int, batch_size: int = 16) -> float:
    sampler = ResumableSampler(ds.sample_ids, seed=0)
    loader = DataLoader(ds, batch_size=batch_size, sampler=sampler, num_workers=workers,
                        collate_fn=Collator(0), prefetch_factor=4 if workers else None)
    it = iter(loader)
    next(it)  # worker start-up is not throughput
    t = time.perf_counter()
    n = 0
    for _ in range(batches):
        try:
            n += len(next(it)["sample_ids"])
        except StopIteration:
            break
    return n / (time.perf_counter() - t)


def wait_fraction(lake: Path, quick: bool = False, workers: int | None = None) -> dict:
    """The data-wait row: default config, real data pipeline, tiny model train steps.

    ``workers``: loader processes; None: the config's ``train.num_workers``.
    """
    import torch

    from openmind_core.app.tokenizer import load_prepared, prepare_tokenizer
    from openmind_core.app.train import build_datasets, build_model
    from openmind_core.training.optim import build_optimizer
    from schemas.loading import load_config

    overrides = ["data.synthetic.num_captions=240", "data.synthetic.num_vqa=120"] if quick else []
    cfg = load_config(None, overrides)
    workers = cfg.train.num_workers if workers is None else workers
    curated = convert(download(cfg.data, lake, seed=cfg.run.seed), cfg.data, lake)
    tok = load_prepared(prepare_tokenizer(cfg, curated, lake / "runs" / "bench"))
    model = build_model(cfg, tok)
    model.train()
    train, _val, collate = build_datasets(cfg, curated, model)
    opt = build_optimizer(model, cfg.train)
    trainable = [p for p in model.parameters() if p.requires_grad]
    bs = cfg.train.micro_batch_size
    loader = DataLoader(train, batch_size=bs, sampler=ResumableSampler(train.sample_ids, seed=cfg.run.seed),
                        collate_fn=collate, num_workers=workers)
    warm, steps = (2, 8) if quick else (3, 40)
    steps = min(steps, len(loader) - warm)
    if steps < 1:
        raise RuntimeError(f"wait_fraction: {len(train)} training rows give {len(loader)} batches of {bs}; "
                           f"need more than {warm}")
    it = iter(loader)
    waits, totals = [], []
    for i in range(warm + steps):
        t0 = time.perf_counter()
        batch = next(it)
        t1 = time.perf_counter()
        batch.pop("sample_ids")
        model(**batch).loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, cfg.train.clip_grad_norm)
        opt.step()
        opt.zero_grad(set_to_none=True)
        t2 = time.perf_counter()
        if i >= warm:
            waits.append(t1 - t0)
            totals.append(t2 - t0)
    del it, loader
    wait, total = sum(waits) / steps, sum(totals) / steps
    where = f"{workers} workers" if workers else "main process"
    return {"name": f"loader wait fraction, {where} (tiny train step)", "ours_s": wait, "baseline_s": total,
            "ratio": wait / total, "goal": "< 0.05 of step time", "unit": "s/step (wait vs whole step)",
            "notes": f"{wait / total:.1%} of step time in next(loader); {steps} steps after {warm} warm-up, "
                     f"batch {bs}, {workers} workers, {bs / total:,.0f} samples/s, torch threads "
                     f"{torch.get_num_threads()}"}


def run(quick: bool = False) -> list[dict]:
    tmp = Path(tempfile.mkdtemp(prefix="bench-loader-"))
    try:
        n = 200 if quick else 1500
        cfg = DataConfig(synthetic={"num_captions": n * 2 // 3, "num_vqa": n // 3, "image_size": 64})
        curated = convert(download(cfg, tmp), cfg, tmp)
        texts = []
        for r in read_rows(curated):
            instruction, target = instruction_for(r)
            texts += [format_prompt(instruction), " " + target]
        tok = tiny_tokenizer(texts)
        results = []
        for size, tokens in ((56, 16), (384, 196)):
            image_id = tok.convert_tokens_to_ids("<image>")
            t = time.perf_counter()
            cached = VLMDataset(curated, None, tok, size, tokens, image_id, 48)  # builds the pixel cache
            build = time.perf_counter() - t
            decoding = VLMDataset(curated, None, tok, size, tokens, image_id, 48, pixel_cache_bytes=0)
            batches = 3 if quick else (60 if size == 56 else 20)
            ours = _throughput(cached, workers=0, batches=batches)
            base = _throughput(decoding, workers=0, batches=batches)
            workers = _throughput(decoding, workers=2, batches=batches)
            results.append({"name": f"loader {size} px", "ours_s": 1.0 / ours, "baseline_s": 1.0 / base,
                            "ratio": ours / base, "goal": "report images/s (cached pixels vs decoding per sample)",
                            "unit": "s/image",
                            "notes": f"{ours:,.0f} images/s from the pixel cache (built in {build:.1f} s for "
                                     f"{len(cached):,} images), {base:,.0f} decoding in the main process, "
                                     f"{workers:,.0f} decoding in 2 workers"})
        results.append(wait_fraction(tmp / "wait", quick, workers=None))  # as the default config loads
        results.append(wait_fraction(tmp / "wait", quick, workers=2))  # for contrast: 2 loader workers
        return results
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    rows = run(quick="--quick" in sys.argv)
    print(f"{'benchmark':18s} {'cached':>10s} {'decoding':>10s} {'speed-up':>9s}")
    for r in rows[:-2]:
        print(f"{r['name']:18s} {1 / r['ours_s']:10,.0f} {1 / r['baseline_s']:10,.0f} {r['ratio']:9.2f}")
    for w in rows[-2:]:
        print(f"{w['name']}: {w['ratio']:.1%} (goal {w['goal']}); {w['notes']}")
