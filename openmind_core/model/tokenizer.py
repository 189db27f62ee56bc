"""The tokenizer: a pretrained one from the hub / a directory, or a byte-level BPE trained here.

With ``TokenizerConfig.name_or_path`` set (a hub id, a directory, a GGUF file:
``openmind_core.model.lm_files``), ``AutoTokenizer.from_pretrained`` loads it and the
image placeholder (``<image>``) is added as a special token (plus ``<pad>`` when the tokenizer has
no pad token, as Llama-3's does not).  Otherwise a byte-level BPE of ``vocab_size`` is trained on
the given corpus with the ``tokenizers`` library: byte-level means every string -- Chinese
included -- encodes without unknown tokens, and training is deterministic for the same corpus.
Special tokens: ``<pad>`` 0, ``<s>`` 1, ``</s>`` 2, ``<unk>`` 3, ``<image>`` 4.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from datetime import date
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from openmind_core.chat_template import pin_template_date
from openmind_core.hub import hub_access, unreachable_error
from openmind_core.model.lm_files import ModelFilesError, locate

logger = logging.getLogger(__name__)

PAD, BOS, EOS, UNK = "<pad>", "<s>", "</s>", "<unk>"


def _special_tokens(image_token: str) -> list[str]:
    return [PAD, BOS, EOS, UNK, image_token]


def train_bpe_tokenizer(corpus: Iterable[str], vocab_size: int, image_token: str = "<image>") -> PreTrainedTokenizerFast:
    """Train a byte-level BPE with our special tokens on ``corpus``."""
    specials = _special_tokens(image_token)
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    if vocab_size < len(alphabet) + len(specials):
        raise ValueError(
            f"tokenizer.vocab_size {vocab_size} is too small for a byte-level BPE: it needs at least "
            f"{len(alphabet) + len(specials)} (256 bytes + {len(specials)} special tokens)"
        )
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=alphabet,
        show_progress=False,
    )
    texts = [t for t in corpus if t]
    if not texts:
        raise ValueError("cannot train a tokenizer on an empty corpus")
    tok.train_from_iterator(texts, trainer=trainer, length=len(texts))
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        unk_token=UNK,
        extra_special_tokens=[image_token],
    )
    logger.info("trained a byte-level BPE tokenizer: %d tokens on %d texts", len(fast), len(texts))
    return fast


def quiet_cleanup(tok) -> bool | None:
    """``clean_up_tokenization_spaces`` for decoding: False for a BPE tokenizer, where transformers 5 ignores
    True (it would corrupt byte-level text) and warns each run (Llama-3 ships True); else the tokenizer's own."""
    backend = getattr(tok, "backend_tokenizer", None)
    return False if backend is not None and type(backend.model).__name__ == "BPE" else None


def _quiet(tok):
    if quiet_cleanup(tok) is False:
        tok.clean_up_tokenization_spaces = False  # what transformers does for BPE anyway, without the warning
    return tok


def _add_image_token(tok, image_token: str):
    added = tok.add_special_tokens({"extra_special_tokens": [image_token]}, replace_extra_special_tokens=False)
    if tok.pad_token is None:
        added += tok.add_special_tokens({"pad_token": PAD})
    if added:
        logger.info("added %d special token(s) to the tokenizer (image token %r)", added, image_token)
    return tok


def build_tokenizer(cfg, corpus: Iterable[str] | None = None, template_date: date | None = None) -> PreTrainedTokenizerFast:
    """A tokenizer for a ``schemas.config.TokenizerConfig``: pretrained (+ image token) or trained BPE.

    A pretrained chat template that writes today's date gets ``template_date`` (default today) instead
    (``openmind_core.chat_template.pin_template_date``)."""
    if cfg.name_or_path is None:
        if corpus is None:
            raise ValueError("tokenizer.name_or_path is not set, so a BPE is trained: pass a text corpus")
        return train_bpe_tokenizer(corpus, cfg.vocab_size, cfg.image_token)
    try:
        path = locate(cfg.name_or_path, cfg.gguf_file)  # a GGUF file: its converted directory
    except ModelFilesError as e:
        raise ModelFilesError(f"tokenizer.name_or_path: {e}") from e
    unreachable = None
    try:
        with hub_access(path) as unreachable:
            tok = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as e:
        if unreachable:
            raise unreachable_error(f"tokenizer.name_or_path {cfg.name_or_path!r}", unreachable, "use a local path") from e
        where = "local directory" if Path(cfg.name_or_path).exists() else "hub id (no hub reachable? use a local path)"
        raise OSError(f"cannot load tokenizer.name_or_path {cfg.name_or_path!r} ({where}): {e}") from e
    pin_template_date(tok, template_date)  # a template that writes today's date: a fixed one
    return _quiet(_add_image_token(tok, cfg.image_token))


def load_tokenizer(path: str | Path) -> PreTrainedTokenizerFast:
    """Load a tokenizer saved with ``save_pretrained`` (ours or any transformers tokenizer)."""
    try:
        return _quiet(AutoTokenizer.from_pretrained(str(path)))
    except (OSError, ValueError) as e:
        raise OSError(f"cannot load a tokenizer from {str(path)!r}: {e}") from e
