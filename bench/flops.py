"""Model FLOPs of one training step, counted from the model itself (for MFU in ``bench/gpu.py``).

``FlopRecorder`` hooks every ``nn.Linear``, every convolution and every self-attention module of a
model and, during the forward passes it is active for, records what each one multiplied:

* a parameter matmul costs ``2 * in * out`` FLOPs per token (the "2N per token" rule; a convolution
  ``2 * in_channels/groups * kernel_area * out_channels`` per output position);
* its backward costs one more forward-sized matmul for the input gradient when the input needs a
  gradient (gradients pass through it: frozen layers of an LM below a trainable projector), and one
  more for the weight gradient when the weight is trainable.  So a frozen layer that gradients pass
  through costs 1x forward in backward, a trainable one 2x, a layer nobody differentiates 0x;
* attention scores: ``QK^T`` and ``PV`` cost ``2 * 2 * b * heads * s^2 * head_dim`` forward (the full
  ``s x s`` square, as PaLM/Megatron MFU and ``torch.utils.flop_counter`` count, also for causal
  masks), and twice that in backward when gradients pass through.

Recompute of activation checkpointing is *not* counted (that is hardware FLOPs, not model FLOPs):
only the forward passes run inside ``with recorder:`` are recorded, so wrap the training forward
and not the backward.  Elementwise ops, norms, softmax, pooling and embedding lookups are ignored.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn


@dataclass
class FlopCount:
    """FLOPs of the forward passes recorded and the backward passes they imply, per top module."""

    forward: float = 0.0
    backward: float = 0.0
    by_module: dict[str, dict[str, float]] = field(default_factory=dict)

    @property
    def total(self) -> float:
        return self.forward + self.backward

    def add(self, module: str, fwd: float, bwd: float) -> None:
        self.forward += fwd
        self.backward += bwd
        m = self.by_module.setdefault(module, {"forward": 0.0, "backward": 0.0})
        m["forward"] += fwd
        m["backward"] += bwd

    def as_dict(self) -> dict:
        return {"forward": self.forward, "backward": self.backward, "total": self.total, "by_module": self.by_module}


def _top(name: str) -> str:
    return name.split(".", 1)[0] if name else "<root>"


def _is_self_attention(module: nn.Module) -> bool:
    """transformers' Llama/SigLIP/... attention modules: a ``head_dim`` and a ``q_proj``."""
    return isinstance(getattr(module, "head_dim", None), int) and isinstance(getattr(module, "q_proj", None), nn.Linear)


def _needs_grad(*params: nn.Parameter) -> bool:
    return any(p is not None and p.requires_grad for p in params)


class FlopRecorder:
    """Count matmul + attention FLOPs of the forwards run inside ``with recorder:``.

    >>> rec = FlopRecorder(model)
    >>> with rec:
    ...     loss = model(**batch).loss
    >>> loss.backward()
    >>> rec.count.total   # forward + the backward it implies
    """

    def __init__(self, model: nn.Module) -> None:
        self.count = FlopCount()
        self.active = False
        self._handles: list = []
        for name, mod in model.named_modules():
            top = _top(name)
            if isinstance(mod, nn.Linear):
                self._handles.append(mod.register_forward_hook(self._linear_hook(top)))
            elif isinstance(mod, nn.modules.conv._ConvNd):
                self._handles.append(mod.register_forward_hook(self._conv_hook(top)))
            elif _is_self_attention(mod):
                self._handles.append(mod.register_forward_pre_hook(self._attention_hook(top), with_kwargs=True))

    # ------------------------------------------------------------------ hooks

    def _linear_hook(self, top: str):
        def hook(mod: nn.Linear, args, output) -> None:
            if not self.active:
                return
            x = args[0]
            tokens = x.numel() // mod.in_features
            fwd = 2.0 * mod.in_features * mod.out_features * tokens
            bwd = fwd * (int(x.requires_grad) + int(_needs_grad(mod.weight)))
            self.count.add(top, fwd, bwd)
        return hook

    def _conv_hook(self, top: str):
        def hook(mod: nn.modules.conv._ConvNd, args, output) -> None:
            if not self.active:
                return
            x = args[0]
            kernel = 1
            for k in mod.kernel_size:
                kernel *= k
            per_output = 2.0 * (mod.in_channels // mod.groups) * kernel
            fwd = per_output * output.numel()
            bwd = fwd * (int(x.requires_grad) + int(_needs_grad(mod.weight)))
            self.count.add(top, fwd, bwd)
        return hook

    def _attention_hook(self, top: str):
        def hook(mod: nn.Module, args, kwargs) -> None:
            if not self.active:
                return
            x = args[0] if args else kwargs.get("hidden_states")
            if x is None:
                return
            b, s = x.shape[0], x.shape[1]
            heads = mod.q_proj.out_features // mod.head_dim
            fwd = 2.0 * 2.0 * b * heads * s * s * mod.head_dim
            qkv = [getattr(mod, n, None) for n in ("q_proj", "k_proj", "v_proj")]
            grads = x.requires_grad or _needs_grad(*(p for m in qkv if m is not None for p in m.parameters()))
            self.count.add(top, fwd, 2.0 * fwd if grads else 0.0)
        return hook

    # ------------------------------------------------------------------ control

    def __enter__(self) -> "FlopRecorder":
        self.active = True
        return self

    def __exit__(self, *exc) -> None:
        self.active = False

    def reset(self) -> None:
        self.count = FlopCount()

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()


def train_step_flops(model: nn.Module, batch: dict, autocast_ctx=None) -> FlopCount:
    """Model FLOPs of one forward + backward of ``model(**batch).loss`` (runs them once)."""
    import contextlib

    rec = FlopRecorder(model)
    try:
        with rec, (autocast_ctx or contextlib.nullcontext()):
            loss = model(**batch).loss
        if loss.requires_grad:
            loss.backward()
    finally:
        rec.remove()
    return rec.count


def reference_flops(model: nn.Module, batch: dict) -> float:
    """``torch.utils.flop_counter.FlopCounterMode``'s count of one forward + backward (an independent check).

    Counts every matmul/convolution/attention kernel that actually ran, so it matches
    ``train_step_flops`` exactly with eager attention and no activation checkpointing (SDPA's
    backward formula also counts a recompute of the scores, and checkpointing recomputes forwards).
    """
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        loss = model(**batch).loss
        if loss.requires_grad:
            loss.backward()
    return float(counter.get_total_flops())


def use_eager_attention(model: nn.Module) -> None:
    """Switch our model's towers to eager attention (for ``reference_flops`` comparisons)."""
    vision = getattr(model, "vision_encoder", None)
    if vision is not None and hasattr(vision, "_set_backend"):
        vision.forced_backend = "eager"
        vision._set_backend("eager")
    lm = getattr(model, "language_model", None)
    if lm is not None:
        _set_attn(lm, "eager")


def _set_attn(hf_model: nn.Module, name: str) -> None:
    if hasattr(hf_model, "set_attn_implementation"):
        hf_model.set_attn_implementation(name)
    else:  # older transformers
        hf_model.config._attn_implementation = name


def set_attention_backend(model: nn.Module, name: str) -> None:
    """Force ``"sdpa"`` or ``"flash_attention_2"`` in both towers of a MultimodalReasoningModel."""
    vision = model.vision_encoder
    vision.forced_backend = name
    vision._set_backend(name)
    _set_attn(model.language_model, name)


__all__ = ["FlopCount", "FlopRecorder", "reference_flops", "set_attention_backend", "train_step_flops",
           "use_eager_attention"]
