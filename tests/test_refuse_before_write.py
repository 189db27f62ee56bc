"""A resume that cannot be right is refused before anything runs or is written.

The run directory is what a run leaves (config.yaml, inputs.json, a checkpoint's fingerprint.json);
the checks read only those, so these tests build one by hand instead of training.  Through the CLI:
exit 2, one line naming what changed, the run directory byte for byte as it was.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO


def _fake_run(run_dir: Path, overrides: list[str]) -> None:
    """A run directory as a run with ``overrides`` leaves it after its step-4 checkpoint."""
    from openmind_core.app.run_dir import record_inputs
    from schemas import load_config

    cfg = load_config(None, overrides)
    (run_dir / "checkpoints" / "step-00000004").mkdir(parents=True)
    (run_dir / "config.yaml").write_text(cfg.to_yaml())
    record_inputs(cfg, run_dir)
    fp = {"model": cfg.fingerprint("model"), "data": "0123456789abcdef", "seed": str(cfg.run.seed),
          "batch": f"{cfg.train.micro_batch_size}x{cfg.train.grad_accum}", "world_size": "1"}
    (run_dir / "checkpoints" / "step-00000004" / "fingerprint.json").write_text(json.dumps(fp))


def _snapshot(d: Path) -> dict[str, bytes]:
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


def _refused(overrides: list[str], run_dir: Path):
    from openmind_core.app.run_dir import check_resumable
    from schemas import ConfigError, load_config

    with pytest.raises(ConfigError) as e:
        check_resumable(load_config(None, overrides), run_dir)
    return str(e.value)


@pytest.fixture
def jsonl_inputs(tmp_path):
    from PIL import Image

    Image.new("RGB", (16, 16), "red").save(tmp_path / "red.png")
    caps = tmp_path / "caps.jsonl"
    caps.write_text("".join(json.dumps({"image": "red.png", "text": f"red {i}"}) + "\n" for i in range(4)))
    return ["data.source=jsonl", f"data.jsonl.captions={caps}"], caps


def test_what_may_and_may_not_change_on_resume(tmp_path):
    from openmind_core.app.run_dir import check_resumable
    from schemas import load_config

    base = ["data.synthetic.num_captions=40"]
    run_dir = tmp_path / "runs" / "r"
    _fake_run(run_dir, base)
    before = _snapshot(run_dir)
    # training settings may change
    check_resumable(load_config(None, base + ["train.epochs=5", "train.lr=1e-4", "data.num_workers=1"]), run_dir)
    # the model, the data, the seed, the batch may not
    assert "different model (model.lm.num_layers: 2 -> 3)" in _refused(base + ["model.lm.num_layers=3"], run_dir)
    msg = _refused(base + ["data.synthetic.language=zh"], run_dir)
    assert "trained on other data (data.synthetic.language: 'en' -> 'zh')" in msg and "\n" not in msg
    assert "data.val_fraction: 0.1 -> 0.2" in _refused(base + ["data.val_fraction=0.2"], run_dir)
    assert "run.seed: 0 -> 3" in _refused(base + ["run.seed=3"], run_dir)
    assert "16x1 -> 8x1" in _refused(base + ["train.micro_batch_size=8"], run_dir)
    assert "16x1 -> 16x2" in _refused(base + ["train.grad_accum=2"], run_dir)
    # a changed number of processes may bring its own batch split (the trainer reshards)
    check_resumable(load_config(None, base + ["train.nproc=2", "train.micro_batch_size=8"]), run_dir)
    assert _snapshot(run_dir) == before  # a check reads only
    # no checkpoint: nothing to be inconsistent with
    (run_dir / "checkpoints" / "step-00000004" / "fingerprint.json").unlink()
    (run_dir / "checkpoints" / "step-00000004").rmdir()
    check_resumable(load_config(None, ["data.synthetic.language=zh"]), run_dir)


def _as_an_earlier_openmind_wrote_it(run_dir: Path, new_key: str = "gguf_file") -> str:
    """Rewrite the run as an OpenMind without the setting ``model.lm.<new_key>`` wrote it: its config.yaml
    lacks the key, so the model fingerprint it pinned hashes a smaller dump.  Returns that fingerprint."""
    import hashlib

    import yaml

    raw = yaml.safe_load((run_dir / "config.yaml").read_text())
    del raw["model"]["lm"][new_key]
    (run_dir / "config.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    old = hashlib.sha256(json.dumps(raw["model"], sort_keys=True).encode()).hexdigest()[:16]
    fp_file = run_dir / "checkpoints" / "step-00000004" / "fingerprint.json"
    fp_file.write_text(json.dumps({**json.loads(fp_file.read_text()), "model": old}))
    return old


def test_a_run_an_earlier_openmind_wrote_resumes_with_its_own_fingerprint(tmp_path):
    """Settings added since a run started read back at their defaults: the same model, so it resumes,
    pinning the fingerprint its checkpoints hold; a real change is still refused, named key by key."""
    from openmind_core.app.run_dir import check_resumable, model_fingerprint
    from schemas import load_config

    base = ["data.synthetic.num_captions=40"]
    run_dir = tmp_path / "runs" / "r"
    _fake_run(run_dir, base)
    old = _as_an_earlier_openmind_wrote_it(run_dir)
    cfg = load_config(None, base)
    assert old != cfg.fingerprint("model")
    check_resumable(cfg, run_dir)
    assert model_fingerprint(cfg, run_dir) == old
    assert "different model (model.lm.num_layers: 2 -> 3)" in _refused(base + ["model.lm.num_layers=3"], run_dir)
    assert model_fingerprint(load_config(None, base + ["model.lm.num_layers=3"]), run_dir) != old


def test_a_run_on_an_earlier_converters_lake_is_refused_naming_the_converter(tmp_path):
    """The same inputs make another lake version under a newer converter: the checkpoints' sample positions
    do not describe it, and the refusal says so in one line (before the model is built)."""
    from openmind_core.app.run_dir import ResumeRefused, check_lake_version
    from schemas import CuratedDataset

    run_dir = tmp_path / "runs" / "r"
    _fake_run(run_dir, [])
    curated_root = tmp_path / "curated"
    (curated_root / "0123456789abcdef").mkdir(parents=True)
    (curated_root / "0123456789abcdef" / "_manifest.json").write_text(json.dumps({"version": "0123456789abcdef"}))
    new = CuratedDataset.model_construct(version="fedcba9876543210", root=str(curated_root / "fedcba9876543210"))
    with pytest.raises(ResumeRefused) as e:
        check_lake_version(run_dir, new, 5)
    msg = str(e.value)
    assert "lake version 0123456789abcdef, written by an earlier OpenMind (converter < 5)" in msg
    assert "lake version fedcba9876543210 (converter 5)" in msg and "\n" not in msg
    # the same converter: another version is another change of the data (the trainer names it)
    (curated_root / "0123456789abcdef" / "_manifest.json").write_text(json.dumps({"converter_version": 5}))
    check_lake_version(run_dir, new, 5)
    same = CuratedDataset.model_construct(version="0123456789abcdef", root=str(curated_root / "0123456789abcdef"))
    check_lake_version(run_dir, same, 6)


def test_changed_input_file_is_refused(tmp_path, jsonl_inputs):
    overrides, caps = jsonl_inputs
    run_dir = tmp_path / "runs" / "r"
    _fake_run(run_dir, overrides)
    from openmind_core.app.run_dir import check_resumable
    from schemas import load_config

    check_resumable(load_config(None, overrides), run_dir)  # unchanged: accepted
    caps.write_text(caps.read_text() + json.dumps({"image": "red.png", "text": "one more"}) + "\n")
    assert "data.jsonl.captions changed since the run started" in _refused(overrides, run_dir)


def test_the_flow_refuses_before_writing(tmp_path):
    """``prepare_run_dir`` (the flow's first step, for deployments too) leaves the run directory as it was."""
    from openmind_core.app.run_dir import prepare_run_dir
    from schemas import ConfigError, load_config

    run_dir = tmp_path / "runs" / "r"
    _fake_run(run_dir, [])
    before = _snapshot(run_dir)
    with pytest.raises(ConfigError, match="other data"):
        prepare_run_dir(load_config(None, ["data.synthetic.language=zh"]), tmp_path, "r")
    assert _snapshot(run_dir) == before
    prepare_run_dir(load_config(None, ["train.epochs=3"]), tmp_path, "r")  # accepted: the new settings recorded
    assert "epochs: 3" in (run_dir / "config.yaml").read_text()
    assert (run_dir / "inputs.json").read_bytes() == before["inputs.json"]


@pytest.mark.parametrize("change, expected", [
    (["--set", "data.synthetic.language=zh"], "data.synthetic.language: 'en' -> 'zh'"),
    (["--set", "model.lm.num_layers=3"], "model.lm.num_layers: 2 -> 3"),
])
def test_cli_refuses_a_resume_on_other_data_before_writing(tmp_path, change, expected):
    lake = tmp_path / "lake"
    run_dir = lake / "runs" / "r"
    _fake_run(run_dir, [])
    before = _snapshot(lake)
    proc = subprocess.run([sys.executable, "-m", "flows.cli", "run", *change, "--run-name", "r", "--lake", str(lake)],
                          cwd=REPO, capture_output=True, text=True, timeout=120,
                          env={k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"})
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode == 2, proc.stderr
    assert len(lines) == 1 and lines[0].startswith("openmind: error: run directory") and expected in lines[0], lines
    assert _snapshot(lake) == before  # nothing written: no config.yaml, no logs, no download
