"""The OpenMind configuration tree: one pydantic model, validated before anything runs.

Every section forbids unknown keys, so a typo in a YAML file or a ``--set`` override is refused
with the dotted name of the field.  Reading a YAML file, applying ``dotted.key=value`` overrides
and wording validation errors is ``schemas.loading``.

This module imports pydantic and PyYAML only (no torch), so configs load anywhere.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"
DEFAULT_CONFIG = CONFIG_DIR / "default.yaml"
FULL_CONFIG = CONFIG_DIR / "full.yaml"


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


# --------------------------------------------------------------------------- run


class RunConfig(Strict):
    name: str | None = Field(None, description="run name; default: a timestamp")
    seed: int = 0
    max_auto_resumes: int = Field(3, ge=0, description="automatic resumes of a crashed run (self-healing "
                                  "deployments) since its last start by hand; past it the resume is refused")


# --------------------------------------------------------------------------- data


class SyntheticSource(Strict):
    num_captions: int = Field(1000, ge=0)
    num_vqa: int = Field(500, ge=0)
    image_size: int = Field(64, ge=16, le=1024, description="side of the generated images")
    language: Literal["en", "zh"] = "en"
    seed: int = 0


class JsonlSource(Strict):
    captions: str | None = Field(None, description="JSONL of {image, text}; image: a path or a list of paths")
    vqa: str | None = Field(None, description="JSONL of {image, question, answer and/or answers: [...]}; image: a "
                            "path or a list of paths")
    conversations: str | None = Field(None, description="JSONL of LLaVA {image?, conversations: [{from, value}]} "
                                      "or {image?|images?, messages: [{role, content}]} rows (detected per file); "
                                      "several images: a list, one <image> tag per image in a user turn, in order")


class CocoSource(Strict):
    annotations: str | None = Field(None, description="COCO captions annotation JSON")
    images: str | None = Field(None, description="folder holding the COCO images")
    limit: int | None = Field(1000, ge=1)


class HFSource(Strict):
    name: str | None = Field(None, description="hub id, local data set directory or Parquet files; "
                             "HuggingFaceM4/COCO and HuggingFaceM4/VQAv2 have built-in kinds and columns")
    config_name: str | None = None
    split: str = "train[:1000]"
    kind: Literal["caption", "vqa"] | None = Field(None, description="default: the preset's, else caption")
    columns: dict[str, str] = Field(
        default_factory=dict,
        description="our field -> their column path, e.g. {image: img, text: sentences.raw, answers: answers.answer}",
    )


class DataConfig(Strict):
    source: Literal["synthetic", "jsonl", "coco", "hf"] = "synthetic"
    synthetic: SyntheticSource = Field(default_factory=SyntheticSource)
    jsonl: JsonlSource = Field(default_factory=JsonlSource)
    coco: CocoSource = Field(default_factory=CocoSource)
    hf: HFSource | list[HFSource] = Field(default_factory=HFSource, description="one data set or a list of them")
    val_fraction: float = Field(0.1, ge=0.0, lt=1.0, description="share of images (text-only rows: of rows) "
                                "held out; rows that share an image share a split")
    shard_rows: int = Field(1_000_000, ge=1, description="at most this many rows per Parquet shard")
    shard_bytes: int = Field(256 << 20, ge=1, description="a shard closes once its rows' content (image bytes, "
                             "texts) reaches this many bytes")
    row_group_rows: int = Field(10_000, ge=1, description="at most this many rows per Parquet row group")
    row_group_bytes: int = Field(32 << 20, ge=1, description="a row group closes before its content passes this "
                                 "many bytes (one row at least)")
    max_text_chars: int = Field(4000, ge=1)
    max_image_bytes: int = Field(20_000_000, ge=1)
    max_image_pixels: int = Field(40_000_000, ge=1)
    max_images_per_row: int = Field(8, ge=1, description="a row naming more images is quarantined (too_many_images); "
                                    "the memory estimate assumes this many images per row at worst")
    num_workers: int | None = Field(None, ge=1, description="image decoding processes; default: all cores")

    def input_paths(self) -> list[tuple[str, str]]:
        """(config key, path) of every local input the chosen source names; a hub id is not one."""
        if self.source == "jsonl":
            named = [("data.jsonl.captions", self.jsonl.captions), ("data.jsonl.vqa", self.jsonl.vqa),
                     ("data.jsonl.conversations", self.jsonl.conversations)]
        elif self.source == "coco":
            named = [("data.coco.annotations", self.coco.annotations), ("data.coco.images", self.coco.images)]
        elif self.source == "hf":
            named = [(f"{where}.name", s.name) for where, s in self.hf_sources()
                     if s.name and (s.name.startswith((".", "/", "~")) or Path(s.name).expanduser().exists())]
        else:
            named = []
        return [(key, value) for key, value in named if value]

    def hf_sources(self) -> list[tuple[str, HFSource]]:
        """(config key, source) of every ``data.hf`` data set: ``data.hf`` or ``data.hf[i]``."""
        if isinstance(self.hf, HFSource):
            return [("data.hf", self.hf)]
        return [(f"data.hf[{i}]", s) for i, s in enumerate(self.hf)]

    @model_validator(mode="after")
    def _source_fields(self) -> "DataConfig":
        if self.source == "jsonl" and not (self.jsonl.captions or self.jsonl.vqa or self.jsonl.conversations):
            raise ValueError("data.source is 'jsonl' but none of data.jsonl.captions, vqa, conversations is set")
        if self.source == "coco" and not (self.coco.annotations and self.coco.images):
            raise ValueError("data.source is 'coco': set data.coco.annotations and data.coco.images")
        if self.source == "hf":
            if not self.hf_sources():
                raise ValueError("data.source is 'hf': data.hf is an empty list")
            for where, s in self.hf_sources():
                if not s.name:
                    raise ValueError(f"data.source is 'hf': set {where}.name (hub id or local path)")
        return self


# --------------------------------------------------------------------------- model


class VisionConfig(Strict):
    """A SigLIP vision tower.  Defaults are SigLIP-So400M patch14-384."""

    img_size: int = Field(384, ge=8)
    patch_size: int = Field(14, ge=1)
    embed_dim: int = Field(1152, ge=8)
    depth: int = Field(27, ge=1)
    num_heads: int = Field(16, ge=1)
    mlp_dim: int = Field(4304, ge=8)
    qkv_bias: bool = True
    layer_norm_eps: float = 1e-6
    use_flash_attn: bool = True
    feature_layer: int = Field(-2, description="hidden layer fed to the projector (-1 = last, -2 = LLaVA's)")
    pretrained: str | None = Field(None, description="SigLIP checkpoint directory or hub id")

    @model_validator(mode="after")
    def _shapes(self) -> "VisionConfig":
        if self.img_size < self.patch_size:
            raise ValueError(f"img_size {self.img_size} is smaller than patch_size {self.patch_size}")
        if self.embed_dim % self.num_heads:
            raise ValueError(f"embed_dim {self.embed_dim} is not divisible by num_heads {self.num_heads}")
        if not (-self.depth <= self.feature_layer <= self.depth) or self.feature_layer == 0:
            raise ValueError(f"feature_layer {self.feature_layer} must be in 1..{self.depth} or -{self.depth}..-1")
        return self

    @property
    def grid(self) -> int:
        """Patches per side: a stride-``patch_size`` convolution drops the remainder (384 // 14 = 27)."""
        return self.img_size // self.patch_size


class ProjectorConfig(Strict):
    type: Literal["token_pooling", "mlp", "pixel_shuffle"] = "token_pooling"
    pooling_kernel: int = Field(2, ge=1, le=8)
    hidden_dim: int | None = Field(None, description="MLP hidden width; default: the LM width")


LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


class LoraConfig(Strict):
    """LoRA adapters on the LM (PEFT), stage finetune only; see openmind_core.model.lora."""

    r: int = Field(16, ge=1, description="adapter rank")
    alpha: float = Field(32.0, gt=0.0, description="scaling numerator: updates are scaled by alpha / r")
    dropout: float = Field(0.05, ge=0.0, lt=1.0, description="dropout on the adapters' input")
    target_modules: list[str] = Field(default_factory=lambda: list(LORA_TARGETS), min_length=1,
                                      description="LM module names to adapt (default: attention and MLP projections)")


class LMConfig(Strict):
    """The causal language model: a hub id / local path, or an inline Llama-shaped config."""

    name_or_path: str | None = Field(None, description="AutoModelForCausalLM id or path, a .gguf file, or "
                                     "pkg:<package>/<file> (openmind_core.model.lm_files); None = inline config")
    gguf_file: str | None = Field(None, description="a GGUF file inside the name_or_path directory")
    hidden_size: int = Field(4096, ge=8)
    num_layers: int = Field(32, ge=1)
    num_heads: int = Field(32, ge=1)
    num_kv_heads: int = Field(8, ge=1)
    intermediate_size: int = Field(14336, ge=8)
    vocab_size: int | None = Field(None, description="None: the tokenizer's size")
    max_position_embeddings: int = Field(8192, ge=16)
    rope_theta: float = 500000.0
    tie_word_embeddings: bool = False
    pretrained_weights: bool = Field(True, description="with name_or_path: load weights (False: config only)")
    attn_implementation: Literal["auto", "flash_attention_2", "sdpa", "eager"] = Field(
        "auto", description="auto: flash-attn 2 when installed and the LM runs on CUDA in fp16/bf16, else SDPA")
    lora: LoraConfig | None = Field(None, description="LoRA adapters (PEFT) instead of training the LM; "
                                    "stage finetune only")

    @model_validator(mode="after")
    def _heads(self) -> "LMConfig":
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"num_heads {self.num_heads} is not divisible by num_kv_heads {self.num_kv_heads}")
        return self


class TokenizerConfig(Strict):
    name_or_path: str | None = Field(None, description="None: the LM's own (lm.name_or_path) when that is set, "
                                     "else a BPE trained on the curated corpus")
    gguf_file: str | None = Field(None, description="a GGUF file inside the name_or_path directory (default: "
                                  "the LM's, when the tokenizer is the LM's own)")
    vocab_size: int = Field(1000, ge=64, description="size of a trained tokenizer")
    image_token: str = "<image>"


class ModelConfig(Strict):
    vision: VisionConfig = Field(default_factory=VisionConfig)
    projector: ProjectorConfig = Field(default_factory=ProjectorConfig)
    lm: LMConfig = Field(default_factory=LMConfig)
    tokenizer: TokenizerConfig = Field(default_factory=TokenizerConfig)
    stage: Literal["align", "finetune", "full"] = "align"
    gradient_checkpointing: bool = False
    max_length: int = Field(2048, ge=8, description="text tokens per sample, image tokens not counted")
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    init_from: str | None = Field(None, description="a saved model directory (an align run's final/) whose "
                                  "projector weights initialise this model's projector")

    @model_validator(mode="after")
    def _lora_needs_finetune(self) -> "ModelConfig":
        if self.lm.lora is not None and self.stage != "finetune":
            raise ValueError(f"model.lm.lora is set but model.stage is {self.stage!r}: LoRA adapts the LM, which "
                             f"only stage 'finetune' trains (set model.stage=finetune or model.lm.lora=null)")
        return self

    @model_validator(mode="after")
    def _tokenizer_follows_lm(self) -> "ModelConfig":
        """A pretrained LM brings its own tokenizer: ``tokenizer.name_or_path`` defaults to ``lm.name_or_path``
        (a BPE trained here would index the LM's embeddings with meaningless ids)."""
        if self.lm.name_or_path and self.tokenizer.name_or_path is None:
            self.tokenizer.name_or_path = self.lm.name_or_path
            self.tokenizer.gguf_file = self.tokenizer.gguf_file or self.lm.gguf_file
        return self


# --------------------------------------------------------------------------- train


class SpikeConfig(Strict):
    """The loss-spike guard (openmind_core.training.guard.SpikeDetector says what it follows)."""

    z_threshold: float = Field(6.0, gt=0.0, description="a loss more than this many rolling deviations above the "
                               "rolling mean is bad (OLMo-core's 6 sigma)")
    window: int = Field(64, ge=2, description="good losses in the rolling mean and deviation")
    min_history: int = Field(16, ge=1, description="good losses (after the LR warm-up) before any is judged")
    rel_floor: float = Field(0.05, ge=0.0, description="the deviation is at least rel_floor x the rolling mean")
    patience: int = Field(8, ge=1, description="consecutive bad steps that make a spike (a bump that recovers "
                          "sooner is no rollback)")
    factor: float = Field(10.0, gt=1.0, description="one loss above factor x the window's largest is a spike at once")
    max_skipped_in_row: int = Field(3, ge=1, description="skipped steps in a row that count as a spike")
    max_rollbacks: int = Field(3, ge=0)
    lr_factor: float = Field(0.5, gt=0.0, le=1.0, description="multiply the LR by this after a rollback "
                             "(< 1: the same instability is not replayed)")
    grad_norm_threshold: float = Field(1000.0, gt=0.0, description="skip steps whose pre-clip norm is above")


class WandbConfig(Strict):
    mode: Literal["offline", "online", "disabled"] = "offline"
    project: str = "openmind"
    name: str | None = None


class TrainConfig(Strict):
    epochs: int = Field(1, ge=1)
    max_steps: int | None = Field(None, ge=1, description="stop after this many optimizer steps")
    micro_batch_size: int = Field(8, ge=1)
    grad_accum: int = Field(1, ge=1)
    lr: float = Field(1e-3, gt=0.0)
    lr_projector: float | None = Field(None, gt=0.0)
    lr_lm: float | None = Field(None, gt=0.0)
    lr_vision: float | None = Field(None, gt=0.0)
    weight_decay: float = Field(0.0, ge=0.0)
    betas: tuple[float, float] = (0.9, 0.95)
    warmup_ratio: float = Field(0.03, ge=0.0, lt=1.0)
    clip_grad_norm: float = Field(1.0, gt=0.0)
    amp: Literal["auto", "bf16", "fp16", "off"] = "auto"
    save_steps: int = Field(50, ge=1)
    eval_steps: int = Field(50, ge=1)
    keep_last: int = Field(3, ge=1)
    num_workers: int = Field(0, ge=0)
    nproc: int = Field(1, ge=1, description="processes; >1 launches torchrun")
    strategy: Literal["auto", "ddp", "fsdp"] = Field(
        "auto", description="with more than one process: ddp (auto) replicates the model, fsdp shards it (FSDP2)")
    deterministic: bool = False
    log_every: int = Field(10, ge=1)
    packing: bool = Field(False, description="pack each micro-batch's samples into rows of up to pack_length tokens "
                          "(first-fit-decreasing; samples isolated: position ids restart, attention never crosses)")
    pack_length: int | None = Field(None, ge=8, description="tokens per packed row; default: the longest sample "
                                    "(model.max_length text tokens + BOS + one image's tokens)")
    max_tokens_per_batch: int | None = Field(
        None, ge=1, description="unpacked: a micro-batch takes the next samples while samples x the longest stays "
        "within this many tokens (a variable number of samples; one process); None: micro_batch_size samples")
    spike: SpikeConfig = Field(default_factory=SpikeConfig)
    wandb: WandbConfig = Field(default_factory=WandbConfig)

    @model_validator(mode="after")
    def _token_budget(self) -> "TrainConfig":
        if self.max_tokens_per_batch is None:
            return self
        if self.packing:
            raise ValueError("train.max_tokens_per_batch is for unpacked batches: with train.packing the micro-batch's "
                             "samples are packed into rows of train.pack_length; set one of the two")
        if self.nproc > 1:
            raise ValueError(f"train.max_tokens_per_batch works in one process (train.nproc is {self.nproc}): ranks "
                             "would take different numbers of samples per step; use train.packing instead")
        return self


# --------------------------------------------------------------------------- inference


class InferenceConfig(Strict):
    max_new_tokens: int = Field(16, ge=1)
    max_samples: int = Field(100, ge=1, description="held-out samples answered per kind")
    batch_size: int = Field(16, ge=1)
    do_sample: bool = False
    temperature: float = Field(1.0, gt=0.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    extra_prompts: list[str] = Field(default_factory=lambda: ["这张图片里有什么？"])
    thinking: bool | None = Field(None, description="generation prompts let a reasoning chat template think "
                                  "(enable_thinking); None: when the training answers hold <think> traces")


class MemoryConfig(Strict):
    budget_gb: float = Field(40.0, gt=0.0, description="GPU memory budget (the guide's one A100)")


class OpenMindConfig(Strict):
    run: RunConfig = Field(default_factory=RunConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    inference: InferenceConfig = Field(default_factory=InferenceConfig)
    memory: MemoryConfig = Field(default_factory=MemoryConfig)

    def fingerprint(self, *sections: str) -> str:
        """sha256 (16 hex) of the given sections (all when none), for cache keys and resume checks."""
        dump = self.model_dump(mode="json")
        part = {k: dump[k] for k in sections} if sections else dump
        return hashlib.sha256(json.dumps(part, sort_keys=True).encode()).hexdigest()[:16]

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False, allow_unicode=True)
