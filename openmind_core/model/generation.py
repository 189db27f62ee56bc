"""Generation's front end: ``model.generate(images, prompts)`` answers in text, over transformers' ``generate``.

Generation itself is transformers' own (``GenerationMixin``): every stop id of the model's
``generation_config``, sampling, beam search, repetition penalty, ``max_new_tokens`` and streamers.
``generate(images, prompts)`` is the guide's convenience form: images become pixel values as the
data pipeline makes them, prompts are built with the tokenizer's chat template when it has one
(``openmind_core.prompting``) and left-padded, and the answers come back as text.
``generate(input_ids=..., pixel_values=...)`` is transformers' form (returns token ids).

``ImagePromptGeneration`` is a mixin of ``MultimodalReasoningModel``; it needs the model's
``tokenizer``, ``generation_config``, ``img_size``, ``num_image_tokens``, ``image_token_id`` and
``model_config``.
"""

from __future__ import annotations

import contextlib

import torch

from openmind_core import prompting
from openmind_core.imaging import preprocess_images
from openmind_core.model.tokenizer import quiet_cleanup


class ImagePromptGeneration:
    """``generate(images, prompts)`` and what it is made of; comes before ``GenerationMixin`` in the bases."""

    def stop_token_ids(self) -> list[int]:
        eos = self.generation_config.eos_token_id
        if eos is None:
            return []
        return [int(e) for e in (eos if isinstance(eos, (list, tuple)) else [eos])]

    def _prepare_prompts(self, prompts, batch: int, n_image: int | None = None,
                         thinking: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        n_image = self.num_image_tokens if n_image is None else n_image  # 0: text-only prompts
        if isinstance(prompts, str):
            prompts = [prompts] * batch
        if len(prompts) != batch:
            raise ValueError(f"generate: {batch} images but {len(prompts)} prompts")
        max_length = self.model_config.max_length
        ids = []
        for p in prompts:
            if isinstance(p, str):  # one instruction about the image
                enc = prompting.encode(self.tokenizer, p, None, n_image, self.image_token_id, max_length, thinking=thinking)
            else:  # a conversation so far: [(role, text)] or [{"role", "content"}]; <image> marks the image's place
                turns = [(t["role"], t["content"]) if isinstance(t, dict) else tuple(t) for t in p]
                enc = prompting.encode_turns(self.tokenizer, turns, n_image, self.image_token_id, max_length,
                                             generation=True, thinking=thinking)
            ids.append(enc.input_ids)
        width = max(len(x) for x in ids)
        pad = self.generation_config.pad_token_id
        pad = int(pad) if pad is not None else 0
        input_ids = torch.full((batch, width), pad, dtype=torch.long)
        mask = torch.zeros((batch, width), dtype=torch.long)
        for i, row in enumerate(ids):  # left padding: the last position is every row's last prompt token
            input_ids[i, width - len(row):] = torch.tensor(row)
            mask[i, width - len(row):] = 1
        return input_ids, mask

    def pixel_values_for(self, images) -> torch.Tensor:
        """PIL images / image bytes / image file paths (or a ready ``[B, 3, H, W]`` tensor) -> normalised pixel values."""
        if isinstance(images, torch.Tensor):
            return images if images.dim() == 4 else images.unsqueeze(0)
        images = list(images) if isinstance(images, (list, tuple)) else [images]
        return preprocess_images(images, self.img_size, self.config.image_mean, self.config.image_std,
                                 self.config.image_resample)

    def generate(self, images=None, prompts=None, *args, seed: int | None = None, ignore_eos: bool = False,
                 thinking: bool = False, **kwargs):
        """Answer ``prompts`` about ``images`` and return the answers as text; or transformers' generate.

        With ``prompts`` (one instruction for all images, or one per image; a prompt may also be a
        conversation so far, ``[(role, text), ...]``, answered with its next assistant turn): images are
        PIL images, image bytes, image file paths or a ``[B, 3, H, W]`` tensor (``images=None`` with a
        list of prompts: text only); the prompts go through the tokenizer's chat template (or the fixed
        template for tokenizers without one); every keyword of transformers' ``generate`` applies
        (``max_new_tokens`` (default 32), ``do_sample``, ``temperature``, ``top_p``, ``num_beams``,
        ``repetition_penalty``, ``streamer``, ...).  ``seed`` makes sampling reproducible;
        ``ignore_eos=True`` always decodes ``max_new_tokens`` tokens (benchmarks); ``thinking=True``
        lets a reasoning template think (``enable_thinking``; the answer then starts with its trace).

        Without ``prompts`` this is ``GenerationMixin.generate`` (``input_ids``, ``pixel_values``,
        ``attention_mask``, ...), returning token ids.
        """
        if prompts is None:
            if images is not None:
                args = (images, *args)
            return super().generate(*args, **kwargs)
        if self.tokenizer is None:
            raise ValueError("generate(images, prompts) needs model.tokenizer (from_pretrained attaches it)")
        if images is None:  # text only
            pixel_values, batch = None, (1 if isinstance(prompts, str) else len(prompts))
        else:
            pixel_values = self.pixel_values_for(images)
            batch = pixel_values.shape[0]
        n_image = self.num_image_tokens if pixel_values is not None else 0
        input_ids, mask = self._prepare_prompts(prompts, batch, n_image, thinking)
        device = self.device
        if "max_new_tokens" not in kwargs and "max_length" not in kwargs:
            kwargs["max_new_tokens"] = 32
        if not kwargs.get("do_sample"):
            for key in ("temperature", "top_p", "top_k"):  # meaningless for greedy/beam search: no warnings
                kwargs.pop(key, None)
        if ignore_eos:
            kwargs["min_new_tokens"] = kwargs.get("max_new_tokens")
        rng = contextlib.nullcontext()
        if kwargs.get("do_sample") and seed is not None:
            rng = torch.random.fork_rng(devices=[device] if device.type == "cuda" else [])
        with rng:
            if kwargs.get("do_sample") and seed is not None:
                torch.manual_seed(seed)
            out = super().generate(
                input_ids=input_ids.to(device), attention_mask=mask.to(device),
                pixel_values=pixel_values.to(device) if pixel_values is not None else None, **kwargs,
            )
        new = out[:, input_ids.shape[1]:].tolist()
        stops = set(self.stop_token_ids())
        texts = []
        for row in new:
            cut = next((i for i, t in enumerate(row) if t in stops), len(row))
            texts.append(self.tokenizer.decode(row[:cut], skip_special_tokens=True,
                                               clean_up_tokenization_spaces=quiet_cleanup(self.tokenizer)).strip())
        return texts
