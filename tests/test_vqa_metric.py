"""VQAv2's official accuracy, checked against worked examples of the official evaluation's rules
(GT-Vision-Lab/VQA, PythonEvaluationTools/vqaEvaluation/vqaEval.py)."""

from __future__ import annotations

import pytest

from openmind_core.evaluation.vqa import answers_of, normalize_vqa_answer as norm, vqa_score


@pytest.mark.parametrize("raw, expected", [
    ("Yes", "yes"),
    ("  yes\n", "yes"),                    # newlines / tabs become spaces, stripped
    ("Two", "2"), ("none", "0"), ("ten", "10"),  # number words -> digits (manualMap)
    ("the dog", "dog"), ("A red car", "red car"), ("an apple", "apple"),  # articles dropped
    ("dog.", "dog"), ("3.5", "3.5"),       # a period goes unless a digit follows it
    ("1,000", "1000"),                     # digit-comma-digit: punctuation deleted, not spaced
    ("black/white", "black white"),        # punctuation touching no space becomes a space
    ("black / white", "black white"),      # ... and is deleted when it touches one
    ("what?", "what"),
    ("dont", "don’t"), ("isnt", "isn’t"), ("whats", "what’s"),  # contractions get their apostrophe back
    ("it's", "it s"),                      # an apostrophe inside a word becomes a space, as officially
    ("yes!", "yes!"),                      # '!' is not in the official punctuation list
])
def test_official_normalisation(raw, expected):
    assert norm(raw) == expected


@pytest.mark.parametrize("humans, score", [(0, 0.0), (1, 0.3), (2, 0.6), (3, 0.9), (4, 1.0), (10, 1.0)])
def test_ten_answers_leave_one_out(humans, score):
    """min(1, matches/3) over the ten leave-one-out subsets: 1 matching human 0.3, 2 0.6, 3 0.9, 4+ 1.0."""
    answers = ["2"] * humans + ["3"] * (10 - humans)
    got, method = vqa_score("two", answers)
    assert method == "vqav2" and got == pytest.approx(score)


def test_ten_answers_are_normalised_too():
    answers = ["Two.", "2", "two", "the 2"] + ["three"] * 6
    assert vqa_score("2", answers) == (pytest.approx(1.0), "vqav2")


def test_one_answer_is_normalised_exact_match():
    assert vqa_score("The Red.", ["red"]) == (1.0, "exact")
    assert vqa_score("red car", ["red"]) == (0.0, "exact")
    assert vqa_score("", ["red"]) == (0.0, "exact")


def test_a_few_answers_match_any():
    assert vqa_score("blue", ["red", "Blue"]) == (1.0, "any")
    assert vqa_score("green", ["red", "blue"]) == (0.0, "any")


def test_answers_of_rows_old_and_new():
    assert answers_of({"answer": "red", "answers": None}) == ["red"]
    assert answers_of({"answer": "red", "answers": ["red", "pink"]}) == ["red", "pink"]
    with pytest.raises(ValueError, match="neither answers nor answer"):
        answers_of({"sample_id": "x", "answer": None})
    with pytest.raises(ValueError, match="no ground-truth"):
        vqa_score("red", [])
