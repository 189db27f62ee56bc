"""The lmms-eval adapter (extra ``[eval]``): registered as ``openmind``; generate_until and loglikelihood on
local requests (no hub, no lmms-eval task download)."""

from __future__ import annotations

import io
import math

import pytest

pytest.importorskip("lmms_eval")

from schemas import load_config  # noqa: E402

TINY = ["data.synthetic.num_captions=8", "data.synthetic.num_vqa=8"]


@pytest.fixture(scope="module")
def final_dir(tmp_path_factory):
    from openmind_core.data import convert, download
    from openmind_core.app.tokenizer import load_prepared, prepare_tokenizer
    from openmind_core.app.train import build_model

    lake = tmp_path_factory.mktemp("lake")
    cfg = load_config(overrides=TINY)
    cur = convert(download(cfg.data, lake), cfg.data, lake)
    tok = load_prepared(prepare_tokenizer(cfg, cur, lake / "run"))
    build_model(cfg, tok).save_pretrained(lake / "run" / "final")
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
    image = Image.new("RGB", (40, 40), (200, 30, 30))
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    lm.task_dict = {"local": {"val": {0: {"image": image}, 1: {"image": image}}}}
    to_visual = lambda doc: [doc["image"]]  # noqa: E731
    reqs = [_request("generate_until", ("<image>\nWhat color is the shape?", {"max_new_tokens": 4, "until": ["\n\n"]},
                                         to_visual, i, "local", "val"), i) for i in (0, 1)]
    out = lm.generate_until(reqs)
    direct = load_model(final_dir).generate([buf.getvalue()], "What color is the shape?", max_new_tokens=4)[0]
    assert out == [direct.split("\n\n")[0]] * 2
    [(logp, greedy)] = lm.loglikelihood([_request("loglikelihood", ("What color is the shape?", "red", to_visual, 0,
                                                                     "local", "val"))])
    assert math.isfinite(logp) and logp < 0 and isinstance(greedy, bool)
