"""VQAv2's standard accuracy: EvalAI's answer processing, then the official ``vqaEval.py`` scoring.

The standard is two pieces of code used together, and this module follows both, rule for rule:

- a prediction is processed as the EvalAI server processes submissions, which lmms-eval's
  ``EvalAIAnswerProcessor`` replicates (EvolvingLMMs-Lab/lmms-eval
  ``lmms_eval/tasks/_task_utils/vqa_eval_metric.py``, revision 2c03baf04b363c0509e8a3561390b788f06916e9,
  as shipped in lmms-eval 0.7.3): :func:`normalize_vqa_answer`;
- it is then scored by the official evaluation, GT-Vision-Lab/VQA
  ``PythonEvaluationTools/vqaEvaluation/vqaEval.py`` at its latest revision,
  a013f0043c1e2cdc995922dfe257f7149aa9af06 (2021): :func:`vqa_score`.

EvalAI's processing of an answer:

1. lower case; every ``,`` and ``?`` deleted; ``'s`` becomes `` 's`` (``it's`` -> ``it 's``);
   newlines and tabs become spaces; stripped;
2. punctuation: each of ``; / [ ] " { } ( ) = + \\ _ - > < @ ` , ? !`` is deleted when it touches a
   space somewhere in the text (or the text has a digit-comma-digit number), else it becomes a space;
   ``'`` and ``:`` are kept.  Then a period not followed by a digit is deleted (``3.5`` keeps its point;
   at most 32 periods per pass, as both references pass ``re.UNICODE``, 32, where ``re.sub`` takes
   its count);
3. number words ``none``/``zero``..``ten`` become digits, ``a``/``an``/``the`` are dropped, and the
   contractions written without an apostrophe get it back (``dont`` -> ``don't``).

``vqaEval.py`` on a question with ten human answers: newlines and tabs in the humans' answers become
spaces and they are stripped.  **Only if they then disagree** (two or more distinct answers) are the
humans' answers, and the prediction again, put through steps 2 and 3; ten identical answers are
compared as they are (so ten ``"Yes"`` do not match ``yes``: VQAv2's own answers are already
normalised).  The score is ``min(1, matches / 3)`` averaged over the ten subsets that leave one human
answer out (1 matching human 0.3, 2 0.6, 3 0.9, 4 or more 1.0).

Where we go beyond the standard, on purpose: the consensus formula needs several answers.  A row with
ten or more answers uses it (``vqav2``); a row with one answer is scored by exact match after EvalAI's
processing of both sides (``exact``; the official formula would give 0 there, having no other answers
to agree with); a row with 2 to 9 answers scores 1 when the processed prediction equals any processed
answer (``any``).  Every score says which applied.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

METHODS = ("vqav2", "exact", "any")

# The contractions table, number words, articles, punctuation list and the two patterns are facts of
# the standard, as they stand in vqaEval.py at a013f0043c1e2cdc995922dfe257f7149aa9af06 (GT-Vision-Lab/VQA;
# the table's apostrophes are straight since its revision 458a8b2) and, identically, in lmms-eval's
# EvalAIAnswerProcessor at 2c03baf04b363c0509e8a3561390b788f06916e9.  Keys such as "Im" or "Id've"
# never match a lower-cased word; they are kept because the standard has them.
_CONTRACTIONS = {
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldve": "could've", "couldnt": "couldn't",
    "couldn'tve": "couldn't've", "couldnt've": "couldn't've", "didnt": "didn't", "doesnt": "doesn't",
    "dont": "don't", "hadnt": "hadn't", "hadnt've": "hadn't've", "hadn'tve": "hadn't've", "hasnt": "hasn't",
    "havent": "haven't", "hed": "he'd", "hed've": "he'd've", "he'dve": "he'd've", "hes": "he's", "howd": "how'd",
    "howll": "how'll", "hows": "how's", "Id've": "I'd've", "I'dve": "I'd've", "Im": "I'm", "Ive": "I've",
    "isnt": "isn't", "itd": "it'd", "itd've": "it'd've", "it'dve": "it'd've", "itll": "it'll", "let's": "let's",
    "maam": "ma'am", "mightnt": "mightn't", "mightnt've": "mightn't've", "mightn'tve": "mightn't've",
    "mightve": "might've", "mustnt": "mustn't", "mustve": "must've", "neednt": "needn't", "notve": "not've",
    "oclock": "o'clock", "oughtnt": "oughtn't", "ow's'at": "'ow's'at", "'ows'at": "'ow's'at",
    "'ow'sat": "'ow's'at", "shant": "shan't", "shed've": "she'd've", "she'dve": "she'd've", "she's": "she's",
    "shouldve": "should've", "shouldnt": "shouldn't", "shouldnt've": "shouldn't've",
    "shouldn'tve": "shouldn't've", "somebody'd": "somebodyd", "somebodyd've": "somebody'd've",
    "somebody'dve": "somebody'd've", "somebodyll": "somebody'll", "somebodys": "somebody's",
    "someoned": "someone'd", "someoned've": "someone'd've", "someone'dve": "someone'd've",
    "someonell": "someone'll", "someones": "someone's", "somethingd": "something'd",
    "somethingd've": "something'd've", "something'dve": "something'd've", "somethingll": "something'll",
    "thats": "that's", "thered": "there'd", "thered've": "there'd've", "there'dve": "there'd've",
    "therere": "there're", "theres": "there's", "theyd": "they'd", "theyd've": "they'd've",
    "they'dve": "they'd've", "theyll": "they'll", "theyre": "they're", "theyve": "they've", "twas": "'twas",
    "wasnt": "wasn't", "wed've": "we'd've", "we'dve": "we'd've", "weve": "we've", "werent": "weren't",
    "whatll": "what'll", "whatre": "what're", "whats": "what's", "whatve": "what've", "whens": "when's",
    "whered": "where'd", "wheres": "where's", "whereve": "where've", "whod": "who'd", "whod've": "who'd've",
    "who'dve": "who'd've", "wholl": "who'll", "whos": "who's", "whove": "who've", "whyll": "why'll",
    "whyre": "why're", "whys": "why's", "wont": "won't", "wouldve": "would've", "wouldnt": "wouldn't",
    "wouldnt've": "wouldn't've", "wouldn'tve": "wouldn't've", "yall": "y'all", "yall'll": "y'all'll",
    "y'allll": "y'all'll", "yall'd've": "y'all'd've", "y'alld've": "y'all'd've", "y'all'dve": "y'all'd've",
    "youd": "you'd", "youd've": "you'd've", "you'dve": "you'd've", "youll": "you'll", "youre": "you're",
    "youve": "you've",
}
_NUMBERS = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
            "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10"}
_ARTICLES = frozenset({"a", "an", "the"})
# vqaEval.py's list since 2015 (revision 3b6ef32, its missing commas fixed in 13cbf5e), which replaced the
# first revision's (07aecec) hours after it: { } - ! added, ' and : dropped.
_PUNCT = (";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",", "?", "!")
_DIGIT_COMMA_DIGIT = re.compile(r"(\d)(,)(\d)")
# the standard's pattern, verbatim: "(?!<=\d)" is a look-ahead, so in effect "a period not before a digit"
_PERIOD = re.compile(r"(?!<=\d)(\.)(?!\d)")
_PERIODS_PER_PASS = 32  # re.UNICODE, passed where re.sub takes its count


def _spaces(text: str) -> str:
    return text.replace("\n", " ").replace("\t", " ").strip()


def _punctuation(text: str) -> str:
    out = text
    number = _DIGIT_COMMA_DIGIT.search(text) is not None
    for p in _PUNCT:
        # the test looks at the text as it came in, the edit at the running one (as the standard does)
        out = out.replace(p, "") if (p + " " in text or " " + p in text or number) else out.replace(p, " ")
    return _PERIOD.sub("", out, count=_PERIODS_PER_PASS)


def _digits_articles(text: str) -> str:
    words = [_NUMBERS.get(w, w) for w in text.lower().split()]
    return " ".join(_CONTRACTIONS.get(w, w) for w in words if w not in _ARTICLES)


def _official(text: str) -> str:
    """vqaEval.py's processPunctuation then processDigitArticle (steps 2 and 3)."""
    return _digits_articles(_punctuation(text))


def normalize_vqa_answer(text: str | None) -> str:
    """An answer as EvalAI processes a submitted prediction (see the module docstring)."""
    text = (text or "").lower().replace(",", "").replace("?", "").replace("'s", " 's").strip()
    return _official(_spaces(text))


def vqa_score(prediction: str, answers: Sequence[str]) -> tuple[float, str]:
    """(score in [0, 1], method) of one prediction against a question's ground-truth answers."""
    humans = [a for a in answers if a is not None]
    if not humans:
        raise ValueError("vqa_score: the question has no ground-truth answer")
    pred = normalize_vqa_answer(prediction)
    if len(humans) == 1:
        return float(pred == normalize_vqa_answer(humans[0])), "exact"
    if len(humans) < 10:
        return float(pred in {normalize_vqa_answer(a) for a in humans}), "any"
    humans = [_spaces(a) for a in humans]
    pred = _spaces(pred)
    if len(set(humans)) > 1:  # the humans disagree: only then are their answers (and ours, again) processed
        humans = [_official(a) for a in humans]
        pred = _official(pred)
    matches = sum(h == pred for h in humans)
    # leave-one-out: leaving out a matching answer leaves matches - 1 others, any other leaves matches
    per_subset = [min(1.0, (matches - (h == pred)) / 3) for h in humans]
    return sum(per_subset) / len(per_subset), "vqav2"


def answers_of(row: dict) -> list[str]:
    """A lake row's ground-truth answers: ``answers`` (every answer the source had) or its one ``answer``."""
    answers = [a for a in (row.get("answers") or []) if a is not None]
    if answers:
        return answers
    if row.get("answer") is None:
        raise ValueError(f"VQA row {row.get('sample_id')!r} has neither answers nor answer")
    return [row["answer"]]
