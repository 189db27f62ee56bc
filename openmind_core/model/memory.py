"""Predict GPU memory for training and inference from the config alone, before anything runs.

Parameters are counted exactly by building the model on the meta device (no memory is
allocated).  Per component:

* weights: frozen parameters x the element size of ``model.dtype``, trainable ones (per
  ``model.stage``) x 4: the model keeps fp32 master weights for what it trains;
* gradients: trainable parameters x 4 (fp32);
* optimizer state: AdamW's fp32 ``exp_avg`` and ``exp_avg_sq`` per trainable parameter, plus one
  fp32 ``step`` counter per trainable tensor (torch.optim.AdamW's layout);
* activations: the bytes autograd saves for backward, counted per layer type for the exact ops
  transformers' SigLIP and Llama run with SDPA/flash attention (no s x s score matrix), in the
  spirit of Korthikanti et al. 2022 (s*b*h*(34 + 5*a*s/h) for GPT-style layers in 16-bit); see
  ``llama_layer_bytes`` and ``siglip_layer_bytes``.  What autograd keeps depends on the stage: a
  frozen tower whose input needs no gradient (the vision tower in "align"/"finetune") saves
  nothing, and a frozen LM still saves what the input gradient needs (attention inputs, MLP
  activations) but not the inputs of its linear layers.  With activation checkpointing each layer
  keeps only its input, plus one layer's activations recomputed during backward;
* logits: b*s*vocab in the model dtype plus the fp32 upcast and log-softmax the loss keeps.
* LoRA (``model.lm.lora``, stage finetune): the adapters are counted exactly (PEFT's layers
  injected into the meta LM); they and the projector are what trains (fp32 weights, gradients,
  AdamW state), the LM base is frozen in ``model.dtype``.  Activations: the frozen LM's, plus what
  the adapters keep (``lora_layer_bytes``): each adapter's input (shared by q/k/v and by gate/up
  when LoRA dropout is 0; with dropout each adapter keeps its own dropped input and mask) and its
  rank-``r`` intermediate.

Assumed: the model is held in ``model.dtype`` (bf16 at full size); ``train.amp`` bf16/fp16 on an
fp32 model is approximated by 2-byte activations; training batches are padded to the longest sample, or
with ``train.packing`` are at most ``micro_batch_size`` rows of ``pack_length`` tokens (transformers then
repeats grouped KV heads before SDPA); allocator fragmentation, CUDA context (~0.5-1 GB) and
temporary buffers of backward are not included.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from types import SimpleNamespace

import torch
from transformers import AutoModelForCausalLM

from openmind_core.model.image_tokens import tokens_for_config
from openmind_core.model.language import inline_llama_config, language_model_config
from openmind_core.model.lora import apply_lora, is_lora_name
from openmind_core.model.projector import ImprovedProjector
from openmind_core.model.stages import trainable_modules
from openmind_core.model.vision import ImprovedVisionEncoder

GIB = 1 << 30
ELEMENT_SIZE = {"float32": 4, "bfloat16": 2, "float16": 2}
# --------------------------------------------------------------------------- per-layer activations


def llama_layer_bytes(h: int, inter: int, heads: int, kv_heads: int, e: int, weights_trainable: bool,
                      padded: bool = True) -> int:
    """Bytes one Llama decoder layer saves for backward, per token (SDPA / flash attention).

    RMSNorm upcasts to fp32 and keeps that input plus the fp32 rsqrt (x2 norms); with trainable
    weights it also keeps its normalised output and the linear input (2 e*h per norm), the o_proj
    input and the down_proj input.  Attention keeps q, k, v, its output and an fp32 logsumexp per
    head; k and v are repeated to all heads when a padding mask is passed.  The SwiGLU MLP keeps
    the gate pre-activation, its SiLU and the up projection.
    """
    t = int(weights_trainable)
    kv = h if padded else h // heads * kv_heads
    norms = 2 * (4 * h + 4 + t * 2 * e * h)
    attention = e * (2 * h + 2 * kv) + 4 * heads + t * e * h
    mlp = 3 * e * inter + t * e * inter
    return norms + attention + mlp


LORA_INPUTS = {"q_proj": "attn_in", "k_proj": "attn_in", "v_proj": "attn_in", "o_proj": "attn_out",
               "gate_proj": "mlp_in", "up_proj": "mlp_in", "down_proj": "mlp_act"}


def lora_layer_bytes(h: int, inter: int, e: int, targets, r: int, dropout: float, mask_bytes: int = 1) -> int:
    """Bytes per token one Llama decoder layer's LoRA adapters keep for backward (beyond the frozen layer).

    Without dropout: each distinct adapter input (q/k/v share one, gate/up another) and each
    adapter's rank-r intermediate.  With dropout: each adapter's dropped input and its dropout mask
    (``mask_bytes`` per element: 1 for CUDA's fused dropout (bool), the element size for the CPU's
    multiply-by-noise dropout)."""
    dims = {"attn_in": h, "attn_out": h, "mlp_in": h, "mlp_act": inter}
    known = [t for t in targets if t in LORA_INPUTS]
    inter_bytes = len(known) * r * e  # lora_A's output, lora_B's input
    if dropout > 0:  # each adapter: its dropped input (e bytes) + the bool mask
        return inter_bytes + sum((e + mask_bytes) * dims[LORA_INPUTS[t]] for t in known)
    return inter_bytes + sum(e * dims[g] for g in {LORA_INPUTS[t] for t in known})


def llama_extra_bytes(h: int, heads: int, e: int, weights_trainable: bool) -> int:
    """Per-token bytes outside the layers: embedding ids, image mask, rotary cos/sin, final norm."""
    t = int(weights_trainable)
    head_dim = h // heads
    return 8 * t + 1 + 2 * e * head_dim + (4 * h + 4 + t * 2 * e * h)


def siglip_layer_bytes(h: int, mlp: int, heads: int, e: int) -> int:
    """Bytes one (trainable) SigLIP encoder layer saves per token: 2 LayerNorms (input + fp32
    mean/rstd), q/k/v input, q, k, v, attention output + fp32 logsumexp, out_proj input, fc1 input,
    GELU input and fc2 input."""
    return 9 * e * h + 16 + 4 * heads + 2 * e * mlp


# --------------------------------------------------------------------------- the estimate


@dataclass
class MemoryEstimate:
    stage: str
    dtype: str
    activation_bytes_per_element: int
    batch_size: int
    seq_len: int
    image_tokens: int
    vocab_size: int
    gradient_checkpointing: bool
    params: dict[str, tuple[int, int]] = field(default_factory=dict)  # module -> (trainable, total)
    weights: int = 0
    gradients: int = 0
    optimizer_state: int = 0
    activations_no_ckpt: int = 0
    activations_ckpt: int = 0
    ckpt_recompute: int = 0  # part of activations_ckpt: one layer's activations rebuilt during backward
    logits: int = 0
    inference_batch_size: int = 0
    inference_kv_cache: int = 0
    inference_activations: int = 0
    budget_bytes: int = 0
    packing: bool = False  # train.packing: seq_len is the packed row (pack_length), batch_size rows at most
    images_per_row: int = 1  # images in the longest sample: its image tokens, and the vision tower's batch

    @property
    def activations(self) -> int:
        """The activation term that applies to this config (checkpointing on or off)."""
        return self.activations_ckpt if self.gradient_checkpointing else self.activations_no_ckpt

    @property
    def train_peak_bytes(self) -> int:
        return self.weights + self.gradients + self.optimizer_state + self.activations + self.logits

    @property
    def inference_peak_bytes(self) -> int:
        return self.weights + self.inference_kv_cache + self.inference_activations

    @property
    def fits(self) -> bool:
        return self.train_peak_bytes <= self.budget_bytes

    def to_dict(self) -> dict:
        d = asdict(self)
        d.update(train_peak_bytes=self.train_peak_bytes, inference_peak_bytes=self.inference_peak_bytes,
                 fits=self.fits, activations=self.activations)
        return d

    def format_table(self) -> str:
        def gib(x: int) -> str:
            return f"{x / GIB:10.2f} GiB"

        ck = "on" if self.gradient_checkpointing else "off"
        seq = (f"packed rows of {self.seq_len} tokens ({self.batch_size * self.seq_len:,} tokens per micro-batch "
               f"at most)" if self.packing else f"sequence {self.seq_len}")
        rows = [
            f"stage {self.stage}, dtype {self.dtype}, micro-batch {self.batch_size}, {seq} "
            f"({self.image_tokens} image tokens" + (f" x {self.images_per_row} images per row" if self.images_per_row > 1
                                                    else "") + f"), vocab {self.vocab_size}, activation checkpointing {ck}",
            f"{'module':<16}{'trainable':>16}{'total':>16}",
        ]
        rows += [f"{m:<16}{tr:>16,}{tot:>16,}" for m, (tr, tot) in self.params.items()]
        rows += [
            "",
            f"{'weights':<40}{gib(self.weights)}",
            f"{'gradients':<40}{gib(self.gradients)}",
            f"{'optimizer state (AdamW)':<40}{gib(self.optimizer_state)}",
            f"{'activations, no checkpointing':<40}{gib(self.activations_no_ckpt)}{'  <-' if ck == 'off' else ''}",
            f"{'activations, with checkpointing':<40}{gib(self.activations_ckpt)}{'  <-' if ck == 'on' else ''}",
            f"{'logits + loss':<40}{gib(self.logits)}",
            f"{'TRAINING peak':<40}{gib(self.train_peak_bytes)}",
            f"{'inference peak (batch %d, KV cache)' % self.inference_batch_size:<40}{gib(self.inference_peak_bytes)}",
            f"{'budget':<40}{gib(self.budget_bytes)}",
            f"training {'FITS' if self.fits else 'DOES NOT FIT'} in {self.budget_bytes / GIB:.1f} GiB"
            + ("" if self.fits else f" (over by {(self.train_peak_bytes - self.budget_bytes) / GIB:.2f} GiB)"),
        ]
        return "\n".join(rows)


def _vocab_stub(cfg, tokenizer):
    """What ``inline_llama_config`` needs from a tokenizer, without training or downloading one."""
    if tokenizer is not None:
        return tokenizer
    n = cfg.model.tokenizer.vocab_size
    return SimpleNamespace(bos_token_id=1, eos_token_id=2, pad_token_id=0, n=n)


def meta_modules(cfg, tokenizer=None) -> dict[str, torch.nn.Module]:
    """The three towers built on the meta device (exact shapes, no memory)."""
    m = cfg.model
    tok = _vocab_stub(cfg, tokenizer)
    with torch.device("meta"):
        vision = ImprovedVisionEncoder.from_config(m.vision)
        if m.lm.name_or_path is None:
            vocab = m.lm.vocab_size or (len(tokenizer) if tokenizer is not None else tok.n)
            lm_cfg = inline_llama_config(m.lm.model_copy(update={"vocab_size": vocab}), tok)
        else:
            lm_cfg = language_model_config(m.lm, tok)
        lm = AutoModelForCausalLM.from_config(lm_cfg, attn_implementation="sdpa")
        projector = ImprovedProjector.from_config(m.projector, vision.embed_dim, lm.config.hidden_size)
        if m.lm.lora is not None:
            apply_lora(lm, m.lm.lora)
    return {"vision_encoder": vision, "projector": projector, "language_model": lm}


def _numel(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def estimate_memory(cfg, budget_gb: float | None = None, device: str = "cuda", tokenizer=None,
                    images_per_row: int = 1) -> MemoryEstimate:
    """Predict training and inference memory for an ``OpenMindConfig``.

    ``images_per_row``: the images of the longest sample (every sample of a micro-batch is assumed to
    have as many): 1 for caption / VQA data; ``data.max_images_per_row`` is the worst case a lake allows.

    ``device="cpu"`` models fp32 autocast-free training (activations in the model dtype);
    ``"cuda"`` models ``train.amp`` (bf16/fp16 activations when AMP is on).  ``tokenizer`` (optional)
    fixes the vocabulary size when ``lm.vocab_size`` is unset.
    """
    m, tr = cfg.model, cfg.train
    mods = meta_modules(cfg, tokenizer)
    vision, projector, lm = mods["vision_encoder"], mods["projector"], mods["language_model"]
    w = ELEMENT_SIZE[m.dtype]
    amp_16bit = device != "cpu" and tr.amp in ("auto", "bf16", "fp16")
    e = 2 if (w == 2 or amp_16bit) else 4
    lora = m.lm.lora
    trainable = trainable_modules(m.stage, lora=lora is not None)

    params: dict[str, tuple[int, int]] = {}
    n_tensors_trainable = 0
    for name, mod in mods.items():
        total = _numel(mod)
        params[name] = (total if name in trainable else 0, total)
        if name in trainable:
            n_tensors_trainable += len(list(mod.parameters()))
    if lora is not None:
        adapters = [p for n, p in lm.named_parameters() if is_lora_name(n)]
        params["language_model"] = (sum(p.numel() for p in adapters), params["language_model"][1])
        n_tensors_trainable += len(adapters)
    params["total"] = (sum(p[0] for p in params.values()), sum(p[1] for p in params.values()))
    n_train = params["total"][0]

    lc = lm.config
    h, heads, kv_heads, inter = lc.hidden_size, lc.num_attention_heads, lc.num_key_value_heads, lc.intermediate_size
    vocab = lm.get_input_embeddings().weight.shape[0]
    n_img = tokens_for_config(m)
    k = images_per_row
    if not 1 <= k <= cfg.data.max_images_per_row:
        raise ValueError(f"images_per_row must be 1 to data.max_images_per_row={cfg.data.max_images_per_row}, got {k}")
    b = tr.micro_batch_size
    s = 1 + k * n_img + m.max_length  # the longest sample: BOS, its k images, max_length text tokens
    # packed: at most micro_batch_size rows (one per sample) of pack_length tokens (a longer sample gets a row of
    # its own); the images are still k per sample, so the vision tower and projector terms below are unchanged
    row = max(tr.pack_length or s, s) if tr.packing else s
    tokens = b * row
    lm_t = "language_model" in trainable
    vis_t = "vision_encoder" in trainable

    # language model (always records: the projector's output needs a gradient)
    layer = llama_layer_bytes(h, inter, heads, kv_heads, e, lm_t)
    if lora is not None:
        layer += lora_layer_bytes(h, inter, e, lora.target_modules, lora.r, lora.dropout,
                                  mask_bytes=e if device == "cpu" else 1)
    lm_extra = llama_extra_bytes(h, heads, e, lm_t)
    lm_full = tokens * (lc.num_hidden_layers * layer + lm_extra)
    lm_ckpt = tokens * (lc.num_hidden_layers * e * h + lm_extra)

    # projector (always trainable)
    v = m.vision
    grid = v.img_size // v.patch_size
    mlp_in = projector.linear_1.in_features
    hid = projector.linear_1.out_features
    proj = b * k * e * n_img * (mlp_in + 2 * hid)
    if vis_t and m.projector.type == "token_pooling":
        padded_grid = -(-grid // m.projector.pooling_kernel) * m.projector.pooling_kernel
        proj += b * k * e * v.embed_dim * (grid * grid + padded_grid * padded_grid)

    # vision tower: records only when trainable (pixel values never need a gradient)
    vis_full = vis_ckpt = vis_recompute = 0
    if vis_t:
        vtokens = b * k * grid * grid
        vlayer = siglip_layer_bytes(vision.embed_dim, v.mlp_dim, vision.num_heads, e)
        pixels = b * k * 3 * v.img_size * v.img_size * e
        vis_full = vtokens * vision.num_layers_run * vlayer + pixels
        vis_ckpt = vtokens * (vision.num_layers_run * e * vision.embed_dim) + pixels
        vis_recompute = vtokens * vlayer

    logits = tokens * vocab * (e + 4 + (4 if e != 4 else 0))

    # inference: KV cache over prompt + new tokens, one layer's working set, last-token logits
    ib = cfg.inference.batch_size
    head_dim = h // heads
    ctx = s + cfg.inference.max_new_tokens
    kv_cache = 2 * lc.num_hidden_layers * ib * ctx * kv_heads * head_dim * w
    inf_act = ib * s * w * (4 * h + 3 * inter) + ib * vocab * 4

    budget = budget_gb if budget_gb is not None else cfg.memory.budget_gb
    return MemoryEstimate(
        stage=m.stage,
        dtype=m.dtype,
        activation_bytes_per_element=e,
        batch_size=b,
        seq_len=row,
        image_tokens=n_img,
        vocab_size=vocab,
        images_per_row=k,
        gradient_checkpointing=m.gradient_checkpointing,
        params=params,
        weights=(params["total"][1] - n_train) * w + n_train * 4,  # trainable parameters are fp32 masters
        gradients=n_train * 4,
        optimizer_state=2 * n_train * 4 + 4 * n_tensors_trainable,
        activations_no_ckpt=lm_full + proj + vis_full,
        activations_ckpt=lm_ckpt + proj + vis_ckpt + max(tokens * layer, vis_recompute),
        ckpt_recompute=max(tokens * layer, vis_recompute),
        logits=logits,
        inference_batch_size=ib,
        inference_kv_cache=kv_cache,
        inference_activations=inf_act,
        budget_bytes=int(budget * GIB),
        packing=tr.packing,
    )
