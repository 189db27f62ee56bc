"""Benchmark: data loader throughput (images/s) at the tiny (56 px) and full (384 px) image sizes.

A ``VLMDataset`` over a synthetic curated lake, read through a ``DataLoader`` with the
``ResumableSampler`` and ``Collator`` as the trainer uses them (decode + resize + SigLIP
normalisation + tokenisation in loader workers).  The baseline is the same loop with
``num_workers=0`` (everything in the main process), so the ratio is the workers' speed-up.

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
            ds = VLMDataset(curated, None, tok, size, tokens, tok.convert_tokens_to_ids("<image>"), 48)
            batches = 3 if quick else (60 if size == 56 else 20)
            ours = _throughput(ds, workers=2, batches=batches)
            base = _throughput(ds, workers=0, batches=batches)
            results.append({"name": f"loader {size} px", "ours_s": 1.0 / ours, "baseline_s": 1.0 / base,
                            "ratio": ours / base, "goal": "report images/s; workers >= main process",
                            "unit": "s/image", "notes": f"{ours:,.0f} images/s with 2 workers, "
                                                         f"{base:,.0f} images/s in the main process"})
        return results
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    print(f"{'benchmark':18s} {'images/s':>10s} {'main proc':>10s} {'speed-up':>9s}")
    for r in run(quick="--quick" in sys.argv):
        print(f"{r['name']:18s} {1 / r['ours_s']:10,.0f} {1 / r['baseline_s']:10,.0f} {r['ratio']:9.2f}")
