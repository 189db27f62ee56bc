"""The model as a Hugging Face citizen, with stand-ins of real families (no hub: tests/families.py).

Llama-3-Instruct (no pad, ``<|begin_of_text|>``, ``<|eot_id|>`` among the stop ids, its chat
template), Qwen2.5-Instruct (no BOS, ChatML with a default system prompt, tied and padded
embeddings) and SigLIP with its image processor, used through the same config keys a hub id takes.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from PIL import Image

from families import llama3_dir, make_siglip_vision, qwen2_dir, siglip_dir  # noqa: F401  (fixtures)
from openmind_core import prompting
from openmind_core.model import MultimodalReasoningModel, build_model, build_tokenizer
from schemas.loading import load_config

IGNORE = prompting.IGNORE_INDEX


def family_model(lm_dir, vision_dir, stage="finetune", extra=()):
    cfg = load_config(overrides=[f"model.lm.name_or_path={lm_dir}", f"model.vision.pretrained={vision_dir}",
                                 f"model.stage={stage}", "model.max_length=160", *extra]).model
    tok = build_tokenizer(cfg.tokenizer)
    torch.manual_seed(0)
    return build_model(cfg, tok), tok


def overfit(model, tok, question, answer, steps=60):
    img = [Image.new("RGB", (56, 56), "red")]
    enc = prompting.encode(tok, question, answer, model.num_image_tokens, model.image_token_id, 160)
    batch = dict(input_ids=torch.tensor([enc.input_ids]), labels=torch.tensor([enc.labels]),
                 attention_mask=torch.ones(1, len(enc.input_ids), dtype=torch.long),
                 pixel_values=model.pixel_values_for(img))
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    losses = []
    for _ in range(steps):
        loss = model(**batch).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    model.eval()
    return img, losses


# --------------------------------------------------------------------------- tokenizer and template


def test_tokenizer_defaults_to_the_lm(llama3_dir):
    cfg = load_config(overrides=[f"model.lm.name_or_path={llama3_dir}"]).model
    assert cfg.tokenizer.name_or_path == str(llama3_dir)
    explicit = load_config(overrides=[f"model.lm.name_or_path={llama3_dir}", "model.tokenizer.name_or_path=/x"]).model
    assert explicit.tokenizer.name_or_path == "/x"


def test_a_tokenizer_that_does_not_fit_the_lm_is_refused(tmp_path, llama3_dir):
    from openmind_core.model.language import preflight
    from openmind_core.model.tokenizer import train_bpe_tokenizer

    corpus = [" ".join(f"w{i}q{i * 7 % 97}z{i % 13}" for i in range(k, k + 50)) for k in range(0, 3000, 50)]
    big = train_bpe_tokenizer(corpus, vocab_size=600)
    big.save_pretrained(tmp_path / "big")
    assert len(big) > 402
    cfg = load_config(overrides=[f"model.lm.name_or_path={llama3_dir}",
                                 f"model.tokenizer.name_or_path={tmp_path / 'big'}"]).model
    with pytest.raises(ValueError, match=r"tokenizer .*big has \d+ ids but the language model .*llama3.* 400"):
        preflight(cfg)
    preflight(load_config(overrides=[f"model.lm.name_or_path={llama3_dir}"]).model)  # its own tokenizer fits


@pytest.mark.parametrize("family", ["llama3", "qwen2"])
def test_chat_template_prompt_and_labels(family, request, siglip_dir):
    model, tok = family_model(request.getfixturevalue(f"{family}_dir"), siglip_dir)
    n, image_id = model.num_image_tokens, model.image_token_id
    enc = prompting.encode(tok, "What is <image> here?", "a red <image> circle", n, image_id, 160)
    ids = enc.input_ids
    assert ids.count(image_id) == n  # the literal "<image>" in the texts is plain text, not placeholders
    start, end = enc.image_positions
    assert ids[start:end] == [image_id] * n
    text = tok.decode(ids)
    eot = "<|eot_id|>" if family == "llama3" else "<|im_end|>"
    if family == "llama3":
        assert text.startswith("<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\n")
        assert text.count("<|begin_of_text|>") == 1
    else:
        assert text.startswith("<|im_start|>system\nYou are Qwen") and "<|im_start|>user\n" in text
        assert tok.bos_token_id is None
    # labels: exactly the assistant turn and the token that closes it
    target = [t for t in enc.labels if t != IGNORE]
    assert tok.decode(target) == "a red <image> circle" + eot
    assert enc.labels[: end] == [IGNORE] * end
    # the generation prompt ends with the assistant header
    gen = prompting.encode(tok, "What is here?", None, n, image_id, 160)
    header = "<|start_header_id|>assistant<|end_header_id|>\n\n" if family == "llama3" else "<|im_start|>assistant\n"
    assert tok.decode(gen.input_ids).endswith(header) and all(t == IGNORE for t in gen.labels)
    # batched encoding gives the same rows
    many = prompting.encode_many(tok, ["What is <image> here?"], ["a red <image> circle"], n, image_id, 160)
    assert many[0] == enc


def test_no_template_tokenizer_keeps_the_fixed_format():
    from openmind_core.model.tokenizer import train_bpe_tokenizer

    tok = train_bpe_tokenizer(["Describe the image.", "a red circle", "\nUSER: x\nASSISTANT:"], vocab_size=300)
    image_id = tok.convert_tokens_to_ids("<image>")
    enc = prompting.encode(tok, "Describe <image> now.", "a red circle", 4, image_id, 64)
    assert enc.input_ids[:5] == [tok.bos_token_id] + [image_id] * 4 and enc.input_ids.count(image_id) == 4
    assert tok.decode([t for t in enc.labels if t != IGNORE]) == " a red circle</s>"
    assert tok.decode(enc.input_ids[5:]).startswith("\nUSER: Describe <image> now.\nASSISTANT:")


# --------------------------------------------------------------------------- generation


@pytest.mark.parametrize("family", ["llama3", "qwen2"])
def test_trains_and_stops_at_its_end_of_turn(family, request, siglip_dir):
    model, tok = family_model(request.getfixturevalue(f"{family}_dir"), siglip_dir)
    eot = tok.convert_tokens_to_ids("<|eot_id|>" if family == "llama3" else "<|im_end|>")
    assert eot in model.generation_config.eos_token_id
    img, losses = overfit(model, tok, "What color is it?", "red", steps=40)
    assert losses[-1] < 0.1 * losses[0]
    assert model.generate(img, "What color is it?", max_new_tokens=8, do_sample=False) == ["red"]
    # transformers' generate stopped on the end-of-turn id, not on max_new_tokens
    input_ids, mask = model._prepare_prompts("What color is it?", 1)
    out = model.generate(input_ids=input_ids, attention_mask=mask, pixel_values=model.pixel_values_for(img),
                         max_new_tokens=8, do_sample=False)
    new = out[0, input_ids.shape[1]:].tolist()
    assert eot in new and len(new) < 8


def test_generation_options_and_streamer(llama3_dir, siglip_dir, capsys):
    from transformers import TextStreamer

    model, tok = family_model(llama3_dir, siglip_dir)
    img, _ = overfit(model, tok, "What color is it?", "red", steps=30)
    greedy = model.generate(img, "What color is it?", max_new_tokens=6, do_sample=False)
    assert model.generate(img, "What color is it?", max_new_tokens=6, num_beams=3, do_sample=False) == greedy
    assert model.generate(img, "What color is it?", max_new_tokens=6, do_sample=False, repetition_penalty=1.3) == greedy
    a = model.generate(img, "What color is it?", max_new_tokens=6, do_sample=True, temperature=1.5, seed=5)
    assert a == model.generate(img, "What color is it?", max_new_tokens=6, do_sample=True, temperature=1.5, seed=5)
    capsys.readouterr()
    model.generate(img, "What color is it?", max_new_tokens=6, do_sample=False,
                   streamer=TextStreamer(tok, skip_prompt=True, skip_special_tokens=True))
    assert capsys.readouterr().out.strip() == greedy[0]
    # ignore_eos: all max_new_tokens tokens are decoded, the end-of-turn that stopped greedy suppressed
    long = model.generate(img, "What color is it?", max_new_tokens=5, do_sample=False, ignore_eos=True)
    input_ids, mask = model._prepare_prompts("What color is it?", 1)
    out = model.generate(input_ids=input_ids, attention_mask=mask, pixel_values=model.pixel_values_for(img),
                         max_new_tokens=5, min_new_tokens=5, do_sample=False)
    new = out[0, input_ids.shape[1]:].tolist()
    assert len(new) == 5 and not set(new) & set(model.stop_token_ids())
    assert long == [tok.decode(new, skip_special_tokens=True).strip()]
    assert long[0].startswith(greedy[0]) and long[0] != greedy[0]


# --------------------------------------------------------------------------- saving and loading


@pytest.mark.parametrize("family", ["llama3", "qwen2"])
def test_save_and_reload_bit_exact_through_auto_class(family, request, siglip_dir, tmp_path):
    from transformers import AutoModelForImageTextToText

    model, tok = family_model(request.getfixturevalue(f"{family}_dir"), siglip_dir, stage="align",
                              extra=["model.dtype=bfloat16"])
    model.save_pretrained(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    assert cfg["model_type"] == "openmind" and cfg["architectures"] == ["MultimodalReasoningModel"]
    back = AutoModelForImageTextToText.from_pretrained(tmp_path)
    assert type(back) is MultimodalReasoningModel and back.tokenizer is not None
    assert {n: p.dtype for n, p in back.named_parameters()} == {n: p.dtype for n, p in model.named_parameters()}
    assert back.projector.linear_1.weight.dtype == torch.float32
    assert back.language_model.get_input_embeddings().weight.dtype == torch.bfloat16
    sd, bsd = model.state_dict(), back.state_dict()
    assert sd.keys() == bsd.keys() and all(torch.equal(sd[k], bsd[k]) for k in sd)
    assert back.generation_config.eos_token_id == model.generation_config.eos_token_id
    if family == "qwen2":  # tied embeddings stay tied
        lm = back.language_model
        assert lm.get_output_embeddings().weight.data_ptr() == lm.get_input_embeddings().weight.data_ptr()
    ids, mask = model._prepare_prompts("What color?", 1)
    pix = model.pixel_values_for([Image.new("RGB", (56, 56), "blue")])
    with torch.no_grad():
        assert torch.equal(model.eval()(ids, mask, pix).logits, back.eval()(ids, mask, pix).logits)
    # loading in another dtype / onto a device map goes through transformers' own loader
    f32 = MultimodalReasoningModel.from_pretrained(tmp_path, dtype=torch.float32, device_map="cpu")
    assert {p.dtype for p in f32.parameters()} == {torch.float32}


def test_auto_class_in_a_fresh_process(tmp_path, llama3_dir, siglip_dir):
    model, _ = family_model(llama3_dir, siglip_dir)
    model.save_pretrained(tmp_path / "final")
    code = (
        "import openmind_core.model, torch\n"
        "from transformers import AutoConfig, AutoModelForImageTextToText\n"
        f"d = {str(tmp_path / 'final')!r}\n"
        "assert AutoConfig.from_pretrained(d).model_type == 'openmind'\n"
        "m = AutoModelForImageTextToText.from_pretrained(d)\n"
        "print(type(m).__name__, m.generate(torch.zeros(1, 3, 56, 56), 'What?', max_new_tokens=2, do_sample=False))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                         env={**__import__("os").environ, "HF_HUB_OFFLINE": "1"})
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.startswith("MultimodalReasoningModel [")


def test_image_processor_settings_are_honoured(tmp_path, llama3_dir):
    from transformers import AutoImageProcessor

    clip_mean, clip_std = (0.4815, 0.4578, 0.4082), (0.2686, 0.2613, 0.2758)
    vision = make_siglip_vision(tmp_path / "clipish", image_mean=clip_mean, image_std=clip_std)
    model, _ = family_model(llama3_dir, vision)
    assert model.config.image_mean == pytest.approx(clip_mean) and model.config.image_std == pytest.approx(clip_std)
    img = Image.new("RGB", (56, 56), (255, 0, 0))
    pix = model.pixel_values_for([img])
    assert pix[0, 0, 0, 0].item() == pytest.approx((1.0 - clip_mean[0]) / clip_std[0], rel=1e-5)
    assert pix[0, 1, 0, 0].item() == pytest.approx((0.0 - clip_mean[1]) / clip_std[1], rel=1e-5)
    model.save_pretrained(tmp_path / "saved")
    proc = AutoImageProcessor.from_pretrained(tmp_path / "saved")
    assert list(proc.image_mean) == pytest.approx(clip_mean)
    ref = proc(images=img, return_tensors="pt")["pixel_values"]
    torch.testing.assert_close(ref, pix, atol=1e-5, rtol=1e-5)  # the saved processor preprocesses as we do


def test_an_image_processor_of_another_size_is_refused(tmp_path, llama3_dir):
    """transformers 5 gives ``proc.size`` as a SizeDict (not a dict): its size is read all the same, and a
    preprocessor resizing to another size than the tower's is refused."""
    from families import _save_image_processor
    from openmind_core.model.assembly import image_processor_settings

    vision = make_siglip_vision(tmp_path / "siglip56")
    assert image_processor_settings(str(vision))[3] == 56
    _save_image_processor(vision, 224, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))  # a 224-px preprocessor, a 56-px tower
    assert image_processor_settings(str(vision))[3] == 224
    with pytest.raises(ValueError, match="resizes to 224 px, but model.vision.img_size is 56"):
        family_model(llama3_dir, vision)


def test_pretrained_towers_load_in_their_target_dtype_without_random_init(monkeypatch, llama3_dir, siglip_dir):
    """Frozen pretrained towers arrive in bf16 straight from the checkpoint: each is built on the meta
    device and filled from the file, never created at random (in fp32) first."""
    from transformers import AutoModelForCausalLM, PreTrainedModel

    built = []
    real = PreTrainedModel.post_init

    def spy(self):
        built.append((type(self).__name__, next(self.parameters()).device.type))
        return real(self)

    monkeypatch.setattr(PreTrainedModel, "post_init", spy)
    model, tok = family_model(llama3_dir, siglip_dir, stage="align", extra=["model.dtype=bfloat16"])
    towers = [(name, dev) for name, dev in built if name in ("LlamaForCausalLM", "SiglipVisionModel")]
    assert towers and all(dev == "meta" for _, dev in towers), built
    assert {p.dtype for p in model.language_model.parameters()} == {torch.bfloat16}
    assert {p.dtype for p in model.vision_encoder.parameters()} == {torch.bfloat16}
    assert {p.dtype for p in model.projector.parameters()} == {torch.float32}
    ref = AutoModelForCausalLM.from_pretrained(llama3_dir, dtype=torch.bfloat16)
    assert torch.equal(ref.model.layers[0].mlp.up_proj.weight, model.language_model.model.layers[0].mlp.up_proj.weight)
    emb, ref_emb = model.language_model.get_input_embeddings().weight, ref.get_input_embeddings().weight
    assert torch.equal(emb[: ref_emb.shape[0]], ref_emb)  # pretrained rows kept; new rows only added


def test_legacy_format_directory_still_loads(tmp_path):
    """A directory written before format 2 (openmind_config.json) loads and answers the same."""
    from safetensors.torch import save_model

    from openmind_core.model.tokenizer import train_bpe_tokenizer

    tok = train_bpe_tokenizer(["a red circle", "What color is it?", "blue"], vocab_size=300)
    cfg = load_config(overrides=["model.stage=align"]).model
    torch.manual_seed(0)
    model = build_model(cfg, tok).eval()
    d = tmp_path / "old"
    d.mkdir()
    tok.save_pretrained(d)
    save_model(model, str(d / "model.safetensors"), metadata={"format": "pt", "openmind_format_version": "1"})
    (d / "openmind_config.json").write_text(json.dumps({
        "format_version": 1, "model": cfg.model_dump(mode="json"), "stage": "align",
        "vision_config": model.vision_encoder.siglip.config.to_dict(),
        "lm_config": model.language_model.config.to_dict()}))
    back = MultimodalReasoningModel.from_pretrained(d).eval()
    ids, mask = model._prepare_prompts("What color is it?", 1)
    pix = torch.randn(1, 3, 56, 56)
    with torch.no_grad():
        assert torch.equal(model(ids, mask, pix).logits, back(ids, mask, pix).logits)
    back.save_pretrained(tmp_path / "new")
    assert (tmp_path / "new" / "config.json").is_file()


def test_language_model_attention_choice(monkeypatch):
    """flash-attn 2 for the LM only on CUDA in 16 bits with the package installed; SDPA otherwise, quietly on CPU."""
    import openmind_core.model.attention as attention
    from openmind_core.model.assembly import lm_attention

    cfg = load_config(overrides=["model.dtype=bfloat16"]).model
    assert cfg.lm.attn_implementation == "auto" and lm_attention(cfg, torch.device("cpu")) == "sdpa"
    monkeypatch.setattr(attention, "flash_attn_available", lambda: True)
    monkeypatch.setattr("openmind_core.model.assembly.select_backend", attention.select_backend)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert lm_attention(cfg, torch.device("cuda")) == "flash_attention_2"
    assert lm_attention(cfg.model_copy(update={"lm": cfg.lm.model_copy(update={"attn_implementation": "sdpa"})}),
                        torch.device("cuda")) == "sdpa"
    assert attention.select_backend(True, torch.device("cuda"), torch.bfloat16) == ("flash_attention_2", None)
    assert attention.select_backend(True, torch.device("cuda"), torch.float32)[0] == "sdpa"
    assert attention.select_backend(False, torch.device("cuda"), torch.bfloat16) == ("sdpa", None)
    assert attention.select_backend(True, torch.device("cpu"), torch.bfloat16)[0] == "sdpa"


def test_template_truncation_cuts_text_never_images_or_template(qwen2_dir, siglip_dir):
    model, tok = family_model(qwen2_dir, siglip_dir)
    n, image_id = model.num_image_tokens, model.image_token_id
    full = prompting.encode(tok, "What is here? " * 20, "a red circle " * 20, n, image_id, 1000)
    assert not full.truncated
    budget = len(full.input_ids) - n - 60
    cut = prompting.encode(tok, "What is here? " * 20, "a red circle " * 20, n, image_id, budget)
    assert cut.truncated and len(cut.input_ids) - n == budget
    assert cut.input_ids.count(image_id) == n
    text = tok.decode(cut.input_ids)
    assert text.startswith("<|im_start|>system\n") and "<|im_start|>assistant\n" in text
    assert text.endswith("<|im_end|>\n")  # the turn still closes (and ChatML's newline follows, as rendered)
    assert tok.decode([t for t in cut.labels if t != IGNORE]).endswith("<|im_end|>")
