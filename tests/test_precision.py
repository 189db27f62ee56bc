"""Mixed precision on the CPU: ``resolve_amp`` per mode, and fp16 autocast + ``torch.amp.GradScaler``
really exercised (fp16 activations, loss scaling, an overflow skipping its step and lowering the
scale), then the trainer with ``train.amp: fp16`` (scaler.pt checkpointed and restored on resume)."""

from __future__ import annotations

import math
import shutil

import pytest
import torch

from openmind_core.training.metrics import read_metrics
from openmind_core.training.precision import autocast, make_scaler, resolve_amp
from trainer_helpers import assert_same_state, make_cfg, run_toy

CPU = torch.device("cpu")


# --------------------------------------------------------------------------- resolve_amp / make_scaler


def test_resolve_amp_on_cpu():
    auto = resolve_amp("auto", CPU)
    assert (auto.name, auto.dtype, auto.enabled, auto.needs_scaler) == ("off", None, False, False)
    bf16 = resolve_amp("bf16", CPU)
    assert (bf16.name, bf16.dtype, bf16.device_type, bf16.needs_scaler) == ("bf16", torch.bfloat16, "cpu", False)
    fp16 = resolve_amp("fp16", CPU)  # allowed on the CPU: slow, but real
    assert (fp16.name, fp16.dtype, fp16.device_type, fp16.needs_scaler) == ("fp16", torch.float16, "cpu", True)
    off = resolve_amp("off", CPU)
    assert (off.name, off.dtype, off.enabled) == ("off", None, False)
    with pytest.raises(ValueError, match="must be auto, bf16, fp16 or off"):
        resolve_amp("fp8", CPU)


def test_make_scaler_only_for_fp16():
    assert make_scaler(resolve_amp("auto", CPU)) is None
    assert make_scaler(resolve_amp("bf16", CPU)) is None
    assert make_scaler(resolve_amp("off", CPU)) is None
    scaler = make_scaler(resolve_amp("fp16", CPU))
    assert isinstance(scaler, torch.amp.GradScaler) and scaler.is_enabled()
    assert scaler._device == "cpu" and scaler.get_scale() == 2.0 ** 16


def test_autocast_off_is_a_no_op():
    lin = torch.nn.Linear(4, 4)
    with autocast(resolve_amp("off", CPU)):
        assert not torch.is_autocast_enabled("cpu")
        assert lin(torch.randn(2, 4)).dtype == torch.float32


# --------------------------------------------------------------------------- fp16 + GradScaler, by hand


def _mlp() -> torch.nn.Sequential:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.GELU(), torch.nn.Linear(32, 1))


def _data() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(64, 8, generator=g)
    y = (x[:, :1] * 2.0 - x[:, 1:2]).sin()
    return x, y


def test_fp16_autocast_and_grad_scaler_train_on_cpu():
    settings = resolve_amp("fp16", CPU)
    model, (x, y) = _mlp(), _data()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    scaler = make_scaler(settings)
    losses = []
    for _ in range(20):
        with autocast(settings):
            assert torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.float16
            hidden = model[0](x)
            assert hidden.dtype == torch.float16  # the matmul really ran in fp16
            pred = model[2](model[1](hidden))
            assert pred.dtype == torch.float16
            loss = torch.nn.functional.mse_loss(pred.float(), y)
        assert loss.dtype == torch.float32
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scale = scaler.get_scale()
        raw = model[0].weight.grad.detach().clone()
        scaler.unscale_(opt)
        torch.testing.assert_close(model[0].weight.grad, raw / scale)  # the grads were scaled, now not
        assert model[0].weight.dtype == torch.float32 and model[0].weight.grad.dtype == torch.float32
        norm = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        assert math.isfinite(float(norm))
        scaler.step(opt)
        scaler.update()
        losses.append(loss.item())
    assert all(math.isfinite(v) for v in losses)
    assert losses[-1] < 0.5 * losses[0], losses
    assert scaler.get_scale() == 2.0 ** 16  # no overflow in 20 steps (growth_interval is 2000)


def test_inf_gradient_skips_the_step_and_lowers_the_scale():
    settings = resolve_amp("fp16", CPU)
    model, (x, y) = _mlp(), _data()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    scaler = make_scaler(settings)

    def step(poison: bool) -> None:
        with autocast(settings):
            loss = torch.nn.functional.mse_loss(model(x).float(), y)
        if poison:
            loss = loss * float("inf")
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        scaler.step(opt)
        scaler.update()

    step(poison=False)
    assert scaler.get_scale() == 2.0 ** 16
    before = {k: v.clone() for k, v in model.state_dict().items()}
    adam_steps = [float(s["step"]) for s in opt.state.values()]
    step(poison=True)
    assert not all(torch.isfinite(p.grad).all() for p in model.parameters())
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), f"{k} changed on an overflowing step"
    assert [float(s["step"]) for s in opt.state.values()] == adam_steps  # the optimizer never ran
    assert scaler.get_scale() == 2.0 ** 15  # backoff_factor 0.5
    step(poison=False)  # and training goes on at the lower scale
    assert any(not torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert scaler.get_scale() == 2.0 ** 15


# --------------------------------------------------------------------------- the trainer with amp=fp16


def test_trainer_fp16_on_cpu_trains_checkpoints_the_scaler_and_resumes(tmp_path):
    """12 steps of the toy with fp16 autocast; sample s005 puts NaN in its step's gradients (once
    per epoch): the scaler skips that step and halves its scale, and the run goes on (no rollback).
    A copy of the run cut back to its step-4 checkpoint resumes to the same weights, optimizer and
    scaler state, so scaler.pt is restored on resume."""
    cfg = make_cfg(amp="fp16")
    a, b = tmp_path / "a", tmp_path / "b"
    res = run_toy(a, cfg, nan_ids={"s005"})
    assert res.amp == "fp16" and res.steps == 12 and res.epochs_completed == 2
    assert math.isfinite(res.first_loss) and math.isfinite(res.last_loss) and res.last_loss < res.first_loss
    assert res.best_val_loss <= res.first_val_loss and not res.rollbacks
    steps = [r for r in read_metrics(a / "metrics.jsonl") if "event" not in r]
    skipped = [r["step"] for r in steps if r["skipped"]]
    assert len(skipped) == 2 and skipped[0] <= 6 < skipped[1], skipped  # once in each epoch
    assert all(math.isfinite(r["loss"]) for r in steps)
    ckpts = sorted((a / "checkpoints").glob("step-*"))
    assert [c.name for c in ckpts] == ["step-00000004", "step-00000008", "step-00000012"]
    assert all((c / "scaler.pt").is_file() for c in ckpts)
    scaler_end = torch.load(ckpts[-1] / "scaler.pt", weights_only=True)
    assert scaler_end["scale"] == 2.0 ** 14  # 2 ** 16 halved by each overflow

    shutil.copytree(a, b)
    for c in ("step-00000008", "step-00000012"):
        shutil.rmtree(b / "checkpoints" / c)
    scaler_4 = torch.load(b / "checkpoints" / "step-00000004" / "scaler.pt", weights_only=True)
    again = run_toy(b, cfg, nan_ids={"s005"})
    assert again.resumed_from_step == 4 and again.steps == 12 and again.amp == "fp16"
    assert again.last_loss == res.last_loss and again.first_loss == res.first_loss
    assert_same_state(a, b)
    # the step-4 checkpoint already holds a lowered scale (s005 falls in step 4 with this seed): a
    # scaler not restored on resume would restart at 2 ** 16 and end at 2 ** 15, not 2 ** 14
    assert scaler_4["scale"] == 2.0 ** 15
    assert torch.load(b / "checkpoints" / "step-00000012" / "scaler.pt", weights_only=True) == scaler_end
