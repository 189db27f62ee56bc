"""An lmms-eval model class, so real benchmarks run on an OpenMind model where the hub is reachable:

    pip install 'openmind[eval]'
    lmms-eval --model openmind --model_args pretrained=RUN/final --tasks vqav2_val_lite,coco2017_cap_val_lite

Written against lmms-eval 0.7's interface (``lmms_eval/api/model.py``: the ``lmms`` base class;
``lmms_eval/api/instance.py``: ``Instance``; ``lmms_eval/models/registry_v2.py``: model manifests from
the ``lmms_eval.models`` entry-point group, which ``pyproject.toml`` declares as ``openmind``), after
lmms-eval's own simple models (``models/simple/llava_hf.py``) and nanoVLM's ``eval/lmms_eval_wrapper.py``.

A ``generate_until`` request's ``args`` are ``(context, gen_kwargs, doc_to_visual, doc_id, task, split)``;
the images come from ``doc_to_visual(self.task_dict[task][split][doc_id])``.  A ``loglikelihood``
request's are ``(context, continuation or doc_to_target, doc_to_visual, doc_id, task, split)``.
The model answers about the first image of a request (it takes one image per prompt); a request
without images gets a blank one.
"""

from __future__ import annotations

import torch
from PIL import Image

from openmind_core import prompting
from openmind_core.evaluation.run import load_model

try:
    from lmms_eval.api.instance import Instance
    from lmms_eval.api.model import lmms
    from lmms_eval.api.registry import register_model
except ImportError as e:  # pragma: no cover - the optional extra is not installed
    raise ImportError(f"the lmms-eval adapter needs lmms-eval ({e}): pip install 'openmind[eval]'") from None

MODEL_ID = "openmind"


def manifest():
    """The entry point ``lmms_eval.models: openmind`` (lmms-eval >= 0.7's registry)."""
    from lmms_eval.models.registry_v2 import ModelManifest  # lmms-eval >= 0.7 only: older ones lack it

    return ModelManifest(model_id=MODEL_ID, simple_class_path=f"{__name__}.OpenMind")


def _first_image(visuals):
    flat = []
    for v in visuals if isinstance(visuals, (list, tuple)) else [visuals]:
        flat.extend(v if isinstance(v, (list, tuple)) else [v])
    images = [v for v in flat if isinstance(v, Image.Image)]
    return images[0].convert("RGB") if images else Image.new("RGB", (32, 32))


@register_model(MODEL_ID)
class OpenMind(lmms):
    """``pretrained``: a run's final/ or best/ (any ``save_pretrained`` directory of the model)."""

    is_simple = True

    def __init__(self, pretrained: str, device: str | None = None, batch_size: int | str = 1,
                 max_new_tokens: int = 32, **kwargs) -> None:
        super().__init__()
        self.model = load_model(pretrained, device)
        self.batch_size_per_gpu = int(batch_size)
        self.max_new_tokens = int(max_new_tokens)

    @property
    def batch_size(self) -> int:
        return self.batch_size_per_gpu

    def _doc_images(self, doc_to_visual, doc_id, task, split):
        return doc_to_visual(self.task_dict[task][split][doc_id])

    def generate_until(self, requests: list[Instance]) -> list[str]:
        out: list[str] = []
        for req in requests:
            context, gen_kwargs, doc_to_visual, doc_id, task, split = req.args
            gen = dict(gen_kwargs or {})
            until = gen.pop("until", None)
            until = [until] if isinstance(until, str) else list(until or [])
            kwargs = {"max_new_tokens": int(gen.get("max_new_tokens", self.max_new_tokens)),
                      "do_sample": bool(gen.get("do_sample", False) or gen.get("temperature", 0) > 0)}
            if kwargs["do_sample"]:
                kwargs["temperature"] = float(gen.get("temperature", 1.0))
                kwargs["top_p"] = float(gen.get("top_p") or 1.0)
            if gen.get("num_beams"):
                kwargs["num_beams"] = int(gen["num_beams"])
            image = _first_image(self._doc_images(doc_to_visual, doc_id, task, split))
            text = self.model.generate([image], context.replace("<image>", "").strip(), **kwargs)[0]
            for stop in until:
                if stop and stop in text:
                    text = text.split(stop)[0]
            out.append(text)
            self.cache_hook.add_partial("generate_until", (context, gen_kwargs), text)
        return out

    @torch.no_grad()
    def loglikelihood(self, requests: list[Instance]) -> list[tuple[float, bool]]:
        m = self.model
        res = []
        for req in requests:
            context, target, doc_to_visual, doc_id, task, split = req.args
            doc = self.task_dict[task][split][doc_id] if self.task_dict else None
            continuation = target if isinstance(target, str) else target(doc)
            image = _first_image(self._doc_images(doc_to_visual, doc_id, task, split))
            enc = prompting.encode(m.tokenizer, context.replace("<image>", "").strip(), continuation,
                                   m.num_image_tokens, m.image_token_id, m.model_config.max_length)
            ids = torch.tensor([enc.input_ids], device=m.device)
            labels = torch.tensor([enc.labels], device=m.device)
            logits = m(input_ids=ids, attention_mask=torch.ones_like(ids),
                       pixel_values=m.pixel_values_for([image]).to(device=m.device, dtype=m.dtype)).logits.float()
            logp = torch.log_softmax(logits[0, :-1], dim=-1)
            tgt = labels[0, 1:]
            keep = tgt != prompting.IGNORE_INDEX
            picked = logp[keep].gather(-1, tgt[keep].unsqueeze(-1)).squeeze(-1)
            greedy = bool((logp[keep].argmax(-1) == tgt[keep]).all())
            res.append((float(picked.sum()), greedy))
        return res

    def generate_until_multi_round(self, requests) -> list[str]:
        raise NotImplementedError("openmind: multi-round generation is not supported; use generate_until tasks")
