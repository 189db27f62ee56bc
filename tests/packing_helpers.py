"""A tiny real ``MultimodalReasoningModel`` and a mixed-length data set for the packing tests.

``PackDataset`` holds synthetic samples shaped like an instruction mix: lengths spread several
fold, about 15% text-only rows, 20% rows with two images (each image a run of the model's
``num_image_tokens`` placeholders, in order), the first tokens of every sample masked like a
prompt.  Items are exactly ``VLMDataset``'s (``pixel_values`` None, ``[3, H, W]`` or
``[k, 3, H, W]``).  ``run_packed`` trains it with the ``ProductionTrainer`` packed or padded (the
same samples per micro-batch either way).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

CORPUS = ["a red circle on a blue background", "What color is the circle?", "Describe the image.",
          "a green square next to a small yellow triangle", "red", "blue", "green"] * 10


def tiny_tokenizer():
    from openmind_core.model import build_tokenizer
    from schemas.loading import load_config

    return build_tokenizer(load_config().model.tokenizer.model_copy(update={"vocab_size": 320}), CORPUS)


def tiny_vlm(stage: str = "full", lora: bool = False, tok=None, seed: int = 0):
    """The default config's tiny model (fp32, SDPA) for ``stage``; ``lora``: PEFT adapters on the LM."""
    from openmind_core.model import build_model
    from schemas.loading import load_config

    over = [f"model.stage={stage}", "model.max_length=128"]
    if lora:
        over += ["model.lm.lora.r=4", "model.lm.lora.dropout=0.0"]
    cfg = load_config(overrides=over).model
    torch.manual_seed(seed)
    return build_model(cfg, tok if tok is not None else tiny_tokenizer())


class PackDataset(torch.utils.data.Dataset):
    def __init__(self, model, n: int = 32, seed: int = 0, longest: int = 60) -> None:
        g = torch.Generator().manual_seed(seed)
        self.n_img, self.img_id, self.size = model.num_image_tokens, model.image_token_id, model.img_size
        vocab = model.language_model.config.vocab_size
        self.rows: list[tuple[torch.Tensor, torch.Tensor, int]] = []
        for i in range(n):
            images = 0 if i % 7 == 3 else (2 if i % 5 == 1 else 1)  # ~15% text-only, 20% two images
            text = int(torch.randint(4, longest, (1,), generator=g))
            ids = torch.randint(self.img_id + 1, vocab, (text,), generator=g)  # never the placeholder
            prompt = int(torch.randint(1, max(2, text // 2), (1,), generator=g))
            parts, labels = [ids[:1]], [torch.full((1,), -100)]
            for _ in range(images):  # image runs after the first token, in order
                parts.append(torch.full((self.n_img,), self.img_id))
                labels.append(torch.full((self.n_img,), -100))
            parts.append(ids[1:])
            tail = ids[1:].clone()
            tail[: prompt - 1] = -100
            labels.append(tail)
            self.rows.append((torch.cat(parts), torch.cat(labels), images))
        self.sample_ids = [f"p{i:03d}" for i in range(n)]

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict[str, Any]:
        ids, labels, images = self.rows[i]
        g = torch.Generator().manual_seed(1000 + i)  # the same pixels every time, in any worker
        px = torch.randn(images, 3, self.size, self.size, generator=g) if images else None
        if images == 1:
            px = px[0]
        return {"sample_id": self.sample_ids[i], "input_ids": ids, "labels": labels, "pixel_values": px}


def collator(packed: bool, pack_length: int = 128):
    from openmind_core.data.collate import Collator
    from openmind_core.data.packing import PackingCollator

    return PackingCollator(0, pack_length) if packed else Collator(0)


def run_packed(run_dir: str | Path, cfg, *, packed: bool = True, rank: int = 0, world_size: int = 1,
               n: int = 32, stage: str = "full", lora: bool = False):
    """Train the tiny model on ``PackDataset`` (packed or padded) with the ``ProductionTrainer``."""
    from openmind_core.training import ProductionTrainer

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model = tiny_vlm(stage, lora)
        train, val = PackDataset(model, n), PackDataset(model, 8, seed=5)
        trainer = ProductionTrainer(model, train, val, collator(packed), cfg, run_dir, seed=7,
                                    fingerprint={"model": f"tiny-{stage}-{lora}", "data": f"pack-{n}"},
                                    rank=rank, world_size=world_size)
        return trainer.train()
    finally:
        torch.set_num_threads(threads)
