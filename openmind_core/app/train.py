"""The training stage: the configured model and data built, trained with the ``ProductionTrainer``.

``train_from_config`` builds the model from ``run.seed`` (a rebuild has identical frozen weights,
so a resume finds what its checkpoints expect), the datasets over the curated lake, and trains,
resuming from ``<run>/checkpoints`` when it can; then ``final/`` is reloaded and compared with the
trained model.  The same function runs in one process (the train task) and in every rank under
torchrun (``openmind_core.app.train_entry``).

Run directory (``<lake>/runs/<run>/``)::

    config.yaml      the resolved config
    inputs.json      the local inputs' stamps when the run started (the resume check reads them)
    tokenizer/       the tokenizer every stage uses (``openmind_core.app.tokenizer``)
    checkpoints/     trainer checkpoints (resume, rollback)
    best/ final/     save_pretrained directories
    metrics.jsonl    one line per optimizer step + events
    report.json      the flow's Week1Report
"""

from __future__ import annotations

import logging
import os
import signal
from pathlib import Path

import torch
import torch.distributed as dist

from openmind_core import interrupt
from openmind_core.app.run_dir import check_lake_version, model_fingerprint
from openmind_core.data.collate import Collator
from openmind_core.data.convert import CONVERTER_VERSION
from openmind_core.data.dataset import VLMDataset
from openmind_core.data.packing import PackingCollator
from openmind_core.model import builder as model_builder
from openmind_core.model.modeling import MultimodalReasoningModel
from openmind_core.model.tokenizer import load_tokenizer
from openmind_core.training import CheckpointManager, ProductionTrainer, seed_everything
from openmind_core.training.distributed import device_for
from openmind_core.training.strategies import full_model_state_dict, resolve_strategy
from schemas import CuratedDataset, OpenMindConfig, TrainingResult

log = logging.getLogger(__name__)


class PipelineError(RuntimeError):
    """A stage cannot go on; the message says which and why."""


# --------------------------------------------------------------------------- model and data


def build_model(cfg: OpenMindConfig, tokenizer, device=None):
    """The configured model, initialised from ``run.seed`` (a rebuild has identical frozen weights).

    ``device``: where the towers are created or loaded (default CPU; the trainer moves or shards it).
    """
    seed_everything(cfg.run.seed)
    return model_builder.build_model(cfg.model, tokenizer, device=device)  # stage, dtype, checkpointing


def build_datasets(cfg: OpenMindConfig, curated: CuratedDataset, model):
    """(train, validation or None, collator) over the curated lake, encoded for ``model``."""
    kwargs = dict(
        tokenizer=model.tokenizer,
        image_size=model.img_size,
        num_image_tokens=model.num_image_tokens,
        image_token_id=model.image_token_id,
        max_length=sequence_length(cfg, model.num_image_tokens),
        image_mean=model.config.image_mean,
        image_std=model.config.image_std,
        image_resample=model.config.image_resample,
    )
    if not curated.splits.get("train"):
        raise PipelineError(f"the curated data set {curated.root} has no training rows")
    train = VLMDataset(curated, "train", **kwargs)
    # a tiny data set may have no validation rows: train without evaluation then
    val = VLMDataset(curated, "validation", **kwargs) if curated.splits.get("validation") else None
    pad = model.tokenizer.pad_token_id
    pad = pad if pad is not None else 0
    if cfg.train.packing:  # padding-free: the micro-batch's samples packed into rows, isolated
        return train, val, PackingCollator(pad, pack_length(cfg, model.num_image_tokens))
    return train, val, Collator(pad)


def pack_length(cfg: OpenMindConfig, image_tokens: int) -> int:
    """Tokens per packed row: ``train.pack_length``, default the longest sample (``model.max_length`` text
    tokens, the BOS and one image's ``image_tokens``)."""
    return cfg.train.pack_length or 1 + image_tokens + cfg.model.max_length


def sequence_length(cfg: OpenMindConfig, image_tokens: int) -> int:
    """The text budget a sample is truncated to (image and template tokens kept whole): ``model.max_length``,
    or less when packing with a ``pack_length`` a longest sample would not fit."""
    if not cfg.train.packing:
        return cfg.model.max_length
    budget = min(cfg.model.max_length, pack_length(cfg, image_tokens) - 1 - image_tokens)
    if budget < 1:
        raise PipelineError(f"train.pack_length {cfg.train.pack_length} leaves no room for text beside an image's "
                            f"{image_tokens} tokens: set it to at least {image_tokens + 2}")
    return budget


# --------------------------------------------------------------------------- training


def train_from_config(
    cfg: OpenMindConfig,
    curated: CuratedDataset,
    run_dir: str | Path,
    tokenizer_dir: str | Path,
    progress=None,
    rank: int = 0,
    world_size: int = 1,
) -> TrainingResult:
    """Build model and data from the config, train (resuming from ``run_dir`` when it can).

    Under the CLI a Ctrl-C or SIGTERM stops training at the next step boundary (``interrupt``): it
    raises KeyboardInterrupt, the newest checkpoint stays the newest, and a rerun resumes from it.
    """
    run_dir = Path(run_dir)
    check_lake_version(run_dir, curated, CONVERTER_VERSION)  # before the model is built
    tokenizer = load_tokenizer(tokenizer_dir)
    # one process or DDP: the towers are created / loaded straight on this rank's GPU; FSDP builds on
    # the CPU and shards before anything reaches the device
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    sharded = resolve_strategy(cfg.train.strategy, world_size) == "fsdp"
    model = build_model(cfg, tokenizer, device=None if sharded else device_for(local_rank))
    train, val, collate = build_datasets(cfg, curated, model)
    fingerprint = {"model": model_fingerprint(cfg, run_dir), "data": curated.version}
    def report(info: dict) -> None:  # called at step boundaries: where a requested stop happens
        if world_size == 1:  # under torchrun only every_step stops, after the ranks agreed (one collective)
            interrupt.check()
        if progress is not None:
            progress(info)

    def every_step(record: dict) -> None:  # under torchrun: every rank stops at the same step, or none
        _stop_together(model)
        interrupt.check()

    trainer = ProductionTrainer(
        model, train, val, collate, cfg.train, run_dir,
        seed=cfg.run.seed, fingerprint=fingerprint, progress=report, rank=rank, world_size=world_size,
        at_step=every_step if world_size > 1 else None,
    )
    # under torchrun no rank interrupts itself mid-step (the others would wait in a collective): they
    # stop together at a boundary, and the launcher kills what has not stopped after its grace
    with interrupt.deferred(grace=None if world_size > 1 else interrupt.GRACE):
        try:
            result = trainer.train()
        except Exception as e:  # e.g. loader workers killed by the same Ctrl-C: the stop, not a failure
            if interrupt.requested():
                raise KeyboardInterrupt from e
            raise
    lora = cfg.model.lm.lora
    result.stage, result.started_from = cfg.model.stage, cfg.model.init_from
    result.lora = lora.model_dump(mode="json") if lora is not None else None
    if not result.checkpoints:
        manager = CheckpointManager(run_dir / "checkpoints")
        result.checkpoints = [str(manager.path(step)) for step in manager.steps()]
    # every rank runs the trained model's forward (a collective under FSDP); rank 0 compares
    equal = check_reload(model, Path(result.final_dir), val or train, collate, reload=rank == 0)
    if rank == 0:
        result.reload_equal = equal
    return result


def _stop_together(model) -> None:
    """Under torchrun: when any rank was asked to stop, every rank stops at this step boundary (a rank that
    went on alone would wait in the next collective for ever).  One tiny all-reduce a step."""
    if not dist.is_initialized():
        return
    flag = torch.tensor([1.0 if interrupt.requested() is not None else 0.0],
                        device=next(model.parameters()).device if dist.get_backend() == "nccl" else "cpu")
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    if flag.item() and interrupt.requested() is None:
        interrupt.request(signal.SIGTERM)


@torch.no_grad()
def check_reload(model, model_dir: Path, dataset, collate, reload: bool = True) -> bool | None:
    """Reload ``model_dir`` with from_pretrained (on the CPU); True when it equals the in-memory model.

    On a CPU both models answer one batch and their logits must be equal.  On a GPU the reloaded copy
    stays on the CPU (never a second copy on the device) and every tensor must equal the trained
    model's, brought over one at a time (gathered from the shards under FSDP).  ``reload=False``
    (ranks other than 0) only takes part in the collectives a sharded model needs; it returns None.
    """
    device = next(model.parameters()).device
    sharded = any(type(p).__name__ == "DTensor" for p in model.parameters())
    if device.type == "cpu" and not sharded:
        batch = collate([dataset[i] for i in range(min(2, len(dataset)))])
        batch.pop("sample_ids", None)
        batch.pop("labels", None)
        model.eval()
        a = model(**batch).logits
        if not reload:
            return None
        reloaded = MultimodalReasoningModel.from_pretrained(model_dir).eval()
        b = reloaded(**batch).logits
        equal = bool(torch.equal(a, b))
        if not equal:
            log.warning("final/ reloaded gives different logits (max |diff| %.3g)", (a - b).abs().max().item())
        return equal
    full = full_model_state_dict(model) if sharded else None  # a collective: every rank
    if not reload:
        return None
    reloaded = MultimodalReasoningModel.from_pretrained(model_dir).state_dict()
    own = full if full is not None else model.state_dict()
    diff = [k for k, v in own.items() if k not in reloaded or not torch.equal(v.detach().cpu(), reloaded[k])]
    if diff:
        log.warning("final/ reloaded differs from the trained model in %d tensor(s), e.g. %s", len(diff), diff[:3])
    return not diff
