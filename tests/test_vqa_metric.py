"""VQAv2's standard accuracy: EvalAI's answer processing, then the official vqaEval.py scoring."""

from __future__ import annotations

import pytest

from openmind_core.evaluation.vqa import answers_of, vqa_score
from openmind_core.evaluation.vqa import normalize_vqa_answer as norm


@pytest.mark.parametrize("raw, expected", [
    ("Yes", "yes"),
    ("  yes\n", "yes"),                    # newlines / tabs become spaces, stripped
    ("Two", "2"), ("none", "0"), ("ten", "10"),  # number words -> digits
    ("the dog", "dog"), ("A red car", "red car"), ("an apple", "apple"),  # articles dropped
    ("dog.", "dog"), ("3.5", "3.5"),       # a period goes unless a digit follows it
    ("1,000", "1000"), ("Yes, it is", "yes it is"),  # every comma deleted (and every '?')
    ("black/white", "black white"),        # punctuation touching no space becomes a space
    ("black / white", "black white"),      # ... and is deleted when it touches one
    ("what?", "what"),
    ("dont", "don't"), ("isnt", "isn't"), ("whats", "what's"),  # contractions get a straight apostrophe
    ("it's", "it 's"),                     # EvalAI splits off 's; apostrophes are not punctuation
    ("yes!", "yes"), ("t-shirt", "t shirt"), ("{red}", "red"),  # ! - { } are punctuation
    ("10:30", "10:30"),                    # ':' is not
])
def test_evalai_normalisation(raw, expected):
    """Figures of lmms-eval's EvalAIAnswerProcessor (revision named below), run outside the project."""
    assert norm(raw) == expected


@pytest.mark.parametrize("humans, score", [(0, 0.0), (1, 0.3), (2, 0.6), (3, 0.9), (4, 1.0), (10, 1.0)])
def test_ten_answers_leave_one_out(humans, score):
    """min(1, matches/3) over the ten leave-one-out subsets: 1 matching human 0.3, 2 0.6, 3 0.9, 4+ 1.0."""
    answers = ["2"] * humans + ["3"] * (10 - humans)
    got, method = vqa_score("two", answers)
    assert method == "vqav2" and got == pytest.approx(score)


def test_ten_answers_are_normalised_only_when_they_disagree():
    answers = ["Two.", "2", "two", "the 2"] + ["three"] * 6
    assert vqa_score("2", answers) == (pytest.approx(1.0), "vqav2")
    assert vqa_score("2", ["two"] * 10) == (0.0, "vqav2")   # ten identical answers are compared as they are


def test_one_answer_is_normalised_exact_match():
    assert vqa_score("The Red.", ["red"]) == (1.0, "exact")
    assert vqa_score("dont know", ["don't know"]) == (1.0, "exact")
    assert vqa_score("red car", ["red"]) == (0.0, "exact")
    assert vqa_score("", ["red"]) == (0.0, "exact")


def test_a_few_answers_match_any():
    assert vqa_score("blue", ["red", "Blue"]) == (1.0, "any")
    assert vqa_score("green", ["red", "blue"]) == (0.0, "any")


def _ten(*parts: tuple[int, str]) -> list[str]:
    answers = [a for n, a in parts for _ in range(n)]
    assert len(answers) == 10
    return answers


# Worked cases and their official accuracy.  The figures were produced by running, outside the project,
# the two pieces of code that together are the standard:
#   - EvolvingLMMs-Lab/lmms-eval, lmms_eval/tasks/_task_utils/vqa_eval_metric.py (EvalAIAnswerProcessor),
#     revision 2c03baf04b363c0509e8a3561390b788f06916e9 (as installed with lmms-eval 0.7.3), applied to
#     the prediction;
#   - GT-Vision-Lab/VQA, PythonEvaluationTools/vqaEvaluation/vqaEval.py, revision
#     a013f0043c1e2cdc995922dfe257f7149aa9af06 (latest), unmodified under Python 2.7 with the official
#     VQA API (PythonHelperTools/vqaTools/vqa.py, 5e7e7dfbbebae7f329c798c966d9b3c9b61e8cf6) reading
#     annotation/result files of these cases (answer ids 1-10); per-question evalQA / 100.
#     Cross-checked under Python 3.11 with the same figures.
WORKED = [
    # leave-one-out steps
    ("loo_0", "2", _ten((10, "3")), 0.0),
    ("loo_1", "2", _ten((1, "2"), (9, "3")), 0.3),
    ("loo_2", "2", _ten((2, "2"), (8, "3")), 0.6),
    ("loo_3", "2", _ten((3, "2"), (7, "3")), 0.9),
    ("loo_4", "2", _ten((4, "2"), (6, "3")), 1.0),
    ("loo_10", "2", _ten((10, "2")), 1.0),
    # yes/no, case, trailing period, question mark
    ("yes_agree", "yes", _ten((10, "yes")), 1.0),
    ("Yes_agree", "Yes", _ten((10, "yes")), 1.0),
    ("yes_period", "Yes.", _ten((7, "yes"), (3, "no")), 1.0),
    ("yes_qmark", "yes?", _ten((10, "yes")), 1.0),
    ("no_vs_mixed", "no", _ten((3, "yes"), (7, "no")), 1.0),
    ("yes_bang", "yes!", _ten((10, "yes")), 1.0),
    ("yes_space_bang", "yes !", _ten((5, "yes"), (5, "no")), 1.0),
    # humans normalised only when they disagree
    ("agree_upper_gt", "yes", _ten((10, "Yes")), 0.0),
    ("agree_two_gt", "2", _ten((10, "two")), 0.0),
    ("agree_gt_period", "dog", _ten((10, "dog.")), 0.0),
    ("agree_after_strip", "yes", _ten((5, "yes"), (5, " yes\n")), 1.0),
    ("disagree_variants", "yes", _ten((5, "Yes"), (5, "yes.")), 1.0),
    ("partial_norm_3", "yes", _ten((1, "Yes"), (1, "yes."), (1, "YES"), (7, "no")), 0.9),
    # number words, articles
    ("two_vs_2", "two", _ten((3, "2"), (7, "3")), 0.9),
    ("Two._vs_2", "Two.", _ten((3, "2"), (7, "3")), 0.9),
    ("ten", "ten", _ten((4, "10"), (6, "12")), 1.0),
    ("none", "none", _ten((5, "0"), (5, "1")), 1.0),
    ("two_dogs", "two dogs", _ten((4, "2 dogs"), (6, "2")), 1.0),
    ("the_red_one", "The red one", _ten((4, "red 1"), (6, "red")), 1.0),
    ("a_dog", "A dog", _ten((6, "dog"), (4, "cat")), 1.0),
    ("an_apple_gt", "apple", _ten((4, "an apple"), (6, "pear")), 1.0),
    # contractions
    ("dont_know", "dont know", _ten((4, "don't know"), (6, "no")), 1.0),
    ("dont_know_rev", "don't know", _ten((4, "dont know"), (6, "no")), 1.0),
    ("i_dont_know_agree", "i dont know", _ten((10, "i don't know")), 1.0),
    ("isnt", "isnt", _ten((5, "isn't"), (5, "no")), 1.0),
    ("whats", "whats", _ten((4, "what's"), (6, "nothing")), 1.0),
    ("curly_dont", "don\u2019t know", _ten((4, "don't know"), (6, "no")), 0.0),
    ("oclock", "o'clock", _ten((4, "oclock"), (6, "noon")), 1.0),
    ("its_apostrophe", "it's", _ten((3, "it's"), (7, "no")), 0.0),
    ("dogs_possessive", "dog's", _ten((3, "dogs"), (7, "cat")), 0.0),
    # punctuation: old list vs new list
    ("hyphen_pred", "t-shirt", _ten((4, "t shirt"), (6, "shirt")), 1.0),
    ("hyphen_gt", "t shirt", _ten((4, "t-shirt"), (6, "shirt")), 1.0),
    ("braces", "{red}", _ten((4, "red"), (6, "blue")), 1.0),
    ("colon_time", "10:30", _ten((4, "10:30"), (6, "10")), 1.0),
    ("colon_spaced", "10 30", _ten((4, "10:30"), (6, "10")), 0.0),
    ("at_sign", "email@home", _ten((4, "email home"), (6, "email")), 1.0),
    ("dquote", '"stop"', _ten((4, "stop"), (6, "go")), 1.0),
    ("slash", "black/white", _ten((4, "black white"), (6, "black")), 1.0),
    ("slash_spaced", "black / white", _ten((4, "black and white"), (2, "black white"), (4, "white")), 0.6),
    ("backslash", "left\\right", _ten((4, "left right"), (6, "left")), 1.0),
    ("underscore", "snow_board", _ten((4, "snowboard"), (3, "snow board"), (3, "ski")), 0.9),
    ("semicolon", "yes;no", _ten((4, "yes no"), (6, "yes")), 1.0),
    ("paren_spaced", "dog (brown)", _ten((4, "dog brown"), (6, "dog")), 1.0),
    ("plus_eq", "2+2=4", _ten((4, "2 2 4"), (6, "4")), 1.0),
    # commas and digits
    ("comma_thousands_pred", "1,000", _ten((4, "1000"), (6, "100")), 1.0),
    ("comma_thousands_gt", "1000", _ten((4, "1,000"), (6, "100")), 1.0),
    ("comma_words_pred", "red,white", _ten((3, "red, white"), (7, "blue")), 0.0),
    ("comma_words_spaced", "red, white", _ten((3, "red white"), (7, "blue")), 0.9),
    ("comma_digits_gt_hyphen", "2000 ab", _ten((4, "2,000 a-b"), (6, "2000")), 1.0),
    ("yes_comma_it_is", "Yes, it is", _ten((4, "yes it is"), (6, "yes")), 1.0),
    # periods and digits
    ("decimal", "3.5", _ten((4, "3.5"), (6, "3")), 1.0),
    ("digit_period", "3.", _ten((4, "3"), (6, "4")), 1.0),
    ("leading_period", ".5", _ten((4, ".5"), (6, "5")), 1.0),
    ("period_inside", "st.louis", _ten((4, "stlouis"), (6, "louis")), 1.0),
    ("many_periods_agree", "yes" + "." * 40, _ten((10, "yes")), 0.0),
    ("many_periods_disagree", "yes" + "." * 40, _ten((4, "yes"), (6, "no")), 1.0),
    # whitespace
    ("newline_tab", "  red\tcar\n", _ten((4, "red car"), (6, "car")), 1.0),
    ("inner_newline", "red\ncar", _ten((10, "red car")), 1.0),
    ("empty", "", _ten((4, "yes"), (6, "no")), 0.0),
    # partial matches
    ("partial_word", "red car", _ten((6, "red"), (4, "car")), 0.0),
    ("partial_plural", "dogs", _ten((6, "dog"), (4, "cat")), 0.0),
]


@pytest.mark.parametrize("case, prediction, answers, official", WORKED, ids=[w[0] for w in WORKED])
def test_worked_cases_equal_the_official_scoring(case, prediction, answers, official):
    assert vqa_score(prediction, answers) == (pytest.approx(official, abs=1e-12), "vqav2")


def test_answers_of_rows_old_and_new():
    assert answers_of({"answer": "red", "answers": None}) == ["red"]
    assert answers_of({"answer": "red", "answers": ["red", "pink"]}) == ["red", "pink"]
    with pytest.raises(ValueError, match="neither answers nor answer"):
        answers_of({"sample_id": "x", "answer": None})
    with pytest.raises(ValueError, match="no ground-truth"):
        vqa_score("red", [])
