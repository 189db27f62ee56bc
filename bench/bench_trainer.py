"""Trainer overhead against a bare training loop (same model, data, steps, one checkpoint).

The bare loop is AdamW + the same cosine schedule + clipping over the same micro-batches, with one
``torch.save`` at the end.  The ProductionTrainer adds everything else (token-weighted loss, guards,
spike detector, metrics.jsonl, a checkpoint every ``save_steps`` = the default 50, final/, the loss
curve).  Goal: ratio <= 1.05.  Run: ``python bench/bench_trainer.py [--quick]``.
"""

from __future__ import annotations

import math
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from openmind_core.training import ProductionTrainer  # noqa: E402
from openmind_core.training.optim import build_optimizer, build_scheduler  # noqa: E402
from schemas.config import TrainConfig  # noqa: E402

VOCAB, SEQ, DIM = 512, 64, 256


class BenchLM(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = torch.nn.Embedding(VOCAB, DIM)
        self.blocks = torch.nn.ModuleList(
            torch.nn.Sequential(torch.nn.LayerNorm(DIM), torch.nn.Linear(DIM, 4 * DIM), torch.nn.GELU(),
                                torch.nn.Linear(4 * DIM, DIM)) for _ in range(2))
        self.head = torch.nn.Linear(DIM, VOCAB)

    def forward(self, input_ids, attention_mask=None, labels=None):
        h = self.embed(input_ids)
        for b in self.blocks:
            h = h + b(h)
        logits = self.head(h)
        loss = F.cross_entropy(logits[:, :-1].reshape(-1, VOCAB), labels[:, 1:].reshape(-1), ignore_index=-100)
        return SimpleNamespace(loss=loss)


class BenchData(torch.utils.data.Dataset):
    def __init__(self, n: int) -> None:
        self.tokens = torch.randint(0, VOCAB, (n, SEQ), generator=torch.Generator().manual_seed(0))
        self.sample_ids = [f"b{i}" for i in range(n)]

    def __len__(self) -> int:
        return len(self.sample_ids)

    def __getitem__(self, i):
        return {"sample_id": self.sample_ids[i], "input_ids": self.tokens[i],
                "attention_mask": torch.ones(SEQ, dtype=torch.long), "labels": self.tokens[i]}


def collate(items):
    out = {"sample_ids": [it["sample_id"] for it in items]}
    for k in ("input_ids", "attention_mask", "labels"):
        out[k] = torch.stack([it[k] for it in items])
    return out


def bare_loop(cfg: TrainConfig, data: BenchData, out_dir: Path) -> float:
    torch.manual_seed(0)
    model = BenchLM()
    opt = build_optimizer(model, cfg)
    sched = build_scheduler(opt, cfg, cfg.max_steps)
    loader = torch.utils.data.DataLoader(data, batch_size=cfg.micro_batch_size, shuffle=True, collate_fn=collate)
    t0 = time.perf_counter()
    step = 0
    while step < cfg.max_steps:
        for batch in loader:
            batch.pop("sample_ids")
            model(**batch).loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip_grad_norm)
            opt.step()
            opt.zero_grad(set_to_none=True)
            sched.step()
            step += 1
            if step >= cfg.max_steps:
                break
    torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, out_dir / "bare.pt")
    return time.perf_counter() - t0


def trainer_run(cfg: TrainConfig, data: BenchData, out_dir: Path) -> float:
    torch.manual_seed(0)
    model = BenchLM()
    t0 = time.perf_counter()
    ProductionTrainer(model, data, None, collate, cfg, out_dir / "run").train()
    return time.perf_counter() - t0


def run(quick: bool = False) -> list[dict]:
    from bench import torch_threads

    with torch_threads(1):
        return _run(quick)


def _run(quick: bool) -> list[dict]:
    steps = 20 if quick else 200
    cfg = TrainConfig(max_steps=steps, micro_batch_size=16, lr=1e-3, amp="off", wandb={"mode": "disabled"},
                      log_every=10)  # save_steps / eval_steps: the defaults (50)
    data = BenchData(16 * steps)
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        bare_loop(cfg, data, d)  # warm-up (allocator, kernels)
        bases, ourses = [], []
        for i in range(1 if quick else 2):  # alternated, so drift on a shared machine hits both alike
            bases.append(bare_loop(cfg, data, d))
            ourses.append(trainer_run(cfg, data, d / f"t{i}"))
        base, ours = min(bases), min(ourses)
    return [{
        "name": f"trainer_overhead_{steps}_steps", "ours_s": round(ours, 3), "baseline_s": round(base, 3),
        "ratio": round(ours / base, 3) if base > 0 else math.nan, "goal": "<= 1.05", "unit": "s",
        "notes": f"checkpoint every {cfg.save_steps} steps + step-0 + final, metrics.jsonl, guards; "
                 "bare loop: one torch.save; CPU, 1 thread",
    }]


if __name__ == "__main__":
    from bench import print_rows

    print_rows(run(quick="--quick" in sys.argv))
