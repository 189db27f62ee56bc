"""Benchmarks: FLOP counting, the GPU script's table and CPU path, and the ``python -m bench`` harness.

Speed is never asserted: these tests check that each benchmark runs and produces well-formed rows,
that the FLOP counter agrees with ``torch.utils.flop_counter.FlopCounterMode`` (an independent
count) on a tiny model in every stage, and that ``bench/gpu.py`` formats its table and leaves a
machine without CUDA with a clear message.
"""

from __future__ import annotations

import json
import os
import subprocess
import uuid
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench import __main__ as harness  # noqa: E402
from bench import gpu  # noqa: E402
from bench.flops import FlopRecorder, reference_flops, train_step_flops, use_eager_attention  # noqa: E402

ROW_KEYS = {"name", "ours_s", "baseline_s", "ratio", "goal", "unit", "notes"}


# --------------------------------------------------------------------------- tiny model


@pytest.fixture(scope="module")
def tokenizer():
    from openmind_core.model import train_bpe_tokenizer

    return train_bpe_tokenizer(["a red circle on a blue square", "what colour is the circle? red"] * 4, 300)


def tiny_model(tokenizer, stage: str, checkpointing: bool = False):
    from openmind_core.model import build_model
    from schemas.loading import load_config

    cfg = load_config(None, [f"model.stage={stage}", f"model.gradient_checkpointing={str(checkpointing).lower()}"])
    torch.manual_seed(0)
    model = build_model(cfg.model, tokenizer)
    model.train()
    return model, cfg


def tiny_batch(model, cfg, batch: int = 2):
    return gpu.synthetic_batch(model, batch, 10, "cpu", torch.Generator().manual_seed(0))


# --------------------------------------------------------------------------- FLOP counting


@pytest.mark.parametrize("stage", ["align", "finetune", "full"])
def test_flops_match_flop_counter_mode(tokenizer, stage):
    model, cfg = tiny_model(tokenizer, stage)
    use_eager_attention(model)  # FlopCounterMode's SDPA backward adds a score recompute; eager is plain bmm
    batch = tiny_batch(model, cfg)
    ours = train_step_flops(model, batch)
    model.zero_grad(set_to_none=True)
    ref = reference_flops(model, batch)
    assert ours.total > 0
    assert ours.total == pytest.approx(ref, rel=1e-9), (stage, ours.as_dict(), ref)


def test_backward_follows_gradients(tokenizer):
    """Frozen tower no gradient reaches: 0x; frozen LM below the projector: ~1x; trainable: 2x."""
    counts = {}
    for stage in ("align", "finetune", "full"):
        model, cfg = tiny_model(tokenizer, stage)
        counts[stage] = train_step_flops(model, tiny_batch(model, cfg)).by_module
    for stage in ("align", "finetune"):
        assert counts[stage]["vision_encoder"]["backward"] == 0
        assert counts[stage]["vision_encoder"]["forward"] > 0
    lm_align = counts["align"]["language_model"]
    assert 1.0 <= lm_align["backward"] / lm_align["forward"] < 1.2  # input grads (+ attention's 2x)
    lm_ft = counts["finetune"]["language_model"]
    assert lm_ft["backward"] == pytest.approx(2 * lm_ft["forward"])
    assert lm_ft["forward"] == pytest.approx(lm_align["forward"])
    # projector: linear_1's input (the frozen tower's output) needs no gradient, linear_2's does
    p = counts["align"]["projector"]
    assert p["forward"] < p["backward"] < 2 * p["forward"]
    assert counts["full"]["projector"]["backward"] == pytest.approx(2 * counts["full"]["projector"]["forward"])


def test_checkpointing_recompute_not_counted(tokenizer):
    plain, cfg = tiny_model(tokenizer, "full", checkpointing=False)
    ckpt, _ = tiny_model(tokenizer, "full", checkpointing=True)
    batch = tiny_batch(plain, cfg)
    assert train_step_flops(ckpt, batch).total == pytest.approx(train_step_flops(plain, batch).total)


def test_recorder_counts_only_while_active(tokenizer):
    model, cfg = tiny_model(tokenizer, "align")
    rec = FlopRecorder(model)
    batch = tiny_batch(model, cfg)
    model(**batch)
    assert rec.count.total == 0
    with rec:
        model(**batch)
    once = rec.count.total
    rec.remove()
    model(**batch)
    assert rec.count.total == once > 0


# --------------------------------------------------------------------------- bench/gpu.py


def test_peak_table():
    assert gpu.peak_tflops("NVIDIA H200")[0] == pytest.approx(989.4)
    assert gpu.peak_tflops("NVIDIA H100 80GB HBM3")[0] == pytest.approx(989.4)
    assert gpu.peak_tflops("NVIDIA H100 PCIe")[0] == pytest.approx(756.0)
    assert gpu.peak_tflops("NVIDIA A100-SXM4-80GB")[0] == pytest.approx(312.0)
    assert gpu.peak_tflops("NVIDIA L40S")[0] == pytest.approx(362.0)
    assert gpu.peak_tflops("Some Future GPU") == (None, "unknown card: pass --peak-tflops for MFU")
    assert gpu.peak_tflops("NVIDIA H200", override=500.0) == (500.0, "--peak-tflops")


def test_plan_orders_the_criterion_first():
    full = gpu.plan(gpu.parse_args([]), micro_batch=4, flash=True, checkpointing=True)
    assert full[0] == ("align", 4, "sdpa", True)
    assert ("align", 16, "flash_attention_2", True) in full and ("align", 16, "flash_attention_2", False) in full
    assert full[-1] == ("finetune", 4, "sdpa", True) and ("finetune", 1, "sdpa", True) in full
    quick = gpu.plan(gpu.parse_args(["--quick"]), micro_batch=4, flash=False, checkpointing=True)
    assert quick == [("align", 4, "sdpa", True), ("finetune", 1, "sdpa", True)]
    custom = gpu.plan(gpu.parse_args(["--align-batches", "2", "--finetune-batches", "", "--attention", "sdpa"]),
                      micro_batch=4, flash=True, checkpointing=False)
    assert custom == [("align", 2, "sdpa", False)]


def test_anchor_is_plausible():
    a = gpu.llava15_stage1_anchor()
    assert 0.2 < a["mfu"] < 0.4  # ~30% MFU: 5.5 samples/s x ~1.7e13 FLOPs / 312 TFLOP/s


def _rows():
    ok = {"stage": "align", "attention": "sdpa", "batch": 4, "image_tokens": 196, "seq_len": 709, "status": "ok",
          "step_s": 0.25, "samples_s": 16.0, "tokens_s": 11344.0, "achieved_tflops": 450.0, "mfu": 0.455,
          "peak_gib": 30.0, "estimate_gib": 29.0, "memory_ratio": 30 / 29, "fits_budget": True, "budget_gib": 40.0}
    ft = {**ok, "stage": "finetune", "batch": 1, "mfu": 0.40, "peak_gib": 75.0, "estimate_gib": 70.0,
          "memory_ratio": 75 / 70, "fits_budget": False}
    oom = {"stage": "finetune", "attention": "sdpa", "batch": 4, "status": "OOM", "estimate_gib": 95.0,
           "budget_gib": 40.0, "notes": "CUDA out of memory"}
    skipped = {"stage": "align", "attention": "flash_attention_2", "batch": 16, "status": "skipped",
               "notes": "--max-seconds 420 reached"}
    return [ok, ft, oom, skipped]


def test_table_and_summary(tmp_path):
    rows = _rows()
    table = gpu.format_table(rows).splitlines()
    assert len(table) == 2 + len(rows)
    assert all(line.count("|") == len(gpu.TABLE_COLUMNS) + 1 for line in table)
    assert "45.5%" in table[2] and "1.034" in table[2] and "| yes |" in table[2]
    assert "| NO |" in table[3] and "OOM" in table[4] and "skipped" in table[5]
    meta = {"device": "NVIDIA H200", "config_micro_batch": 4, "budget_gib": 40.0}
    lines = gpu.summary(rows, meta)
    assert any(line.startswith("guide criterion") and "PASS" in line and "30.00 GiB" in line for line in lines)
    assert any(line.startswith("best align MFU: 45.5%") and line.endswith("PASS") for line in lines)
    assert any("; all within 10%" in line for line in lines)  # 30/29 and 75/70 are
    off = gpu.summary(rows + [{**rows[0], "batch": 8, "peak_gib": 36.0, "memory_ratio": 1.2}], meta)
    assert any("NOT all within 10%" in line and "align b=8" in line for line in off)
    assert any("LLaVA-1.5" in line for line in lines)
    for r in rows:
        assert gpu.format_row_line(r).startswith(f"[{r['stage']} {r['attention']} b={r['batch']}]")
    out = tmp_path / "gpu.json"
    gpu.write_results(rows, {**meta, "command": "python bench/gpu.py"}, out)
    data = json.loads(out.read_text())
    assert data["rows"] == rows and data["summary"] == lines
    assert "| stage |" in out.with_suffix(".md").read_text()


def test_gpu_script_on_cpu_runs_the_measurement_path(tmp_path):
    """``--device cpu`` with the tiny config goes through build, estimate, measure, table, JSON."""
    out = tmp_path / "gpu.json"
    rc = gpu.main(["--device", "cpu", "--config", str(REPO / "configs" / "default.yaml"), "--quick",
                   "--steps", "1", "--warmup", "1", "--peak-tflops", "1", "--out", str(out)])
    assert rc == 0
    data = json.loads(out.read_text())
    assert data["meta"]["finished"] is True
    assert [(r["stage"], r["status"]) for r in data["rows"]] == [("align", "ok"), ("finetune", "ok")]
    for r in data["rows"]:
        assert r["flops_per_step"] > 0 and r["samples_s"] > 0 and 0 < r["mfu"]
        assert r["estimate_gib"] > 0 and r.get("peak_gib") is None  # no CUDA allocator on CPU


def test_gpu_script_interrupted_keeps_rows(tmp_path, monkeypatch):
    """Stopped mid-run (Ctrl-C / SIGTERM): the rows so far are printed and written, exit 130."""
    real = gpu.measure
    calls = []

    def measure(*args, **kwargs):
        calls.append(args[2])
        if len(calls) > 1:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(gpu, "measure", measure)
    out = tmp_path / "gpu.json"
    rc = gpu.main(["--device", "cpu", "--config", str(REPO / "configs" / "default.yaml"), "--quick",
                   "--steps", "1", "--warmup", "1", "--out", str(out)])
    assert rc == 130
    data = json.loads(out.read_text())
    assert data["meta"]["interrupted"] is True and data["meta"]["finished"] is False
    assert [r["stage"] for r in data["rows"]] == ["align"]


def test_gpu_script_without_cuda_exits_with_a_message():
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    p = subprocess.run([sys.executable, str(REPO / "bench" / "gpu.py")], capture_output=True, text=True,
                       env=env, timeout=120, cwd=REPO)
    assert p.returncode == 0, p.stderr
    assert "no CUDA device" in p.stderr and "Traceback" not in p.stderr


# --------------------------------------------------------------------------- the harness


def _load(name: str):
    return harness.load(REPO / "bench" / f"bench_{name}.py")


def _check_rows(rows: list[dict]) -> None:
    assert rows
    for r in rows:
        assert ROW_KEYS <= set(r), r
        assert isinstance(r["name"], str) and r["name"]
        assert r["ours_s"] is not None and r["ours_s"] >= 0


@pytest.mark.parametrize("name", ["convert", "loader", "model", "trainer", "lora", "checkpoint", "packing"])
def test_cpu_benchmark_quick_produces_rows(name):
    rows = _load(name).run(quick=True)
    _check_rows(rows)
    if name == "checkpoint":
        [row] = rows
        assert row["baseline_s"] > 0 and row["ratio"] == pytest.approx(row["ours_s"] / row["baseline_s"])
    if name == "packing":  # same tokens both ways; the pad fraction rows are fractions of the packed slots
        pads = [r for r in rows if r["name"].startswith("pad fraction")]
        assert len(pads) == 2 and all(r["ratio"] == pytest.approx(r["ours_s"] / r["baseline_s"], abs=1e-4) for r in pads)
    if name == "loader":
        wait = [r for r in rows if "wait fraction" in r["name"]]
        assert [w["name"] for w in wait] == ["loader wait fraction, main process (tiny train step)",
                                             "loader wait fraction, 2 workers (tiny train step)"]
        for w in wait:
            assert 0 <= w["ratio"] <= 1
            assert w["ratio"] == pytest.approx(w["ours_s"] / w["baseline_s"])


def test_convert_critical_path_runs_with_parsing_and_encoding_taken_away():
    """The diagnostic of ``bench_convert.py --breakdown`` still swaps the converter's real parts."""
    rows = dict(_load("convert").critical_path(rows=3000, repeat=1))
    assert list(rows) == ["raw: read_json + write_table", "ours: whole convert", "ours: blocks already parsed",
                          "ours: blocks already parsed, nothing encoded"]
    assert all(ms > 0 for ms in rows.values())


def test_interrupt_benchmark_rows():
    """bench_interrupt's rows from a measurement (its Terminal and the stop itself are what
    tests/test_interrupt.py drives, checking the behaviour; the seconds are this row's alone)."""
    bench = _load("interrupt")
    rows = bench.rows({"ctrl_c_s": 1.5, "sigterm_s": 1.2, "step_s": 0.05})
    _check_rows(rows)
    assert [r["name"] for r in rows] == ["Ctrl-C on a terminal during training: signal to exit",
                                         "SIGTERM to the CLI during training (a scheduler's stop): signal to exit"]
    assert [r["ratio"] for r in rows] == [pytest.approx(30.0), pytest.approx(24.0)]
    assert all(r["baseline_s"] == 0.05 and r["goal"] == "ours <= 5 s" for r in rows)
    env = bench.user_env({"PATH": "/bin", "WANDB_MODE": "disabled", "PREFECT_API_URL": "x", "OPENMIND_CI": "1",
                          "HF_HUB_OFFLINE": "1", "HOME": "/root"}, PREFECT_HOME="/tmp/p")
    assert env == {"PATH": "/bin", "HOME": "/root", "PREFECT_HOME": "/tmp/p"}


def test_flow_benchmark_builds_rows_from_task_runs(monkeypatch):
    """bench_flow without running the flow: a fake flow state and fake task runs from the API."""
    import prefect.client.orchestration as orchestration

    import flows.week1

    t0 = datetime(2025, 1, 1, tzinfo=timezone.utc)
    runs = [SimpleNamespace(task_key=f"tasks.{k}-abc", start_time=t0 + timedelta(seconds=i),
                            end_time=t0 + timedelta(seconds=i + 0.5), expected_start_time=None, state_name="Completed")
            for i, k in enumerate(["download_task", "convert_task", "train_task"])]

    class Client:
        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def read_task_runs(self, flow_run_filter=None):
            return list(reversed(runs))

    state = SimpleNamespace(is_completed=lambda: True, message="", state_details=SimpleNamespace(flow_run_id=uuid.uuid4()))
    monkeypatch.setattr(flows.week1, "week1", lambda **kw: state)
    monkeypatch.setattr(orchestration, "get_client", lambda sync_client=True: Client())
    rows = _load("flow").run(quick=True)
    _check_rows(rows)
    assert [r["name"] for r in rows] == ["task download_task", "task convert_task", "task train_task",
                                         "flow wall vs sum of task bodies"]
    assert rows[-1]["baseline_s"] == pytest.approx(1.5)


def test_harness_table_exit_codes_and_ratio_direction(tmp_path, monkeypatch):
    benches = tmp_path / "bench"
    benches.mkdir()
    (benches / "bench_ok.py").write_text(
        "def run(quick=False):\n"
        "    return [{'name': 'speed', 'ours_s': 2.0, 'baseline_s': 1.0, 'ratio': 2.0, 'goal': '<= 1', 'unit': 's', 'notes': ''},\n"
        "            {'name': 'throughput', 'ours_s': 0.5, 'baseline_s': 1.0, 'ratio': 2.0, 'goal': '>= 1', 'unit': 's/item', 'notes': 'x/s'},\n"
        "            {'name': 'no ratio', 'ours_s': 3.0, 'baseline_s': 1.5, 'ratio': None, 'goal': '', 'unit': 's', 'notes': ''}]\n")
    monkeypatch.setattr(harness, "HERE", benches)
    out = tmp_path / "results"
    assert harness.main(["--quick", "--out", str(out)]) == 0
    data = json.loads((out / "latest.json").read_text())
    by = {r["name"]: r for r in data["rows"]}
    assert by["speed"]["ratio"] == 2.0
    assert by["throughput"]["ratio"] == 2.0  # the row's own direction (throughput), not ours_s / baseline_s
    assert by["no ratio"]["ratio"] == 2.0  # ratio of the medians
    assert "| speed |" in (out / "latest.md").read_text()

    (benches / "bench_bad.py").write_text("def run(quick=False):\n    raise RuntimeError('boom')\n")
    assert harness.main(["--quick", "--out", str(out)]) == 1
    rows = json.loads((out / "latest.json").read_text())["rows"]
    assert any(r["name"] == "bad FAILED" for r in rows) and any(r["name"] == "speed" for r in rows)
    with pytest.raises(SystemExit, match="unknown benchmark"):
        harness.main(["nope", "--out", str(out)])


def test_build_benchmark_quick_measures_build_and_load():
    """bench_build --quick: tiny pretrained parts, both scenarios measured against the raw safetensors read.

    Only well-formedness: the 1.3x memory goal is the full benchmark's to check, not a unit test's.
    """
    import math

    bench = _load("build")
    m = bench.measure(quick=True)
    rows = bench.rows(m)
    _check_rows(rows)
    assert [r["name"] for r in rows] == ["build from pretrained parts: peak RSS", "build from pretrained parts: time",
                                         "load final/: peak RSS", "load final/: time"]
    for r in rows:
        for k in ("ours_s", "baseline_s", "ratio"):
            assert isinstance(r[k], float) and math.isfinite(r[k]) and r[k] > 0, (r["name"], k, r[k])
    for key in ("build", "final"):
        assert m[key]["params"] > 1_000_000 and m[key]["weights"] == m[f"{key}_raw"]["weights"] > 0
        assert m[f"{key}_raw"]["extra"] > 0  # the raw read brought the weights in
    assert rows[0]["baseline_s"] == pytest.approx(m["build"]["weights"] / 1e6)
    assert rows[0]["ratio"] == pytest.approx(rows[0]["ours_s"] / rows[0]["baseline_s"])


@pytest.mark.slow
def test_gpu_script_measures_the_instruct_mix_padded_and_packed_on_cpu(tmp_path):
    """``--packing``: two more rows train one micro-batch of the instruct mix padded, then packed."""
    out = tmp_path / "gpu.json"
    rc = gpu.main(["--device", "cpu", "--config", str(REPO / "configs" / "default.yaml"), "--quick", "--packing",
                   "--mix-batch", "8", "--mix-scale", "8", "--finetune-batches", "", "--steps", "1", "--warmup", "1", "--peak-tflops", "1",
                   "--set", "model.lm.max_position_embeddings=512", "--out", str(out)])
    assert rc == 0
    rows = json.loads(out.read_text())["rows"]
    assert [(r["attention"], r["status"]) for r in rows] == [("sdpa", "ok"), ("sdpa mix-padded", "ok"),
                                                              ("sdpa mix-packed", "ok")]
    padded, packed = rows[1], rows[2]
    assert padded["seq_len"] == packed["seq_len"]  # the same samples: the same real tokens per sample
    pads = [float(r["notes"].split()[-1].rstrip("%")) for r in (padded, packed)]
    assert pads[1] < pads[0]
    assert packed["flops_per_step"] < padded["flops_per_step"]  # padding is computed only padded
