"""Caption scores: pycocoevalcap's CIDEr-D and BLEU-4 behind a documented simple tokenizer."""

from __future__ import annotations

import pytest

from openmind_core.evaluation.captions import caption_scores, caption_tokens

REFS = {"a": ["a red circle at the top", "a red ball on top"], "b": ["two blue squares"],
        "c": ["a green triangle on the left"], "d": ["a yellow star in the middle"]}


def test_tokenizer_is_simple_and_documented():
    assert caption_tokens("A red circle, at the TOP!") == ["a", "red", "circle", "at", "the", "top"]
    assert caption_tokens("don't") == ["don", "t"]
    assert caption_tokens("图中有两个正方形。") == list("图中有两个正方形")  # Chinese by characters
    assert caption_tokens("mixed 中文 text") == ["mixed", "中", "文", "text"]
    assert caption_tokens("") == [] and caption_tokens(None) == []


def test_scores_equal_pycocoevalcap_on_the_tokenised_text():
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider

    preds = {"a": "A red circle at the top.", "b": "two squares", "c": "a green triangle", "d": "nothing"}
    got = caption_scores(preds, REFS)
    gts = {k: [" ".join(caption_tokens(r)) for r in v] for k, v in REFS.items()}
    res = {k: [" ".join(caption_tokens(v))] for k, v in preds.items()}
    assert got["cider"] == pytest.approx(Cider().compute_score(gts, res)[0])
    assert got["bleu4"] == pytest.approx(Bleu(4).compute_score(gts, res, verbose=0)[0][3])
    assert got["images"] == 4 and got["cider_per_image"]["a"] > got["cider_per_image"]["d"] == 0.0


def test_perfect_captions_beat_wrong_ones_and_every_reference_counts():
    perfect = caption_scores({k: v[0] for k, v in REFS.items()}, REFS)
    assert perfect["bleu4"] == pytest.approx(1.0, abs=1e-6) and perfect["cider"] > 1.0
    wrong = caption_scores({"a": "two blue squares", "b": "a red ball", "c": "a yellow star", "d": "a green"}, REFS)
    assert wrong["cider"] < perfect["cider"] / 3
    second = caption_scores({"a": "a red ball on top", "b": "two blue squares", "c": "x", "d": "y"}, REFS)
    assert second["cider_per_image"]["a"] > 1.0  # matches the second reference of image a


def test_chinese_is_scored_by_characters():
    refs = {str(i): [t] for i, t in enumerate(["图中有两个红色正方形", "左边有一个蓝色圆形", "右边有三个黄色三角形"])}
    close = caption_scores({"0": "图中有两个黄色正方形", "1": "左边有一个蓝色圆形", "2": "右边有三个黄色三角形"}, refs)
    assert 0.5 < close["bleu4"] < 1.0


def test_mismatched_keys_are_refused():
    with pytest.raises(ValueError, match="different images"):
        caption_scores({"a": "x"}, {"b": ["x"]})
    assert caption_scores({}, {})["cider"] is None
