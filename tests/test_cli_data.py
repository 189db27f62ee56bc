"""``openmind data prepare`` and ``openmind data inspect`` as a user runs them."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from conftest import REPO
from families import llama3_dir, siglip_dir  # noqa: F401  (fixtures)

pytestmark = pytest.mark.slow


def openmind(*args, env=None):
    return subprocess.run([sys.executable, "-m", "flows.cli", *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=300)


def test_prepare_reports_kept_and_quarantined_rows(prefect_server, tmp_path):
    from PIL import Image

    Image.new("RGB", (32, 32), "red").save(tmp_path / "red.png")
    rows = [json.dumps({"image": "red.png", "text": f"a red square number {i}"}) for i in range(6)]
    rows += ["{not json", json.dumps({"image": "missing.png", "text": "gone"}), json.dumps({"image": "red.png"})]
    (tmp_path / "caps.jsonl").write_text("\n".join(rows) + "\n")
    env = dict(os.environ, PREFECT_API_URL=prefect_server)
    proc = openmind("data", "prepare", "--set", "data.source=jsonl", "--set", f"data.jsonl.captions={tmp_path / 'caps.jsonl'}",
                    "--lake", str(tmp_path / "lake"), env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    assert "9 rows in, 6 kept, 3 quarantined" in out
    for reason in ("malformed_json", "image_missing", "missing_field"):
        assert reason in out, out
    assert "quarantine" in out and (tmp_path / "lake" / "quarantine").is_dir()
    assert "Flow run 'prepare-jsonl-" in proc.stderr  # named after what it does, not 'worthy-barnacle'
    assert "reusing" not in proc.stderr  # a brand-new lake reuses nothing


def test_prepare_fails_clearly_when_every_row_is_bad(prefect_server, tmp_path):
    (tmp_path / "bad.jsonl").write_text("{nope\n[1, 2]\n")
    env = dict(os.environ, PREFECT_API_URL=prefect_server)
    proc = openmind("data", "prepare", "--set", "data.source=jsonl", "--set", f"data.jsonl.captions={tmp_path / 'bad.jsonl'}",
                    "--lake", str(tmp_path / "lake"), env=env)
    assert proc.returncode == 1
    last = [ln for ln in proc.stderr.splitlines() if ln.startswith("openmind: error:")]
    assert last and "DataError" in last[-1], proc.stderr[-2000:]
    assert not list((tmp_path / "lake").glob("curated/*/*.parquet"))


def test_inspect_shows_samples_and_a_batch(tmp_path):
    proc = openmind("data", "inspect", "--set", "data.synthetic.num_captions=12", "--set", "data.synthetic.num_vqa=6",
                    "--lake", str(tmp_path / "lake"), "-n", "2", env=dict(os.environ))
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = proc.stdout
    assert "16 image tokens" in out and "collated batch" in out and "pixel_values" in out
    assert "prompt" in out and "target" in out


def test_inspect_shows_the_chat_templated_prompt(tmp_path, llama3_dir, siglip_dir):
    """A local Llama-3-style LM: the prompt shown is the one the model trains on, template and all."""
    proc = openmind("data", "inspect", "--set", "data.synthetic.num_captions=12", "--set", "data.synthetic.num_vqa=6",
                    "--set", f"model.lm.name_or_path={llama3_dir}", "--set", f"model.vision.pretrained={siglip_dir}",
                    "--set", "model.max_length=160", "--lake", str(tmp_path / "lake"), "-n", "2", env=dict(os.environ))
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = proc.stdout
    assert "prompts: the tokenizer's chat template" in out
    assert "<|begin_of_text|><|start_header_id|>user<|end_header_id|>" in out and "<image x16>" in out
    assert "<|start_header_id|>assistant<|end_header_id|>" in out and "<|eot_id|>'" in out  # the target ends its turn
