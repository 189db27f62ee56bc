"""Real families and the full-size recipe through the whole Week-1 flow (smoke, train, reload, inference).

* Llama-3- and Qwen2-style local LMs with a local SigLIP tower, through the same config keys a hub
  id takes: they train (loss falls), answer through their chat templates, stop at their
  end-of-turn token with no template tokens in the answer, and reload bit-exact.
* ``configs/full.yaml`` with only its sizes shrunk: bf16 frozen towers, stage ``align``,
  activation checkpointing -- the path that used to die at the smoke stage.
"""

from __future__ import annotations

import json

import pytest

from families import llama3_dir, qwen2_dir, siglip_dir  # noqa: F401  (fixtures)
from schemas.config import FULL_CONFIG

pytestmark = pytest.mark.slow

DATA = ["data.synthetic.num_captions=64", "data.synthetic.num_vqa=32", "data.synthetic.image_size=56",
        "data.val_fraction=0.2",  # validation holds VQA rows too (the split is by image: few rows, noisy)
        "inference.max_samples=4", "inference.max_new_tokens=6", "inference.batch_size=4",
        "train.wandb.mode=disabled"]
VISION = ["model.vision.img_size=56", "model.vision.patch_size=8", "model.vision.embed_dim=64",
          "model.vision.depth=2", "model.vision.num_heads=2", "model.vision.mlp_dim=128"]


@pytest.mark.parametrize("family", ["llama3", "qwen2"])
def test_family_through_the_flow(family, request, siglip_dir, prefect_server, tmp_path):
    from flows.week1 import week1
    from openmind_core.model import MultimodalReasoningModel

    lm = request.getfixturevalue(f"{family}_dir")
    overrides = DATA + VISION + [
        f"model.lm.name_or_path={lm}", f"model.vision.pretrained={siglip_dir}", "model.vision.feature_layer=-1",
        "model.stage=finetune", "model.max_length=96", "train.epochs=2", "train.micro_batch_size=8",
        "train.lr=3e-3", "train.save_steps=6", "train.eval_steps=6",
    ]
    state = week1(overrides=overrides, run_name=family, lake=str(tmp_path), return_state=True)
    assert state.is_completed(), state.message
    report = state.result()
    run_dir = tmp_path / "runs" / family
    assert report.smoke.passed
    t = report.training
    assert t.last_loss < 0.7 * t.first_loss and t.nan_or_inf_losses == 0 and t.reload_equal
    # the run's tokenizer is the LM's own, with the image placeholder added
    model = MultimodalReasoningModel.from_pretrained(run_dir / "final")
    assert model.tokenizer.chat_template and model.language_model.config.model_type == family.rstrip("3")
    answers = [p.prediction for p in report.inference.predictions]
    assert answers and not any("<|" in a or "<image>" in a for a in answers), answers
    assert report.inference.vqa_count > 0


def test_full_recipe_shrunk_runs_end_to_end_in_bf16(prefect_server, tmp_path):
    from flows.week1 import week1

    shrunk = DATA + VISION + [
        "model.lm.hidden_size=64", "model.lm.num_layers=2", "model.lm.num_heads=4", "model.lm.num_kv_heads=2",
        "model.lm.intermediate_size=128", "model.lm.vocab_size=null", "model.tokenizer.vocab_size=400",
        "train.epochs=2", "train.micro_batch_size=4", "train.grad_accum=2", "train.save_steps=4",
        "train.eval_steps=4", "train.num_workers=0",
    ]
    state = week1(config_path=str(FULL_CONFIG), overrides=shrunk, run_name="full-shrunk", lake=str(tmp_path),
                  return_state=True)
    assert state.is_completed(), state.message
    report = state.result()
    assert report.smoke.passed, [c.detail for c in report.smoke.checks]
    resolved = json.loads((tmp_path / "runs" / "full-shrunk" / "final" / "config.json").read_text())
    assert resolved["dtype"] == "bfloat16" and resolved["stage"] == "align"
    t = report.training
    assert t.steps > 0 and t.nan_or_inf_losses == 0 and t.reload_equal
    assert report.inference.predictions
