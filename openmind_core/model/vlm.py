"""MultimodalReasoningModel: SigLIP vision tower -> projector -> causal LM, as one ``nn.Module``.

Submodules are named ``vision_encoder``, ``projector`` and ``language_model`` (the trainer groups
learning rates by these prefixes).  A sample's ids hold ``num_image_tokens`` copies of the image
placeholder (``openmind_core.prompting.encode`` puts them there); ``forward`` embeds the text and
replaces the placeholder embeddings with projected image features (``masked_scatter``, as
transformers' LLaVA does) after a hard check that the counts match -- a mismatch raises instead of
silently misaligning.  Labels (-100 on bos/image/prompt positions) go to the LM, whose loss is
the standard shifted mean cross-entropy over label tokens.

``generate`` is batched with left padding, explicit position ids and a KV cache; greedy decoding
is deterministic and a batch decodes exactly as its rows would alone.  ``save_pretrained`` writes
``openmind_config.json`` (the ModelConfig, the format version and the towers' transformers
configs, so reloading never needs the hub), ``model.safetensors`` (tied weights stored once) and
the tokenizer files; ``from_pretrained`` restores the model bit for bit.
"""

from __future__ import annotations

import inspect
import json
import logging
import os
from pathlib import Path

import torch
from safetensors.torch import load_model, save_file, save_model
from torch import nn
from transformers import AutoConfig, DynamicCache, SiglipVisionConfig, SiglipVisionModel

from openmind_core import prompting
from openmind_core.imaging import preprocess_images
from openmind_core.io import atomic_write_json, fsync_dir
from openmind_core.model.language import build_language_model
from openmind_core.model.projector import ImprovedProjector
from openmind_core.model.tokenizer import load_tokenizer
from openmind_core.model.tokens import tokens_for_config
from openmind_core.model.vision import ImprovedVisionEncoder, enable_checkpointing

logger = logging.getLogger(__name__)
_TABLES_LOGGED: set[tuple[str, str]] = set()

FORMAT_VERSION = 1
CONFIG_FILE = "openmind_config.json"
WEIGHTS_FILE = "model.safetensors"
MODULES = ("vision_encoder", "projector", "language_model")
STAGES = {
    "align": ("projector",),
    "finetune": ("projector", "language_model"),
    "full": MODULES,
}
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class MultimodalReasoningModel(nn.Module):
    """The vision-language model for a ``schemas.config.ModelConfig`` and its tokenizer."""

    def __init__(
        self,
        config,
        tokenizer,
        *,
        _vision_config: dict | None = None,
        _lm_config: dict | None = None,
    ) -> None:
        super().__init__()
        self.config = config
        self.tokenizer = tokenizer
        image_token_id = tokenizer.convert_tokens_to_ids(config.tokenizer.image_token)
        if image_token_id is None or image_token_id == tokenizer.unk_token_id:
            raise ValueError(f"the tokenizer has no image token {config.tokenizer.image_token!r}; build it with build_tokenizer")
        self.image_token_id = int(image_token_id)
        self.num_image_tokens = tokens_for_config(config)
        self.img_size = config.vision.img_size
        self.stage = None

        v = config.vision
        if _vision_config is not None:
            siglip_cfg = SiglipVisionConfig.from_dict(_vision_config)
            siglip_cfg._attn_implementation = "sdpa"
            self.vision_encoder = ImprovedVisionEncoder(
                feature_layer=v.feature_layer, use_flash_attn=v.use_flash_attn, _siglip=SiglipVisionModel(siglip_cfg)
            )
        elif v.pretrained:
            self.vision_encoder = ImprovedVisionEncoder.from_pretrained(v.pretrained, v.feature_layer, v.use_flash_attn)
            enc = self.vision_encoder
            got = (enc.img_size, enc.patch_size, enc.embed_dim)
            if got != (v.img_size, v.patch_size, v.embed_dim):
                raise ValueError(
                    f"model.vision.pretrained {v.pretrained!r} has img_size/patch_size/embed_dim {got}, but "
                    f"model.vision says {(v.img_size, v.patch_size, v.embed_dim)}: make the config match the checkpoint"
                )
        else:
            self.vision_encoder = ImprovedVisionEncoder.from_config(v)

        lm_hf_cfg = AutoConfig.for_model(**_lm_config) if _lm_config is not None else None
        self.language_model = build_language_model(config.lm, tokenizer, hf_config=lm_hf_cfg)
        self.projector = ImprovedProjector.from_config(
            config.projector, self.vision_encoder.embed_dim, self.language_model.config.hidden_size
        )
        self.to(DTYPES[config.dtype])
        self.freeze(config.stage)
        if config.gradient_checkpointing:
            self.gradient_checkpointing_enable()

    @classmethod
    def from_config(cls, config, tokenizer) -> "MultimodalReasoningModel":
        return cls(config, tokenizer)

    # ------------------------------------------------------------------ embedding

    @property
    def device(self) -> torch.device:
        return self.projector.linear_1.weight.device

    def encode_images(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """``[B, 3, H, W]`` -> projected image tokens ``[B, num_image_tokens, lm_hidden]``."""
        feats = self.vision_encoder(pixel_values.to(self.vision_encoder.siglip.embeddings.patch_embedding.weight.dtype))
        return self.projector(feats.to(self.projector.linear_1.weight.dtype))

    def embed_inputs(self, input_ids: torch.Tensor, pixel_values: torch.Tensor | None) -> torch.Tensor:
        """Text embeddings with the image placeholders replaced by image features."""
        embeds = self.language_model.get_input_embeddings()(input_ids)
        image_mask = input_ids == self.image_token_id
        n_images = 0 if pixel_values is None else pixel_values.shape[0]
        if input_ids.device.type != "meta":  # meta tensors have no values to count
            n_placeholders = int(image_mask.sum())
            if n_placeholders != n_images * self.num_image_tokens:
                raise ValueError(
                    f"Image features and image tokens do not match: input_ids hold {n_placeholders} image "
                    f"tokens (id {self.image_token_id}), but {n_images} image(s) x {self.num_image_tokens} "
                    f"tokens per image = {n_images * self.num_image_tokens} features"
                )
        if n_images == 0:
            return embeds
        feats = self.encode_images(pixel_values).to(embeds.dtype)
        return embeds.masked_scatter(image_mask.unsqueeze(-1).expand_as(embeds), feats)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        **lm_kwargs,
    ):
        """Returns the LM's ``CausalLMOutputWithPast`` (``.loss``/``["loss"]``, ``.logits``)."""
        embeds = self.embed_inputs(input_ids, pixel_values)
        return self.language_model(
            inputs_embeds=embeds, attention_mask=attention_mask, labels=labels, use_cache=False, **lm_kwargs
        )

    # ------------------------------------------------------------------ generation

    def _prepare_prompts(self, prompts: str | list[str], batch: int) -> tuple[torch.Tensor, torch.Tensor]:
        if isinstance(prompts, str):
            prompts = [prompts] * batch
        if len(prompts) != batch:
            raise ValueError(f"generate: {batch} images but {len(prompts)} prompts")
        ids = [
            prompting.encode(self.tokenizer, p, None, self.num_image_tokens, self.image_token_id,
                             self.config.max_length).input_ids
            for p in prompts
        ]
        width = max(len(x) for x in ids)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        input_ids = torch.full((batch, width), pad, dtype=torch.long)
        mask = torch.zeros((batch, width), dtype=torch.long)
        for i, row in enumerate(ids):  # left padding: the last position is every row's last prompt token
            input_ids[i, width - len(row):] = torch.tensor(row)
            mask[i, width - len(row):] = 1
        return input_ids, mask

    @staticmethod
    def _pick(logits: torch.Tensor, do_sample: bool, temperature: float, top_p: float,
              generator: torch.Generator | None) -> torch.Tensor:
        if not do_sample:
            return logits.argmax(-1)
        logits = logits.float() / max(temperature, 1e-5)
        if top_p < 1.0:
            sorted_logits, order = logits.sort(-1, descending=True)
            cum = sorted_logits.softmax(-1).cumsum(-1)
            drop = cum - sorted_logits.softmax(-1) > top_p  # keep the smallest prefix reaching top_p
            sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
            logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
        probs = logits.softmax(-1)
        return torch.multinomial(probs, 1, generator=generator).squeeze(-1)

    @torch.no_grad()
    def generate(
        self,
        images,
        prompts: str | list[str],
        max_new_tokens: int = 32,
        do_sample: bool = False,
        temperature: float = 1.0,
        top_p: float = 1.0,
        seed: int | None = None,
        ignore_eos: bool = False,
    ) -> list[str]:
        """Answer ``prompts`` (instructions) about ``images`` (PIL / bytes list or ``[B,3,H,W]``).

        ``ignore_eos=True`` always decodes ``max_new_tokens`` tokens (benchmarks).
        """
        if isinstance(images, torch.Tensor):
            pixel_values = images if images.dim() == 4 else images.unsqueeze(0)
        else:
            images = list(images) if isinstance(images, (list, tuple)) else [images]
            pixel_values = preprocess_images(images, self.img_size)
        device = self.device
        batch = pixel_values.shape[0]
        input_ids, mask = self._prepare_prompts(prompts, batch)
        input_ids, mask, pixel_values = input_ids.to(device), mask.to(device), pixel_values.to(device)
        generator = None
        if do_sample and seed is not None:
            generator = torch.Generator(device=device).manual_seed(seed)
        eos = None if ignore_eos else self.tokenizer.eos_token_id
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0

        lm = self.language_model
        cache = DynamicCache(config=lm.config)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        embeds = self.embed_inputs(input_ids, pixel_values)
        cache_kw = "cache" if "cache" in inspect.signature(lm.forward).parameters else "past_key_values"
        out = lm(inputs_embeds=embeds, attention_mask=mask, position_ids=positions, use_cache=True,
                 logits_to_keep=1, **{cache_kw: cache})
        finished = torch.zeros(batch, dtype=torch.bool, device=device)
        generated: list[torch.Tensor] = []
        for step in range(max_new_tokens):
            nxt = self._pick(out.logits[:, -1, :], do_sample, temperature, top_p, generator)
            nxt = torch.where(finished, torch.full_like(nxt, pad), nxt)
            generated.append(nxt)
            if eos is not None:
                finished |= nxt == eos
            if bool(finished.all()) or step == max_new_tokens - 1:
                break
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=-1)
            positions = positions[:, -1:] + 1
            out = lm(input_ids=nxt.unsqueeze(-1), attention_mask=mask, position_ids=positions,
                     use_cache=True, **{cache_kw: cache})
        if not generated:
            return [""] * batch
        tokens = torch.stack(generated, dim=1).tolist()
        texts = []
        for row in tokens:
            if eos is not None and eos in row:
                row = row[: row.index(eos)]
            texts.append(self.tokenizer.decode(row, skip_special_tokens=True).strip())
        return texts

    # ------------------------------------------------------------------ training controls

    def parameter_counts(self) -> dict[str, tuple[int, int]]:
        """``{module: (trainable, total)}`` for the three towers and ``"total"``."""
        counts: dict[str, tuple[int, int]] = {}
        for name in MODULES:
            params = list(getattr(self, name).parameters())
            counts[name] = (sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params))
        counts["total"] = (sum(c[0] for c in counts.values()), sum(c[1] for c in counts.values()))
        return counts

    def parameter_table(self) -> str:
        lines = [f"{'module':<16}{'trainable':>16}{'frozen':>16}{'total':>16}"]
        for name, (tr, tot) in self.parameter_counts().items():
            lines.append(f"{name:<16}{tr:>16,}{tot - tr:>16,}{tot:>16,}")
        return "\n".join(lines)

    def freeze(self, stage: str) -> str:
        """Set ``requires_grad`` for a stage; returns (and logs) the trainable/frozen table.

        "align": projector only; "finetune": projector + LM; "full": everything.  Frozen parameters
        are excluded from autograd, but activations still flow, so the projector gets gradients
        through a frozen LM.

        Precision: with ``model.dtype`` bfloat16/float16, frozen modules are held in that dtype and
        trainable ones in float32 (master weights: AdamW's moments and small late-schedule updates
        would be lost in 16 bits); autocast runs their matmuls in 16 bits on the GPU.
        """
        if stage not in STAGES:
            raise ValueError(f"stage {stage!r} is not one of {tuple(STAGES)}")
        low = DTYPES[self.config.dtype]
        for name in MODULES:
            module, trainable = getattr(self, name), name in STAGES[stage]
            module.requires_grad_(trainable)
            if low != torch.float32:
                module.to(torch.float32 if trainable else low)
        self.stage = stage
        table = self.parameter_table()
        # the same table for every rebuild of one model (smoke, train, reload, inference): say it once
        level = logging.DEBUG if (stage, table) in _TABLES_LOGGED else logging.INFO
        _TABLES_LOGGED.add((stage, table))
        logger.log(level, "stage %r: trainable parameters per module\n%s", stage, table)
        return table

    def gradient_checkpointing_enable(self) -> None:
        """Recompute activations in backward in both towers (non-reentrant checkpointing)."""
        self.vision_encoder.gradient_checkpointing_enable()
        enable_checkpointing(self.language_model)

    # ------------------------------------------------------------------ persistence

    def save_pretrained(self, directory: str | Path, state_dict: dict[str, torch.Tensor] | None = None) -> Path:
        """Write config JSON, safetensors weights (tied weights once) and the tokenizer.

        ``state_dict``: the weights to write instead of this module's own, e.g. the full state dict
        gathered from an FSDP2-sharded copy of this model (same key names).
        """
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        self.tokenizer.save_pretrained(str(d))
        tmp = d / f".{WEIGHTS_FILE}.tmp"
        metadata = {"format": "pt", "openmind_format_version": str(FORMAT_VERSION)}
        if state_dict is None:
            save_model(self, str(tmp), metadata=metadata)
        else:
            # drop the names of tied parameters after the first, as safetensors' save_model does
            first: dict[int, str] = {}
            tied = set()
            for name, p in self.named_parameters(remove_duplicate=False):
                if id(p) in first:
                    tied.add(name)
                first.setdefault(id(p), name)
            save_file({k: v.detach().contiguous().cpu() for k, v in state_dict.items() if k not in tied},
                      str(tmp), metadata=metadata)
        os.replace(tmp, d / WEIGHTS_FILE)
        atomic_write_json(d / CONFIG_FILE, {
            "format_version": FORMAT_VERSION,
            "model": self.config.model_dump(mode="json"),
            "stage": self.stage,
            "vision_config": self.vision_encoder.siglip.config.to_dict(),
            "lm_config": self.language_model.config.to_dict(),
        })
        fsync_dir(d)
        return d

    @classmethod
    def from_pretrained(cls, directory: str | Path, map_location: str | torch.device = "cpu") -> "MultimodalReasoningModel":
        """Restore a ``save_pretrained`` directory (no hub access)."""
        from schemas.config import ModelConfig

        d = Path(directory)
        cfg_path = d / CONFIG_FILE
        if not cfg_path.is_file():
            raise FileNotFoundError(f"{d} is not a saved MultimodalReasoningModel: {CONFIG_FILE} is missing")
        meta = json.loads(cfg_path.read_text(encoding="utf-8"))
        if meta.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"{cfg_path}: format_version {meta.get('format_version')!r}, this code reads {FORMAT_VERSION}")
        config = ModelConfig.model_validate(meta["model"])
        tokenizer = load_tokenizer(d)
        lm_cfg = dict(meta["lm_config"])
        model = cls(config, tokenizer, _vision_config=meta["vision_config"], _lm_config=lm_cfg)
        missing, unexpected = load_model(model, str(d / WEIGHTS_FILE), strict=True, device=str(map_location))
        model.to(map_location)
        if meta.get("stage") and meta["stage"] != model.stage:
            model.freeze(meta["stage"])
        return model
