"""Component smoke tests on the configured model: the guide's Day 1-2 checks, run before training.

Encoder output shape, projector output shape and token count, one loader batch (placeholders
match features, labels present), and one forward + backward pass (finite loss; gradients on
trainable parameters only).  Every check runs; the report says which failed and why.

They run as training will: on the training device (CUDA when there is one), with the model in its
configured dtypes (frozen towers in bf16/fp16, trainable modules in fp32) and under the training
autocast (``train.amp``), so a dtype or device mismatch fails here, before training starts.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import torch

from openmind_core.app.tokenizer import load_prepared
from openmind_core.app.train import build_datasets, build_model
from openmind_core.data.collate import item_images
from openmind_core.model.image_tokens import tokens_for_config
from openmind_core.training.precision import autocast, resolve_amp
from schemas import Check, CuratedDataset, OpenMindConfig, SmokeReport, TokenizerReport

log = logging.getLogger(__name__)


class SmokeError(RuntimeError):
    """A component check failed; the message names the check and the reason."""


def _run(name: str, fn: Callable[[], str]) -> Check:
    t0 = time.perf_counter()
    try:
        detail, passed = fn(), True
    except Exception as e:  # a check reports its failure instead of stopping the others
        detail, passed = f"{type(e).__name__}: {e}", False
    check = Check(name=name, passed=passed, detail=detail, seconds=round(time.perf_counter() - t0, 3))
    (log.info if passed else log.error)("smoke %-16s %s  %s", name, "ok" if passed else "FAILED", detail)
    return check


def run_smoke(cfg: OpenMindConfig, curated: CuratedDataset, tokenizer_report: TokenizerReport,
              device: str | torch.device | None = None) -> SmokeReport:
    """Run every check on the configured model (built with the run's tokenizer) and report each."""
    tokenizer = load_prepared(tokenizer_report)
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model = build_model(cfg, tokenizer, device=device)
    model.to(device)
    amp = resolve_amp(cfg.train.amp, device)
    v = cfg.model.vision
    grid = v.grid
    expected_tokens = tokens_for_config(cfg.model)
    lm_width = model.language_model.get_input_embeddings().weight.shape[1]
    state: dict = {}

    def encoder() -> str:
        pixels = torch.randn(2, 3, v.img_size, v.img_size, device=device)
        vision_dtype = next(model.vision_encoder.parameters()).dtype
        with torch.no_grad(), autocast(amp):
            feats = model.vision_encoder(pixels.to(vision_dtype))
        want = (2, grid * grid, v.embed_dim)
        if tuple(feats.shape) != want:
            raise AssertionError(f"vision encoder gave {tuple(feats.shape)}, expected {want}")
        if not torch.isfinite(feats).all():
            raise AssertionError("vision encoder output has NaN/inf")
        state["feats"] = feats
        return f"[2, 3, {v.img_size}, {v.img_size}] -> {list(feats.shape)} ({grid} x {grid} patches)"

    def projector() -> str:
        feats = state.get("feats")
        if feats is None:
            raise AssertionError("no encoder output to project (encoder check failed)")
        with torch.no_grad(), autocast(amp):
            out = model.projector(feats.to(model.projector.linear_1.weight.dtype))
        want = (2, expected_tokens, lm_width)
        if tuple(out.shape) != want:
            raise AssertionError(f"projector gave {tuple(out.shape)}, expected {want}")
        return (f"{list(feats.shape)} {str(feats.dtype).replace('torch.', '')} -> {list(out.shape)} "
                f"({cfg.model.projector.type}, k={cfg.model.projector.pooling_kernel}) on {device.type}, amp {amp.name}")

    def loader() -> str:
        train, _, collate = build_datasets(cfg, curated, model)
        items = [train[i] for i in range(min(4, len(train)))]
        batch = collate(items)  # packed (train.packing) or padded: each sample is checked on its own
        n_img = [int((it["input_ids"] == model.image_token_id).sum()) for it in items]
        want = [expected_tokens * len(item_images(it)) for it in items]  # per image; none for a text-only row
        if n_img != want:
            raise AssertionError(f"image placeholders per sample {n_img}, expected {want} "
                                 f"({expected_tokens} per image)")
        if not all(bool((it["labels"] != -100).any()) for it in items):
            raise AssertionError("a sample has no target tokens (all labels masked)")
        state["batch"] = batch
        shapes = {k: list(t.shape) for k, t in batch.items() if isinstance(t, torch.Tensor)}
        return f"{len(train)} train rows; batch {shapes}"

    def forward_backward() -> str:
        batch = state.get("batch")
        if batch is None:
            raise AssertionError("no loader batch (loader check failed)")
        inputs = {k: t.to(device) if isinstance(t, torch.Tensor) else t for k, t in batch.items() if k != "sample_ids"}
        model.train()
        model.zero_grad(set_to_none=True)
        with autocast(amp):
            loss = model(**inputs).loss
        if not torch.isfinite(loss):
            raise AssertionError(f"loss is {loss.item()}")
        loss.backward()
        missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
        leaked = [n for n, p in model.named_parameters() if not p.requires_grad and p.grad is not None]
        bad = [n for n, p in model.named_parameters() if p.grad is not None and not torch.isfinite(p.grad).all()]
        if missing or leaked or bad:
            raise AssertionError(
                f"gradients wrong: {len(missing)} trainable without grad {missing[:3]}, "
                f"{len(leaked)} frozen with grad {leaked[:3]}, {len(bad)} non-finite {bad[:3]}"
            )
        model.zero_grad(set_to_none=True)
        return f"loss {loss.item():.3f}; gradients on all {sum(p.requires_grad for p in model.parameters())} trainable tensors only"

    checks = [
        _run("vision_encoder", encoder),
        _run("projector", projector),
        _run("loader_batch", loader),
        _run("forward_backward", forward_backward),
    ]
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    model = state = None  # training builds its own: free the device for it
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return SmokeReport(
        checks=checks,
        passed=all(c.passed for c in checks),
        total_params=total,
        trainable_params=trainable,
        image_tokens=expected_tokens,
        tokenizer_dir=tokenizer_report.path,
    )


def raise_if_failed(report: SmokeReport) -> None:
    failed = [c for c in report.checks if not c.passed]
    if failed:
        raise SmokeError("; ".join(f"smoke check {c.name} failed: {c.detail}" for c in failed))
