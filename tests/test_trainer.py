"""ProductionTrainer on the CPU: result, files, metrics, accumulation maths, param groups, amp,
a model with the real forward signature (vision/projector/LM, frozen tower), and the launcher."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from openmind_core.training import ProductionTrainer, param_groups, resolve_amp, run_torchrun
from openmind_core.training.metrics import read_metrics
from trainer_helpers import ToyDataset, collate, make_cfg, run_toy


@pytest.fixture(scope="module")
def clean(tmp_path_factory):
    d = tmp_path_factory.mktemp("clean")
    calls: list[dict] = []
    res = run_toy(d, make_cfg(), progress=calls.append)
    return d, res, calls


def test_result_files_and_metrics(clean):
    d, res, calls = clean
    assert res.steps == 12 and res.epochs_completed == 2 and res.samples_seen == 96
    assert res.first_loss is not None and res.last_loss is not None and res.last_loss < res.first_loss
    assert res.first_val_loss and res.best_val_loss <= res.first_val_loss and res.final_val_loss
    assert res.checkpoints and res.checkpoints[-1].endswith("step-00000012")
    assert res.tokens_per_second > 0 and res.device == "cpu" and res.amp == "off" and res.resumed_from_step is None
    assert (d / "final" / "model.safetensors").exists() and (d / "best" / "model.safetensors").exists()
    assert (d / "loss_curve.png").stat().st_size > 1000
    recs = read_metrics(d / "metrics.jsonl")
    steps = [r for r in recs if "event" not in r]
    assert [r["step"] for r in steps] == list(range(1, 13))
    for key in ("loss", "lr", "grad_norm", "data_time", "step_time", "tokens_per_s", "skipped"):
        assert key in steps[0]
    evals = [r["step"] for r in recs if r.get("event") == "eval"]
    ckpts = [r["step"] for r in recs if r.get("event") == "checkpoint"]
    assert evals == [4, 8, 12] and ckpts == [0, 4, 8, 12]  # optimizer steps only, never micro-batches
    assert all(r["path"].endswith(f"step-{r['step']:08d}") for r in recs if r.get("event") == "checkpoint")
    assert all("event" in r for r in recs if "loss" not in r or "val_loss" in r)  # every non-step line is an event
    assert res.val_losses == [r["val_loss"] for r in recs if r.get("event") == "eval"] and len(res.val_losses) == 3
    assert res.state_restore_checked is True and res.settings_changes == [] and res.peak_memory_bytes is None
    assert [c["step"] for c in calls] == [2, 4, 6, 8, 10, 12, 12]  # every log_every steps + the end
    for key in ("step", "total_steps", "epoch", "loss", "lr", "tokens_per_s"):
        assert key in calls[0]
    assert steps[0]["lr"] < steps[1]["lr"] or steps[0]["lr"] > steps[-1]["lr"]  # warmup then cosine
    assert steps[-1]["lr"] == 0.0


def test_token_weighting_exact_without_dropout(tmp_path):
    """accum 2 x micro 4 equals one micro-batch of 8: the step loss is the mean over all the step's
    tokens, not the mean of the micro-batch means (the micro-batches have unequal token counts)."""
    from openmind_core.data.sampler import ResumableSampler

    ds = ToyDataset(48)
    order = ResumableSampler(ds.sample_ids, seed=7).epoch_order(0)
    n = [int((collate([ds[i] for i in order[k:k + 4]])["labels"][:, 1:] != -100).sum()) for k in (0, 4)]
    assert n[0] != n[1]

    ra = run_toy(tmp_path / "a", make_cfg(max_steps=3, grad_accum=2, micro_batch_size=4), dropout=0.0)
    rb = run_toy(tmp_path / "b", make_cfg(max_steps=3, grad_accum=1, micro_batch_size=8), dropout=0.0)
    assert ra.steps == rb.steps == 3
    la = [r["loss"] for r in read_metrics(tmp_path / "a" / "metrics.jsonl") if "event" not in r]
    lb = [r["loss"] for r in read_metrics(tmp_path / "b" / "metrics.jsonl") if "event" not in r]
    assert la == pytest.approx(lb, rel=1e-5, abs=1e-6)
    import safetensors.torch

    wa = safetensors.torch.load_file(str(tmp_path / "a" / "final" / "model.safetensors"))
    wb = safetensors.torch.load_file(str(tmp_path / "b" / "final" / "model.safetensors"))
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------- real-shaped model


class TinyVLM(torch.nn.Module):
    """forward(input_ids, attention_mask, pixel_values, labels) like MultimodalReasoningModel."""

    def __init__(self) -> None:
        super().__init__()
        from transformers import LlamaConfig, LlamaForCausalLM

        self.vision_encoder = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 4, 4), torch.nn.Flatten(2))
        self.projector = torch.nn.Sequential(torch.nn.LayerNorm(8), torch.nn.Linear(8, 16))
        self.language_model = LlamaForCausalLM(LlamaConfig(
            vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
            num_key_value_heads=1, max_position_embeddings=64))

    def forward(self, input_ids, attention_mask, pixel_values, labels=None):
        img = self.projector(self.vision_encoder(pixel_values).transpose(1, 2))  # [B, 4, 16]
        txt = self.language_model.get_input_embeddings()(input_ids)
        emb = torch.cat([img, txt], 1)
        mask = torch.cat([torch.ones(img.shape[:2], dtype=attention_mask.dtype), attention_mask], 1)
        if labels is not None:
            labels = torch.cat([torch.full(img.shape[:2], -100, dtype=labels.dtype), labels], 1)
        out = self.language_model(inputs_embeds=emb, attention_mask=mask, labels=labels)
        return SimpleNamespace(loss=out.loss)


class VLMData(torch.utils.data.Dataset):
    def __init__(self, n: int) -> None:
        self.base = ToyDataset(n)
        self.sample_ids = self.base.sample_ids

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i):
        it = self.base[i]
        g = torch.Generator().manual_seed(i)
        return {"sample_id": it["sample_id"], "input_ids": it["input_ids"], "attention_mask": it["attention_mask"],
                "labels": it["labels"], "pixel_values": torch.randn(3, 8, 8, generator=g)}


def test_real_forward_signature_frozen_tower_and_lr_groups(tmp_path):
    torch.manual_seed(0)
    model = TinyVLM()
    model.vision_encoder.requires_grad_(False)
    frozen = {k: v.clone() for k, v in model.vision_encoder.state_dict().items()}
    cfg = make_cfg(max_steps=3, save_steps=2, lr=1e-3, lr_projector=5e-3, lr_lm=2e-4, weight_decay=0.1)
    groups = param_groups(model, cfg)
    by_name = {g["name"]: g for g in groups}
    assert by_name["projector"]["lr"] == 5e-3 and by_name["language_model"]["lr"] == 2e-4
    assert by_name["projector.no_decay"]["weight_decay"] == 0.0 and by_name["projector"]["weight_decay"] == 0.1
    nd = {id(p) for p in by_name["language_model.no_decay"]["params"]}
    assert id(model.language_model.model.norm.weight) in nd  # RMSNorm: no decay
    assert not any(n.startswith("vision_encoder") for g in groups for n in [g["name"]])
    before_proj = model.projector[1].weight.detach().clone()
    res = ProductionTrainer(model, VLMData(24), VLMData(8), collate, cfg, tmp_path, seed=1).train()
    assert res.steps == 3 and math.isfinite(res.last_loss)
    assert all(torch.equal(frozen[k], v) for k, v in model.vision_encoder.state_dict().items())
    assert not torch.equal(before_proj, model.projector[1].weight)
    import safetensors.torch

    ck = safetensors.torch.load_file(str(tmp_path / "checkpoints" / "step-00000003" / "model.safetensors"))
    assert ck and not any(k.startswith("vision_encoder") for k in ck)  # frozen weights not checkpointed
    full = safetensors.torch.load_file(str(tmp_path / "final" / "model.safetensors"))
    assert any(k.startswith("vision_encoder") for k in full)  # final/ holds the whole model


def test_amp_resolution():
    cpu = torch.device("cpu")
    assert resolve_amp("auto", cpu).name == "off"
    assert resolve_amp("bf16", cpu).dtype == torch.bfloat16
    assert resolve_amp("off", cpu).enabled is False
    fp16 = resolve_amp("fp16", cpu)  # allowed on CPU when asked for: the GradScaler path runs without a GPU
    assert fp16.dtype == torch.float16 and fp16.needs_scaler
    with pytest.raises(ValueError, match="must be auto, bf16, fp16 or off"):
        resolve_amp("fp8", cpu)


def test_bf16_on_cpu_when_asked(tmp_path):
    res = run_toy(tmp_path, make_cfg(max_steps=2, amp="bf16", deterministic=False))
    assert res.amp == "bf16" and math.isfinite(res.last_loss)


def _running(pid: int) -> bool:
    """``pid`` exists and is not a zombie (a killed orphan waits for init to reap it)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_run_torchrun_streams_and_times_out(tmp_path):
    """At the timeout the whole process tree goes, the worker too: exit 124, the output so far kept."""
    import os
    import signal
    import threading

    lines: list[str] = []
    mod = tmp_path / "om_sleepy.py"
    pid_file = tmp_path / "worker.pid"
    mod.write_text(f"import os, time\nopen({str(pid_file)!r}, 'w').write(str(os.getpid()))\n"
                   "print('hello from', os.environ['RANK'], flush=True)\ntime.sleep(600)\n")
    env_pp = os.environ.get("PYTHONPATH", "")
    os.environ["PYTHONPATH"] = f"{tmp_path}{os.pathsep}{env_pp}"
    result: list[int] = []
    try:
        t = threading.Thread(target=lambda: result.append(
            run_torchrun("om_sleepy", [], nproc=1, on_line=lines.append, timeout_s=10, grace_s=2)), daemon=True)
        t.start()
        t.join(300)  # a hang guard only: run_torchrun waiting for its 600 s worker would be the failure
        assert result == [124], (result, lines[-5:])
        worker = int(pid_file.read_text())
        assert not _running(worker), f"worker {worker} outlived torchrun"  # killed, not left behind
    finally:
        os.environ["PYTHONPATH"] = env_pp
        if pid_file.exists() and _running(int(pid_file.read_text())):
            os.kill(int(pid_file.read_text()), signal.SIGKILL)
    assert any("hello from 0" in ln for ln in lines), lines[-5:]
