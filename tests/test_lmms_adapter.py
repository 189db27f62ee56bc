"""The lmms-eval adapter (extra ``[eval]``): registered as ``openmind``; generate_until and loglikelihood on
local requests (no hub, no lmms-eval task download).

The model is the tiny default taught one answer ("red" to "What color is the shape?" about a red
image), so each method's result is known: generate_until answers "red", loglikelihood says "red"
is the greedy continuation and "blue" is not, and its log-probability is the model's own loss.
scripts/setup.sh installs lmms-eval (its package and the modules its API imports, pinned); without
it these tests skip, naming the claim, and fail under .ci/run.
"""

from __future__ import annotations

import io
import math

import pytest
import torch

from conftest import skip_unproven
from schemas import load_config

try:
    import lmms_eval  # noqa: F401
    MISSING = None
except ImportError as e:  # scripts/setup.sh installs it; .ci/run fails on the skip
    MISSING = e

TINY = ["data.synthetic.num_captions=8", "data.synthetic.num_vqa=8"]
QUESTION, ANSWER, OTHER = "What color is the shape?", "red", "blue"


@pytest.fixture(scope="module", autouse=True)
def _lmms_eval_installed():  # module scope: checked before the module's model is built
    if MISSING is not None:
        skip_unproven("README, lmms-eval: the adapter implements generate_until and loglikelihood; tests check both",
                      f"lmms-eval does not import here: {MISSING}; scripts/setup.sh installs it")


def _red_png() -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (40, 40), (200, 30, 30)).save(buf, format="PNG")
    return buf.getvalue()


def _encoded(model, answer: str):
    from openmind_core import prompting

    return prompting.encode(model.tokenizer, QUESTION, answer, model.num_image_tokens, model.image_token_id,
                            model.model_config.max_length)


@pytest.fixture(scope="module")
def final_dir(tmp_path_factory):
    """The tiny default model, trained until its greedy answer to QUESTION about a red image is ANSWER."""
    from PIL import Image

    from openmind_core.app.tokenizer import load_prepared, prepare_tokenizer
    from openmind_core.app.train import build_model
    from openmind_core.data import convert, download

    lake = tmp_path_factory.mktemp("lake")
    cfg = load_config(overrides=TINY)
    cur = convert(download(cfg.data, lake), cfg.data, lake)
    tok = load_prepared(prepare_tokenizer(cfg, cur, lake / "run"))
    torch.manual_seed(0)
    model = build_model(cfg, tok)
    enc = _encoded(model, ANSWER)
    ids = torch.tensor([enc.input_ids])
    batch = dict(input_ids=ids, labels=torch.tensor([enc.labels]), attention_mask=torch.ones_like(ids),
                 pixel_values=model.pixel_values_for([Image.open(io.BytesIO(_red_png())).convert("RGB")]))
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    for _ in range(40):
        loss = model(**batch).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    model.save_pretrained(lake / "run" / "final")
    return lake / "run" / "final"


def _request(kind, args, doc_id=0):
    from lmms_eval.api.instance import Instance

    return Instance(request_type=kind, arguments=args, idx=0,
                    metadata={"task": "local", "doc_id": doc_id, "repeats": 1})


def test_registered_for_the_lmms_eval_cli():
    from lmms_eval.api.registry import MODEL_REGISTRY
    from lmms_eval.models import get_model

    from openmind_core.evaluation.lmms import OpenMind

    assert get_model("openmind") is OpenMind  # the lmms_eval.models entry point (pyproject.toml)
    assert MODEL_REGISTRY["openmind"] is OpenMind  # and the @register_model registry


def test_generate_until_and_loglikelihood_on_local_requests(final_dir):
    from PIL import Image

    from openmind_core.evaluation.lmms import OpenMind
    from openmind_core.evaluation.run import load_model

    lm = OpenMind.create_from_arg_string(f"pretrained={final_dir},max_new_tokens=4")
    image = Image.open(io.BytesIO(_red_png())).convert("RGB")
    lm.task_dict = {"local": {"val": {0: {"image": image}, 1: {"image": image}}}}
    to_visual = lambda doc: [doc["image"]]  # noqa: E731
    reqs = [_request("generate_until", (f"<image>\n{QUESTION}", {"max_new_tokens": 4, "until": ["\n\n"]},
                                         to_visual, i, "local", "val"), i) for i in (0, 1)]
    assert lm.generate_until(reqs) == [ANSWER] * 2  # what the model was taught, through the adapter
    model = load_model(final_dir)
    assert model.generate([_red_png()], QUESTION, max_new_tokens=4)[0] == ANSWER  # and directly

    [(logp, greedy), (logp_other, greedy_other)] = lm.loglikelihood(
        [_request("loglikelihood", (QUESTION, answer, to_visual, 0, "local", "val")) for answer in (ANSWER, OTHER)])
    assert greedy is True and greedy_other is False
    # the log-probability of the answer's tokens is minus the model's summed loss over them
    for answer, got in ((ANSWER, logp), (OTHER, logp_other)):
        enc = _encoded(model, answer)
        ids = torch.tensor([enc.input_ids])
        with torch.no_grad():
            loss = model(input_ids=ids, labels=torch.tensor([enc.labels]), attention_mask=torch.ones_like(ids),
                         pixel_values=model.pixel_values_for([image])).loss
        n = sum(1 for t in enc.labels[1:] if t != -100)
        assert math.isfinite(got) and got == pytest.approx(-float(loss) * n, rel=1e-5), (answer, got, float(loss), n)
    assert logp_other < logp < 0
