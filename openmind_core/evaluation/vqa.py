"""VQAv2's official accuracy: its answer normalisation and its 10-answer consensus score.

Follows the official evaluation, GT-Vision-Lab/VQA ``PythonEvaluationTools/vqaEvaluation/vqaEval.py``
(``processPunctuation``, ``processDigitArticle``, the ``contractions`` and ``manualMap`` tables and the
accuracy loop), which lmms-eval reproduces in ``lmms_eval/tasks/vqav2/utils.py``:

1. newlines and tabs become spaces, the answer is stripped;
2. punctuation: each of ``; : / ' [ ] " ( ) = + \\ _ > < @ ` , ?`` is deleted when it touches a space
   (or the text has a digit-comma-digit number), else it becomes a space; a period not followed by a
   digit is deleted (``3.5`` keeps its point);
3. lower case, number words ``none``/``zero``..``ten`` become digits, ``a``/``an``/``the`` are dropped,
   and contractions written without an apostrophe get it back (``dont`` -> ``don’t``).

The score of an answer against ten human answers is ``min(1, matches / 3)`` averaged over the ten
subsets that leave one human answer out (so 3 matching humans give 0.9, 4 or more give 1.0).

Where we differ, on purpose:

- ground-truth answers are normalised exactly like predictions.  The official script only fixes their
  punctuation (and only when the ten disagree) because VQAv2's annotations are already normalised;
  user data sets are not ("Two.", "The red one").  On VQAv2's own answers both give the same score;
- the consensus formula needs several answers.  A row with ten or more answers uses it (``vqav2``);
  a row with one answer is scored by normalised exact match (``exact``; the official formula would give
  0 there, having no other answers to agree with); a row with 2 to 9 answers scores 1 when the
  prediction matches any of them (``any``).  Every score says which applied.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

METHODS = ("vqav2", "exact", "any")

# The official ``contractions`` table (keys: the form without apostrophes), with its typographic
# apostrophes kept as they are there, so that normalised answers compare equal to VQAv2's.
_CONTRACTIONS = {
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldve": "could've", "couldnt": "couldn't",
    "couldn'tve": "couldn’t’ve", "couldnt’ve": "couldn’t’ve", "didnt": "didn’t", "doesnt": "doesn’t",
    "dont": "don’t", "hadnt": "hadn’t", "hadnt’ve": "hadn’t’ve", "hadn'tve": "hadn’t’ve", "hasnt": "hasn’t",
    "havent": "haven’t", "hed": "he’d", "hed’ve": "he’d’ve", "he’dve": "he’d’ve", "hes": "he’s", "howd": "how’d",
    "howll": "how’ll", "hows": "how’s", "Id’ve": "I’d’ve", "I’dve": "I’d’ve", "Im": "I’m", "Ive": "I’ve",
    "isnt": "isn’t", "itd": "it’d", "itd’ve": "it’d’ve", "it’dve": "it’d’ve", "itll": "it’ll", "let’s": "let’s",
    "maam": "ma’am", "mightnt": "mightn’t", "mightnt’ve": "mightn’t’ve", "mightn’tve": "mightn’t’ve",
    "mightve": "might’ve", "mustnt": "mustn’t", "mustve": "must’ve", "neednt": "needn’t", "notve": "not’ve",
    "oclock": "o’clock", "oughtnt": "oughtn’t", "ow’s’at": "’ow’s’at", "’ows’at": "’ow’s’at",
    "’ow’sat": "’ow’s’at", "shant": "shan’t", "shed’ve": "she’d’ve", "she’dve": "she’d’ve", "she’s": "she’s",
    "shouldve": "should’ve", "shouldnt": "shouldn’t", "shouldnt’ve": "shouldn’t’ve",
    "shouldn’tve": "shouldn’t’ve", "somebody’d": "somebodyd", "somebodyd’ve": "somebody’d’ve",
    "somebody’dve": "somebody’d’ve", "somebodyll": "somebody’ll", "somebodys": "somebody’s",
    "someoned": "someone’d", "someoned’ve": "someone’d’ve", "someone’dve": "someone’d’ve",
    "someonell": "someone’ll", "someones": "someone’s", "somethingd": "something’d",
    "somethingd’ve": "something’d’ve", "something’dve": "something’d’ve", "somethingll": "something’ll",
    "thats": "that’s", "thered": "there’d", "thered’ve": "there’d’ve", "there’dve": "there’d’ve",
    "therere": "there’re", "theres": "there’s", "theyd": "they’d", "theyd’ve": "they’d’ve",
    "they’dve": "they’d’ve", "theyll": "they’ll", "theyre": "they’re", "theyve": "they’ve", "twas": "’twas",
    "wasnt": "wasn’t", "wed’ve": "we’d’ve", "we’dve": "we’d’ve", "weve": "we've", "werent": "weren’t",
    "whatll": "what’ll", "whatre": "what’re", "whats": "what’s", "whatve": "what’ve", "whens": "when’s",
    "whered": "where’d", "wheres": "where's", "whereve": "where’ve", "whod": "who’d", "whod’ve": "who’d’ve",
    "who’dve": "who’d’ve", "wholl": "who’ll", "whos": "who’s", "whove": "who've", "whyll": "why’ll",
    "whyre": "why’re", "whys": "why’s", "wont": "won’t", "wouldve": "would’ve", "wouldnt": "wouldn’t",
    "wouldnt’ve": "wouldn’t’ve", "wouldn’tve": "wouldn’t’ve", "yall": "y’all", "yall’ll": "y’all’ll",
    "y’allll": "y’all’ll", "yall’d’ve": "y’all’d’ve", "y’alld’ve": "y’all’d’ve", "y’all’dve": "y’all’d’ve",
    "youd": "you’d", "youd’ve": "you’d’ve", "you’dve": "you’d’ve", "youll": "you’ll", "youre": "you’re",
    "youve": "you’ve",
}
_NUMBERS = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
            "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10"}
_ARTICLES = frozenset({"a", "an", "the"})
_PUNCT = (";", ":", "/", "'", "[", "]", '"', "(", ")", "=", "+", "\\", "_", ">", "<", "@", "`", ",", "?")
_DIGIT_COMMA_DIGIT = re.compile(r"(\d)(,)(\d)")
_PERIOD = re.compile(r"(?!<=\d)(\.)(?!\d)")  # the official pattern: in effect, a period not before a digit


def _punctuation(text: str) -> str:
    out = text
    number = _DIGIT_COMMA_DIGIT.search(text) is not None
    for p in _PUNCT:
        # as in the official script, the test looks at the original text, the edit at the running one
        out = out.replace(p, "") if (p + " " in text or " " + p in text or number) else out.replace(p, " ")
    return _PERIOD.sub("", out)


def _digits_articles(text: str) -> str:
    words = [_NUMBERS.get(w, w) for w in text.lower().split()]
    return " ".join(_CONTRACTIONS.get(w, w) for w in words if w not in _ARTICLES)


def normalize_vqa_answer(text: str | None) -> str:
    """An answer as VQAv2's evaluation compares it (see the module docstring)."""
    text = (text or "").replace("\n", " ").replace("\t", " ").strip()
    return _digits_articles(_punctuation(text))


def vqa_score(prediction: str, answers: Sequence[str]) -> tuple[float, str]:
    """(score in [0, 1], method) of one prediction against a question's ground-truth answers."""
    gts = [normalize_vqa_answer(a) for a in answers if a is not None]
    if not gts:
        raise ValueError("vqa_score: the question has no ground-truth answer")
    pred = normalize_vqa_answer(prediction)
    if len(gts) == 1:
        return float(pred == gts[0]), "exact"
    if len(gts) < 10:
        return float(pred in gts), "any"
    matches = sum(g == pred for g in gts)
    # leave-one-out: leaving out a matching answer leaves matches - 1 others, any other leaves matches
    per_subset = [min(1.0, (matches - (g == pred)) / 3) for g in gts]
    return sum(per_subset) / len(per_subset), "vqav2"


def answers_of(row: dict) -> list[str]:
    """A lake row's ground-truth answers: ``answers`` (every answer the source had) or its one ``answer``."""
    answers = [a for a in (row.get("answers") or []) if a is not None]
    if answers:
        return answers
    if row.get("answer") is None:
        raise ValueError(f"VQA row {row.get('sample_id')!r} has neither answers nor answer")
    return [row["answer"]]
