"""Toy models, data and a subprocess/torchrun entry for the trainer tests.

``ToyLM`` is a tiny causal LM (embedding -> layer norm -> dropout -> MLP -> head) whose loss is the
HF-style mean over label tokens after the causal shift.  ``ToyVLM`` has the real model's shape for
FSDP2: a frozen ``vision_encoder``, a ``projector`` and a ``language_model`` with decoder
``layers`` (so ``shard_model`` shards layers, LM, then the root).  Per-sample flags let tests
poison a sample (its token losses are multiplied by ``poison``) or inject NaN into the gradients
(``nan``).

Entry: ``python tests/trainer_helpers.py --run-dir D [--set key=value ...] [--model toy|vlm]
[--poison id,id] [--dump FILE]`` trains in this process (used with the test-only
``OPENMIND_TEST_KILL_AT`` env var to crash it); under torchrun it initialises gloo first.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from schemas.config import TrainConfig  # noqa: E402

VOCAB, SEQ, DIM = 32, 8, 16


class ToyDataset(torch.utils.data.Dataset):
    def __init__(self, n: int = 48, seed: int = 0, poison: dict[str, float] | None = None,
                 nan_ids: set[str] | None = None, prefix: str = "s") -> None:
        g = torch.Generator().manual_seed(seed)
        self.tokens = torch.randint(0, VOCAB, (n, SEQ), generator=g)
        self.masked = torch.randint(1, 4, (n,), generator=g)  # first k labels masked: uneven token counts
        self.sample_ids = [f"{prefix}{i:03d}" for i in range(n)]
        self.poison = poison or {}
        self.nan_ids = nan_ids or set()

    def __len__(self) -> int:
        return len(self.sample_ids)

    def __getitem__(self, i: int) -> dict[str, Any]:
        sid = self.sample_ids[i]
        labels = self.tokens[i].clone()
        labels[: int(self.masked[i])] = -100
        return {"sample_id": sid, "input_ids": self.tokens[i], "attention_mask": torch.ones(SEQ, dtype=torch.long),
                "labels": labels, "poison": torch.tensor(self.poison.get(sid, 1.0)),
                "nan": torch.tensor(1.0 if sid in self.nan_ids else 0.0)}


def collate(items: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {"sample_ids": [it["sample_id"] for it in items]}
    for k in items[0]:
        if k != "sample_id":
            out[k] = torch.stack([it[k] for it in items])
    return out


def _toy_loss(logits, labels, poison, nan):
    lg, lb = logits[:, :-1], labels[:, 1:]
    ce = F.cross_entropy(lg.reshape(-1, VOCAB), lb.reshape(-1), ignore_index=-100, reduction="none")
    ce = ce.view(lb.shape)
    mask = (lb != -100).float()
    w = poison[:, None] if poison is not None else 1.0
    loss = (ce * mask * w).sum() / mask.sum()
    if nan is not None and bool(nan.any()) and logits.requires_grad:
        logits.register_hook(lambda g: g * float("nan"))
    return loss


class ToyBlock(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.norm = torch.nn.LayerNorm(DIM)
        self.mlp = torch.nn.Sequential(torch.nn.Linear(DIM, 2 * DIM), torch.nn.GELU(), torch.nn.Linear(2 * DIM, DIM))

    def forward(self, h):
        return h + self.mlp(self.norm(h))


class ToyDecoder(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = torch.nn.Embedding(VOCAB, DIM)
        self.layers = torch.nn.ModuleList([ToyBlock(), ToyBlock()])
        self.norm = torch.nn.LayerNorm(DIM)
        self.head = torch.nn.Linear(DIM, VOCAB)

    def forward(self, input_ids, prefix):
        h = self.embed(input_ids) + prefix[:, None, :]
        for layer in self.layers:
            h = layer(h)
        return self.head(self.norm(h))


class ToyVLM(torch.nn.Module):
    """Frozen 'vision' features of the first token -> dropout -> projector, added to the LM's embeddings."""

    def __init__(self, dropout: float = 0.1) -> None:
        super().__init__()
        self.vision_encoder = torch.nn.Linear(VOCAB, 8)
        self.vision_encoder.requires_grad_(False)
        self.drop = torch.nn.Dropout(dropout)
        self.projector = torch.nn.Linear(8, DIM)
        self.language_model = ToyDecoder()

    def forward(self, input_ids, attention_mask=None, labels=None, poison=None, nan=None, pixel_values=None):
        img = self.projector(self.drop(self.vision_encoder(F.one_hot(input_ids[:, 0], VOCAB).float())))
        logits = self.language_model(input_ids, img)
        loss = _toy_loss(logits, labels, poison, nan) if labels is not None else None
        return SimpleNamespace(loss=loss, logits=logits)


class ToyLoraVLM(torch.nn.Module):
    """ToyVLM's shape with a tiny Llama LM carrying PEFT LoRA adapters (openmind_core.model.lora): the
    frozen vision features -> projector -> added to the LM's input embeddings; the LM base is frozen,
    the adapters (with LoRA dropout) and the projector train."""

    def __init__(self, dropout: float = 0.1) -> None:
        super().__init__()
        from transformers import LlamaConfig, LlamaForCausalLM

        from openmind_core.model.lora import apply_lora, train_adapters
        from schemas.config import LoraConfig

        self.vision_encoder = torch.nn.Linear(VOCAB, 8)
        self.vision_encoder.requires_grad_(False)
        self.projector = torch.nn.Linear(8, DIM)
        self.language_model = LlamaForCausalLM(LlamaConfig(
            vocab_size=VOCAB, hidden_size=DIM, intermediate_size=2 * DIM, num_hidden_layers=2, num_attention_heads=2,
            num_key_value_heads=1, max_position_embeddings=32, attn_implementation="eager"))
        apply_lora(self.language_model, LoraConfig(r=4, alpha=8, dropout=dropout))
        train_adapters(self.language_model, torch.float32)

    def forward(self, input_ids, attention_mask=None, labels=None, poison=None, nan=None, pixel_values=None):
        img = self.projector(self.vision_encoder(F.one_hot(input_ids[:, 0], VOCAB).float()))
        embeds = self.language_model.get_input_embeddings()(input_ids) + img[:, None, :]
        logits = self.language_model(inputs_embeds=embeds).logits
        loss = _toy_loss(logits, labels, poison, nan) if labels is not None else None
        return SimpleNamespace(loss=loss, logits=logits)


class ToyLM(torch.nn.Module):
    def __init__(self, dropout: float = 0.1) -> None:
        super().__init__()
        self.embed = torch.nn.Embedding(VOCAB, DIM)
        self.norm = torch.nn.LayerNorm(DIM)
        self.drop = torch.nn.Dropout(dropout)
        self.mlp = torch.nn.Sequential(torch.nn.Linear(DIM, 2 * DIM), torch.nn.GELU(), torch.nn.Linear(2 * DIM, DIM))
        self.head = torch.nn.Linear(DIM, VOCAB)

    def forward(self, input_ids, attention_mask=None, labels=None, poison=None, nan=None, pixel_values=None):
        h = self.drop(self.norm(self.embed(input_ids)))
        logits = self.head(h + self.mlp(h))
        loss = _toy_loss(logits, labels, poison, nan) if labels is not None else None
        return SimpleNamespace(loss=loss, logits=logits)


def make_cfg(**over: Any) -> TrainConfig:
    base: dict[str, Any] = dict(
        epochs=2, micro_batch_size=4, grad_accum=2, lr=3e-2, warmup_ratio=0.1, save_steps=4, eval_steps=4,
        keep_last=3, deterministic=True, log_every=2, amp="off", wandb={"mode": "disabled"},
        # a short window judged from step 6 on, one bad step a spike, the LR kept on rollback (so a
        # rolled-back run equals one that never had the samples)
        spike={"z_threshold": 6.0, "window": 4, "min_history": 4, "patience": 1, "factor": 3.0, "max_rollbacks": 2,
               "lr_factor": 1.0},
    )
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(base.get(k), dict):
            base[k] = {**base[k], **v}
        else:
            base[k] = v
    return TrainConfig.model_validate(base)


def build(n: int = 48, poison: dict[str, float] | None = None, nan_ids: set[str] | None = None,
          dropout: float = 0.1, model: str = "toy"):
    torch.manual_seed(1234)
    model = {"vlm": ToyVLM, "lora": ToyLoraVLM}.get(model, ToyLM)(dropout)
    return model, ToyDataset(n, poison=poison, nan_ids=nan_ids), ToyDataset(12, seed=99, prefix="v")


def run_toy(run_dir: str | Path, cfg: TrainConfig | None = None, *, poison: dict[str, float] | None = None,
            nan_ids: set[str] | None = None, skip: list[str] | None = None, rank: int = 0, world_size: int = 1,
            n: int = 48, progress=None, dropout: float = 0.1, model: str = "toy",
            skip_from: dict[str, int] | None = None, collate_fn=None):
    """Train the toy in this process; ``skip``: ids skipped from epoch 0 on; ``skip_from``: id -> first
    epoch it is skipped in (a ledger exactly as a rollback leaves it)."""
    from openmind_core.training import ProductionTrainer

    # one thread, in-process or in a subprocess: float results depend on the thread count, and
    # references computed here are compared bit for bit with runs in subprocesses
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        net, train, val = build(n, poison, nan_ids, dropout, model)
        trainer = ProductionTrainer(net, train, val, collate_fn or collate, cfg or make_cfg(), run_dir, seed=7,
                                    fingerprint={"model": f"{model}-v1", "data": f"toy-{n}"}, progress=progress,
                                    rank=rank, world_size=world_size)
        if skip:
            trainer.sampler.add_skip(skip, epoch=0, start=0)
        if skip_from:
            trainer.sampler.skip.update(skip_from)
        return trainer.train()
    finally:
        torch.set_num_threads(threads)


def final_state(run_dir: str | Path) -> tuple[dict[str, torch.Tensor], dict]:
    """Weights and optimizer state of the newest checkpoint of a run."""
    import safetensors.torch

    ck = sorted((Path(run_dir) / "checkpoints").glob("step-*"))[-1]
    return (safetensors.torch.load_file(str(ck / "model.safetensors")),
            torch.load(ck / "optimizer.pt", weights_only=True))


def assert_same_state(a: str | Path, b: str | Path) -> None:
    wa, oa = final_state(a)
    wb, ob = final_state(b)
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), f"parameter {k} differs"
    assert oa["state"].keys() == ob["state"].keys()
    for i in oa["state"]:
        for k in oa["state"][i]:
            assert torch.equal(oa["state"][i][k], ob["state"][i][k]), f"optimizer state {i}.{k} differs"


def fsdp_check(rank: int, out_dir: str | Path) -> None:
    """FSDP2-shard a tiny VLM-shaped model's LM; one AdamW step must match an unsharded replica, and
    its gathered state dict saved through ``save_pretrained`` must load back as the replica."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from openmind_core.training.strategies import shard_language_model

    class Tiny(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.projector = torch.nn.Linear(4, 16)
            self.language_model = LlamaForCausalLM(LlamaConfig(
                vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
                num_key_value_heads=1, max_position_embeddings=32))

    torch.manual_seed(0)
    sharded, replica = Tiny(), Tiny()
    replica.load_state_dict(sharded.state_dict())
    shard_language_model(sharded)
    ids = torch.randint(0, VOCAB, (2, 8), generator=torch.Generator().manual_seed(5))  # same data on all ranks
    for m in (sharded, replica):
        opt = torch.optim.AdamW(m.parameters(), lr=1e-2)
        m.language_model(input_ids=ids, labels=ids).loss.backward()
        opt.step()
    got = sharded.language_model.lm_head.weight.full_tensor()
    torch.testing.assert_close(got, replica.language_model.lm_head.weight, rtol=1e-5, atol=1e-6)
    # best/ and final/ of a sharded HF model: a gathered full state dict through save_pretrained(state_dict=)
    from openmind_core.training.model_dir import save_model_dir
    from openmind_core.training.distributed import barrier
    from openmind_core.training.strategies import full_model_state_dict

    full = full_model_state_dict(sharded.language_model)
    if rank == 0:
        dest = save_model_dir(sharded.language_model, Path(out_dir) / "fsdp_lm", state_dict=full)
        again = LlamaForCausalLM.from_pretrained(dest)
        for k, v in replica.language_model.state_dict().items():
            torch.testing.assert_close(again.state_dict()[k], v, rtol=1e-5, atol=1e-6, msg=lambda m, k=k: f"{k}: {m}")
    barrier()
    print(f"FSDP_OK rank {rank} sharded={type(sharded.language_model.lm_head.weight).__name__}", flush=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--run-dir", required=True)
    ap.add_argument("--set", action="append", default=[], help="TrainConfig field=JSON value")
    ap.add_argument("--poison", default="")
    ap.add_argument("--dump", default=None, help="write the TrainingResult JSON here")
    ap.add_argument("--dropout", type=float, default=0.1)
    ap.add_argument("--model", choices=("toy", "vlm", "lora", "packed", "padded"), default="toy",
                    help="packed / padded: the tiny real model on packing_helpers.PackDataset")
    ap.add_argument("--fsdp-check", action="store_true", help="after training, check FSDP2 against a replica")
    args = ap.parse_args(argv)
    over = {}
    for item in args.set:
        k, _, v = item.partition("=")
        over[k] = json.loads(v)
    cfg = make_cfg(**over)
    from openmind_core.training import distributed as D

    rank, world, _ = D.init_from_env()
    torch.set_num_threads(1)
    poison = {p: 100.0 for p in args.poison.split(",") if p}
    if args.model in ("packed", "padded"):
        from packing_helpers import run_packed

        res = run_packed(args.run_dir, cfg, packed=args.model == "packed", rank=rank, world_size=world)
    else:
        res = run_toy(args.run_dir, cfg, poison=poison, rank=rank, world_size=world, dropout=args.dropout,
                      model=args.model)
    if args.dump and rank == 0:
        Path(args.dump).write_text(res.model_dump_json())
    if args.fsdp_check:
        fsdp_check(rank, args.run_dir)
    D.destroy()
    return 0


if __name__ == "__main__":
    sys.exit(main())
