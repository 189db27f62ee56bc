"""LoRA on the LM for stage finetune (PEFT): config, what trains, checkpoints/resume/rollback, saving,
merged export, memory estimate.  Tiny models on CPU, fp32.  Over 400 lines: every LoRA claim of README in
one module, sharing its tiny-model fixtures."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import safetensors.torch
import torch

from openmind_core.model import MultimodalReasoningModel, build_model, build_tokenizer, estimate_memory
from schemas.loading import ConfigError, load_config
from families import llama3_dir, siglip_dir  # noqa: F401  (fixtures)
from trainer_helpers import assert_same_state, final_state, make_cfg, run_toy

CORPUS = ["a red circle on a blue background", "What color is the circle?", "Describe the image."] * 10
ROOT = Path(__file__).resolve().parent.parent


def lora_cfg(*extra: str):
    return load_config(overrides=["model.stage=finetune", "model.lm.lora.r=4", "train.micro_batch_size=2", *extra])


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer(load_config().model.tokenizer.model_copy(update={"vocab_size": 300}), CORPUS)


def _batch(m, b=2, s=30, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, 200, (b, s), generator=g)
    ids[:, 1:1 + m.num_image_tokens] = m.image_token_id
    return dict(input_ids=ids, attention_mask=torch.ones_like(ids),
                pixel_values=torch.randn(b, 3, m.img_size, m.img_size, generator=g))


def _trained_like(m, seed=1):
    """Non-zero adapters (lora_B starts at zero) and a changed projector, as after training."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in m.named_parameters():
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=g) * 0.02)
    return m


# --------------------------------------------------------------------------- 1. config


@pytest.mark.parametrize("stage", ["align", "full"])
def test_lora_refused_outside_finetune(stage):
    with pytest.raises(ConfigError) as e:
        load_config(overrides=[f"model.stage={stage}", "model.lm.lora.r=8"])
    msg = str(e.value)
    assert "\n" not in msg and "model.lm.lora" in msg and "model.stage" in msg and repr(stage) in msg


def test_lora_defaults_and_null_default():
    assert load_config().model.lm.lora is None
    c = load_config(overrides=["model.stage=finetune", "model.lm.lora.r=8"]).model.lm.lora
    assert c.r == 8 and c.target_modules == ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                                             "down_proj"]


# --------------------------------------------------------------------------- 2. what trains


def test_trainable_is_adapters_plus_projector_and_matches_peft(tok, caplog):
    import peft

    cfg = lora_cfg()
    torch.manual_seed(0)
    with caplog.at_level("INFO"):
        m = build_model(cfg.model, tok)
    names = [n for n, p in m.named_parameters() if p.requires_grad]
    assert names and all(n.startswith("projector.") or ("lora_" in n and n.startswith("language_model.")) for n in names)
    assert any(n.startswith("projector.") for n in names) and any("lora_A" in n for n in names)
    counts = m.parameter_counts()
    assert counts["vision_encoder"][0] == 0 and "language_model (LoRA)" in counts
    # PEFT's own count on the same LM shape (get_peft_model = what print_trainable_parameters reports)
    base = build_model(cfg.model.model_copy(update={"lm": cfg.model.lm.model_copy(
        update={"lora": None})}), tok).language_model
    pm = peft.get_peft_model(base, peft.LoraConfig(r=4, lora_alpha=32, lora_dropout=0.05,
                                                   target_modules=cfg.model.lm.lora.target_modules))
    assert counts["language_model (LoRA)"] == pm.get_nb_trainable_parameters()
    assert counts["total"][0] == pm.get_nb_trainable_parameters()[0] + counts["projector"][0]
    assert "language_model (LoRA)" in caplog.text  # the logged freeze table says it


def test_adapters_take_lr_lm(tok):
    from openmind_core.training.optim import param_groups

    m = build_model(lora_cfg().model, tok)
    tc = make_cfg(lr=1e-3, lr_lm=2e-4, lr_projector=5e-3)
    groups = {g["name"]: g for g in param_groups(m, tc)}
    lm = [g for n, g in groups.items() if n.startswith("language_model")]
    assert lm and all(g["lr"] == 2e-4 for g in lm)
    ids = {id(p) for g in lm for p in g["params"]}
    assert ids == {id(p) for n, p in m.named_parameters() if "lora_" in n}
    assert all(g["lr"] == 5e-3 for n, g in groups.items() if n.startswith("projector"))


# --------------------------------------------------------------------------- 3. checkpoints, resume, rollback


@pytest.fixture(scope="module")
def lora_reference(tmp_path_factory):
    d = tmp_path_factory.mktemp("lora_reference")
    return d, run_toy(d, make_cfg(), model="lora")


def test_checkpoint_holds_adapters_and_projector_only(lora_reference):
    d, res = lora_reference
    w, _ = final_state(d)
    assert w and all(k.startswith("projector.") or "lora_" in k for k in w), sorted(w)[:5]
    assert any("lora_B" in k for k in w) and any(k.startswith("projector.") for k in w)
    assert res.steps == 12


def test_lora_killed_and_resumed_equals_unbroken(tmp_path, lora_reference):
    from test_resume_kill import _run_until_done, _step_lines

    kills = "micro:3,step:5"  # mid-accumulation and mid-step (after the update, before the bookkeeping)
    ref_dir, ref = lora_reference
    codes = _run_until_done(tmp_path, kills, extra=("--model", "lora"))
    assert codes.count(-9) == 2, codes
    assert_same_state(ref_dir, tmp_path)
    assert _step_lines(tmp_path) == list(range(1, 13))
    res = json.loads((tmp_path / "result.json").read_text())
    assert res["final_val_loss"] == ref.final_val_loss


def test_lora_spike_rollback_equals_run_without_the_samples(tmp_path):
    from test_spike import ids_of_step

    bad = ids_of_step(6)[:2]
    a, b = tmp_path / "poisoned", tmp_path / "clean"
    res = run_toy(a, make_cfg(), poison={sid: 100.0 for sid in bad}, model="lora")
    assert len(res.rollbacks) == 1 and (res.rollbacks[0].step, res.rollbacks[0].restored_step) == (6, 4)
    state = json.loads((sorted((a / "checkpoints").glob("step-*"))[-1] / "trainer_state.json").read_text())
    ledger = [sid for sid, _ in state["sampler"]["skip"]]
    ref = run_toy(b, make_cfg(), skip=ledger, model="lora")
    assert ref.rollbacks == [] and ref.steps == res.steps
    assert_same_state(a, b)


def test_lora_nan_gradient_leaves_state_unchanged(tmp_path):
    from test_spike import ids_of_step

    res = run_toy(tmp_path, make_cfg(save_steps=1, max_steps=6), nan_ids=set(ids_of_step(6)[:1]), model="lora")
    assert res.skipped_steps == 1
    ck = tmp_path / "checkpoints"
    w5 = safetensors.torch.load_file(str(ck / "step-00000005" / "model.safetensors"))
    w6 = safetensors.torch.load_file(str(ck / "step-00000006" / "model.safetensors"))
    assert w5.keys() == w6.keys() and all(torch.equal(w5[k], w6[k]) for k in w5)


def test_lora_ddp_two_ranks_matches_one_process(tmp_path):
    from test_ddp import _losses, _torchrun

    single = tmp_path / "single"
    run_toy(single, make_cfg(micro_batch_size=4, grad_accum=2), dropout=0.0, model="lora")
    rc, lines = _torchrun(tmp_path / "ddp", ["--model", "lora"])
    assert rc == 0, "\n".join(lines[-40:])
    got, ref = _losses(tmp_path / "ddp"), _losses(single)
    assert len(got) == len(ref) == 12 and got == pytest.approx(ref, rel=1e-5, abs=1e-6)


def test_lora_fsdp_two_ranks_matches_one_process(tmp_path):
    from test_ddp import _losses, _torchrun

    single = tmp_path / "single"
    run_toy(single, make_cfg(micro_batch_size=4, grad_accum=2), dropout=0.0, model="lora")
    rc, lines = _torchrun(tmp_path / "fsdp", ["--model", "lora", "--set", 'strategy="fsdp"', "--set",
                                             "micro_batch_size=2", "--set", "grad_accum=2"])
    assert rc == 0, "\n".join(lines[-40:])
    got, ref = _losses(tmp_path / "fsdp"), _losses(single)
    assert len(got) == len(ref) == 12 and got == pytest.approx(ref, rel=1e-5, abs=1e-6)
    w, _ = final_state(tmp_path / "fsdp")  # full (gathered) trainable tensors: adapters + projector
    ws, _ = final_state(single)
    assert w.keys() == ws.keys() and all(k.startswith("projector.") or "lora_" in k for k in w)


# --------------------------------------------------------------------------- 4. saving, reload, merged export


@pytest.fixture(scope="module")
def saved(tok, tmp_path_factory):
    d = tmp_path_factory.mktemp("lora_saved")
    torch.manual_seed(0)
    m = _trained_like(build_model(lora_cfg().model, tok)).eval()
    m.save_pretrained(d)
    return m, d


def test_saved_dir_is_peft_format_without_the_base(saved):
    import peft

    m, d = saved
    assert (d / "adapter_config.json").is_file() and (d / "adapter_model.safetensors").is_file()
    rest = safetensors.torch.load_file(str(d / "model.safetensors"))
    assert not any("lora_" in k for k in rest) and any(k.startswith("projector.") for k in rest)
    # the tiny default's towers are random inline (no pointer): stored; a pretrained one would not be
    cfg = json.loads((d / "config.json").read_text())
    assert cfg["openmind"]["lm"]["lora"]["r"] == 4 and "name_or_path" in cfg["openmind"]["lm"]
    assert "pretrained" in cfg["openmind"]["vision"]
    # PeftModel.from_pretrained onto the base LM gives the LoRA LM's outputs
    base = build_model(lora_cfg().model.model_copy(update={"lm": lora_cfg().model.lm.model_copy(
        update={"lora": None})}), m.tokenizer).language_model
    base.load_state_dict({k.replace(".base_layer", ""): v for k, v in m.language_model.state_dict().items()
                          if "lora_" not in k})
    pm = peft.PeftModel.from_pretrained(base, str(d)).eval()
    emb = torch.randn(2, 7, m.language_model.config.hidden_size)
    with torch.no_grad():
        assert torch.equal(pm(inputs_embeds=emb).logits, m.language_model(inputs_embeds=emb).logits)


def test_from_pretrained_restores_the_whole_model(saved):
    m, d = saved
    r = MultimodalReasoningModel.from_pretrained(d).eval()
    batch = _batch(m)
    with torch.no_grad():
        assert torch.equal(m(**batch).logits, r(**batch).logits)
    assert {n for n, p in r.named_parameters() if p.requires_grad} == {n for n, p in m.named_parameters()
                                                                      if p.requires_grad}


def test_pretrained_bases_are_not_stored(tmp_path, llama3_dir, siglip_dir):  # noqa: F811
    cfg = load_config(overrides=[f"model.lm.name_or_path={llama3_dir}", f"model.vision.pretrained={siglip_dir}",
                                 "model.stage=finetune", "model.max_length=160", "model.lm.lora.r=4"]).model
    tk = build_tokenizer(cfg.tokenizer)
    torch.manual_seed(0)
    m = _trained_like(build_model(cfg, tk)).eval()
    m.save_pretrained(tmp_path)
    rest = safetensors.torch.load_file(str(tmp_path / "model.safetensors"))
    lm_keys = [k for k in rest if k.startswith("language_model.")]
    assert lm_keys and all("embed_tokens" in k or "lm_head" in k for k in lm_keys), lm_keys
    assert not any(k.startswith("vision_encoder.") for k in rest)  # rebuilt from model.vision.pretrained
    r = MultimodalReasoningModel.from_pretrained(tmp_path).eval()
    batch = _batch(m, s=m.num_image_tokens + 8)
    with torch.no_grad():
        assert torch.equal(m(**batch).logits, r(**batch).logits)


def test_merged_export_equals_unmerged_and_loads_without_peft(saved, tmp_path):
    from openmind_core.app.export import export_merged

    m, d = saved
    out = export_merged(d, tmp_path / "merged")
    assert not (out / "adapter_config.json").exists()
    merged = MultimodalReasoningModel.from_pretrained(out).eval()
    batch = _batch(m)
    with torch.no_grad():
        a, b = m(**batch).logits, merged(**batch).logits
    torch.testing.assert_close(b, a, rtol=0, atol=1e-5)  # fp32: the merge only reorders the sums
    code = ("import sys; sys.modules['peft'] = None\n"
            "import openmind_core\nfrom openmind_core.model import MultimodalReasoningModel\n"
            f"m = MultimodalReasoningModel.from_pretrained({str(out)!r}); assert 'peft' not in repr(type(m))\n"
            "print('NO_PEFT_OK', sum(p.numel() for p in m.parameters()))")
    p = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120,
                       env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert "NO_PEFT_OK" in p.stdout, p.stderr[-2000:]


def test_cli_export_merge(saved, tmp_path):
    m, d = saved
    run = tmp_path / "run"
    (run).mkdir()
    os.symlink(d, run / "final")
    p = subprocess.run([sys.executable, "-m", "flows.cli", "export", str(run), "--merge", str(tmp_path / "out")],
                       cwd=ROOT, capture_output=True, text=True, timeout=180)
    assert p.returncode == 0, p.stderr[-2000:]
    assert (tmp_path / "out" / "model.safetensors").is_file() and (tmp_path / "out" / "config.json").is_file()
    assert json.loads((tmp_path / "out" / "config.json").read_text())["openmind"]["lm"]["lora"] is None


# --------------------------------------------------------------------------- 5. memory


@pytest.mark.parametrize("dropout, checkpointing", [(0.0, False), (0.05, False), (0.05, True)])
def test_memory_exact_parts_and_activations_with_lora(tok, dropout, checkpointing):
    from test_memory import nbytes, saved_activation_bytes

    cfg = lora_cfg(f"model.lm.lora.dropout={dropout}", "train.micro_batch_size=3",
                   f"model.gradient_checkpointing={str(checkpointing).lower()}")
    est = estimate_memory(cfg, device="cpu", tokenizer=tok)
    torch.manual_seed(0)
    m = build_model(cfg.model, tok).train()
    assert est.weights == nbytes(m.parameters())
    trainable = [p for p in m.parameters() if p.requires_grad]
    assert est.params["total"] == (sum(p.numel() for p in trainable), sum(p.numel() for p in m.parameters()))
    assert est.params["language_model"][0] == sum(p.numel() for n, p in m.named_parameters() if "lora_" in n)
    opt = torch.optim.AdamW(trainable, lr=1e-3)
    b, s = 3, est.seq_len
    ids = torch.randint(5, len(tok), (b, s))
    ids[:, 1:1 + m.num_image_tokens] = m.image_token_id
    mask = torch.ones_like(ids)
    mask[0, -5:] = 0
    batch = dict(input_ids=ids, attention_mask=mask, pixel_values=torch.randn(b, 3, 56, 56))
    measured = saved_activation_bytes(m, batch)
    predicted = est.activations - (est.ckpt_recompute if checkpointing else 0)  # as tests/test_memory.py
    assert abs(predicted / measured - 1) < 0.10, (predicted, measured)
    m(**batch, labels=ids).loss.backward()
    opt.step()
    assert est.gradients == nbytes(p.grad for p in trainable)
    assert est.optimizer_state == nbytes(t for st in opt.state.values() for t in st.values() if torch.is_tensor(t))


# --------------------------------------------------------------------------- 6. the recipe


RECIPE = ROOT / "configs" / "full-finetune-lora.yaml"


def test_recipe_validates_and_fits_40_gb():
    cfg = load_config(RECIPE)
    assert cfg.model.stage == "finetune" and cfg.model.init_from and cfg.model.lm.lora.r == 16
    assert set(cfg.model.lm.lora.target_modules) == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                                                     "up_proj", "down_proj"}
    est = estimate_memory(cfg)
    assert est.fits and est.gradient_checkpointing, est.format_table()


def test_init_from_loads_the_projector(saved, tok):
    m, d = saved
    cfg = lora_cfg(f"model.init_from={d}")
    fresh = build_model(cfg.model, tok)
    for k, v in m.projector.state_dict().items():
        assert torch.equal(fresh.projector.state_dict()[k], v)


SHRUNK = ["data.synthetic.num_captions=64", "data.synthetic.num_vqa=32", "data.synthetic.image_size=56",
          "inference.max_samples=4", "inference.max_new_tokens=6", "inference.batch_size=4",
          "train.wandb.mode=disabled",
          "model.vision.img_size=56", "model.vision.patch_size=8", "model.vision.embed_dim=64",
          "model.vision.depth=2", "model.vision.num_heads=2", "model.vision.mlp_dim=128",
          "model.lm.hidden_size=64", "model.lm.num_layers=2", "model.lm.num_heads=4", "model.lm.num_kv_heads=2",
          "model.lm.intermediate_size=128", "model.lm.vocab_size=null", "model.tokenizer.vocab_size=400",
          "train.epochs=1", "train.micro_batch_size=4", "train.grad_accum=2", "train.save_steps=4",
          "train.eval_steps=4", "train.num_workers=0"]


@pytest.mark.slow
def test_align_then_finetune_lora_then_inference(prefect_server, tmp_path):
    from flows.week1 import week1
    from openmind_core.app.report import checklist_markdown
    from schemas.config import FULL_CONFIG

    a = week1(config_path=str(FULL_CONFIG), overrides=SHRUNK, run_name="align", lake=str(tmp_path),
              return_state=True)
    assert a.is_completed(), a.message
    align_final = tmp_path / "runs" / "align" / "final"
    state = week1(config_path=str(RECIPE), overrides=SHRUNK + [f"model.init_from={align_final}"],
                  run_name="lora", lake=str(tmp_path), return_state=True)
    assert state.is_completed(), state.message
    report = state.result()
    t = report.training
    assert t.stage == "finetune" and t.lora["r"] == 16 and t.started_from == str(align_final)
    assert t.steps > 0 and t.nan_or_inf_losses == 0 and t.reload_equal
    final = Path(t.final_dir)
    assert (final / "adapter_config.json").is_file() and (final / "adapter_model.safetensors").is_file()
    assert report.inference.predictions
    # the same base towers as the align run (rebuilt from run.seed), its projector as the start
    aligned = MultimodalReasoningModel.from_pretrained(align_final).state_dict()
    lora_model = MultimodalReasoningModel.from_pretrained(final).state_dict()
    for k, v in lora_model.items():
        if "lora_" not in k and not k.startswith("projector."):
            assert torch.equal(aligned[k.replace(".base_layer", "")], v), k
    md = checklist_markdown(report)
    assert "Stage `finetune` with LoRA r=16" in md and str(align_final) in md


def test_run_refuses_a_missing_init_from_before_anything_runs(tmp_path):
    from flows.preflight import UsageError, check_inputs

    cfg = load_config(RECIPE, [f"model.init_from={tmp_path / 'nope'}"])
    with pytest.raises(UsageError, match=r"model.init_from: directory .*nope does not exist"):
        check_inputs(cfg)
    (tmp_path / "empty").mkdir()
    cfg = load_config(RECIPE, [f"model.init_from={tmp_path / 'empty'}"])
    with pytest.raises(UsageError, match=r"model.init_from: .*empty holds no model.safetensors"):
        check_inputs(cfg)


def test_loading_init_from_names_a_missing_directory_as_missing(tmp_path):
    from openmind_core.model.assembly import init_projector_from

    with pytest.raises(FileNotFoundError, match="nope'?: the directory does not exist"):
        init_projector_from(None, tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="empty'?: it holds no model.safetensors"):
        init_projector_from(None, tmp_path / "empty")


def test_a_relative_init_from_is_read_from_the_lake(tmp_path, monkeypatch):
    """``runs/<run>/final`` names a directory in the lake, whatever the working directory and --lake."""
    from flows.preflight import UsageError, check_inputs
    from openmind_core.app.run_dir import with_lake_paths

    lake, elsewhere = tmp_path / "lake", tmp_path / "cwd"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    cfg = load_config(RECIPE, ["model.init_from=runs/align/final"])
    with pytest.raises(UsageError, match=rf"directory {lake}/runs/align/final does not exist \(a relative "
                                         rf"model.init_from is read from the lake, {lake}\)"):
        check_inputs(cfg, lake)
    final = lake / "runs" / "align" / "final"
    final.mkdir(parents=True)
    (final / "model.safetensors").write_bytes(b"")
    check_inputs(cfg, lake)
    assert with_lake_paths(cfg, lake).model.init_from == str(final)
    assert cfg.model.init_from == "runs/align/final"  # the config itself is left as written


def test_save_with_a_given_state_dict_writes_the_same_files(saved, tmp_path):
    """FSDP's path: save_model_dir passes a gathered full state dict to save_pretrained(state_dict=)."""
    from openmind_core.training.model_dir import save_model_dir

    m, d = saved
    out = save_model_dir(m, tmp_path / "given", state_dict={k: v.clone() for k, v in m.state_dict().items()})
    for name in ("model.safetensors", "adapter_model.safetensors"):
        a = safetensors.torch.load_file(str(d / name))
        b = safetensors.torch.load_file(str(Path(out) / name))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
    assert (Path(out) / "adapter_config.json").is_file() and (Path(out) / "config.json").is_file()
