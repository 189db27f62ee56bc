"""Caption scores: CIDEr-D and BLEU-4 from pycocoevalcap (COCO's caption evaluation code).

pycocoevalcap's ``Cider`` (which is CIDEr-D: clipped n-gram counts, a Gaussian length penalty with
sigma 6, scores x 10) and ``Bleu(4)`` scorers are plain Python and numpy; only its PTB tokenizer,
METEOR and SPICE need Java, and we use none of them.  Captions are tokenised here instead by a
simple documented rule, :func:`caption_tokens`: lower case, split on whitespace, punctuation and
symbol characters (Unicode categories P* and S*) dropped and ending a word ("don't" -> "don", "t"),
and every CJK character a token of its own (Chinese is scored by characters).  The
scores are therefore **not PTB-tokenised** and do not equal the official COCO leaderboard numbers
exactly; they rank models the same way on the same data.

CIDEr weighs n-grams by their inverse document frequency over the *whole* reference corpus, so it is
computed once over every evaluated image, with all of an image's reference captions (a data set with
five captions per image gives five references).  With a single image every n-gram's IDF is 0 and so
is CIDEr: score at least a few images.
"""

from __future__ import annotations

import random
import unicodedata
from collections.abc import Mapping, Sequence

TOKENIZER = ("lowercase, punctuation/symbols dropped, whitespace split, CJK by character "
             "(not PTB-tokenised: not the official COCO numbers)")


def _is_cjk(ch: str) -> bool:
    o = ord(ch)
    return (0x4E00 <= o <= 0x9FFF or 0x3400 <= o <= 0x4DBF or 0x20000 <= o <= 0x2A6DF or 0xF900 <= o <= 0xFAFF
            or 0x3040 <= o <= 0x30FF or 0xAC00 <= o <= 0xD7AF)


def caption_tokens(text: str | None) -> list[str]:
    """Lower-cased words without punctuation; each CJK (Chinese, Japanese kana, Hangul) character a token."""
    out: list[str] = []
    word: list[str] = []
    for ch in (text or "").lower():
        cat = unicodedata.category(ch)
        if cat.startswith("P") or cat.startswith("S") or ch.isspace():
            if word:
                out.append("".join(word))
                word = []
        elif _is_cjk(ch):
            if word:
                out.append("".join(word))
                word = []
            out.append(ch)
        else:
            word.append(ch)
    if word:
        out.append("".join(word))
    return out


def _scorers():
    try:  # the eval extra: imported where captions are scored, so a missing one names what to install
        from pycocoevalcap.bleu.bleu import Bleu
        from pycocoevalcap.cider.cider import Cider
    except ImportError as e:
        raise ImportError(
            f"caption scores need pycocoevalcap ({e}); install it with `pip install pycocoevalcap` "
            "(only its pure-Python Cider and Bleu scorers are used: no Java)"
        ) from None
    return Cider, Bleu


def caption_scores(predictions: Mapping[str, str], references: Mapping[str, Sequence[str]]) -> dict:
    """Corpus CIDEr-D and BLEU-4 of one prediction per image against all of its references.

    ``predictions`` and ``references`` are keyed by image (the same keys); returns ``{"cider": float,
    "bleu4": float, "cider_per_image": {key: float}, "images": int}``.
    """
    if set(predictions) != set(references):
        missing = sorted(set(predictions) ^ set(references))[:3]
        raise ValueError(f"caption_scores: predictions and references cover different images (e.g. {missing})")
    if not predictions:
        return {"cider": None, "bleu4": None, "cider_per_image": {}, "images": 0}
    keys = sorted(predictions)
    res = {k: [" ".join(caption_tokens(predictions[k]))] for k in keys}
    gts = {k: [" ".join(caption_tokens(r)) for r in references[k]] for k in keys}
    empty = [k for k in keys if not gts[k]]
    if empty:
        raise ValueError(f"caption_scores: image {empty[0]!r} has no reference caption")
    Cider, Bleu = _scorers()
    cider, per_image = Cider().compute_score(gts, res)
    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    return {"cider": float(cider), "bleu4": float(bleu[3]),
            "cider_per_image": {k: float(v) for k, v in zip(keys, per_image)}, "images": len(keys)}


def random_other_texts(keys, pool: list[tuple[object, str]], seed: int = 0) -> dict:
    """For each key, a random text of ``pool`` ((key, text) pairs) from another key (20 draws at most):
    the chance baselines of captions and conversations."""
    rng = random.Random(seed)
    guess = {}
    for key in keys:
        for _ in range(20):
            k, text = rng.choice(pool)
            if k != key:
                break
        guess[key] = text
    return guess
