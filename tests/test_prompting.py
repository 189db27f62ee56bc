"""Prompt layout shared by training and generation: batched = one by one; images never truncated."""

from __future__ import annotations

from openmind_core.model import train_bpe_tokenizer
from openmind_core.prompting import IGNORE_INDEX, encode, encode_many, format_prompt

CORPUS = ["a red circle at the top left", "What color is the circle?", "blue", "两个红色的正方形", "这张图片里有什么？",
          format_prompt("Describe the image.")]


def test_batched_encoding_equals_one_by_one():
    tok = train_bpe_tokenizer(CORPUS, vocab_size=300, image_token="<image>")
    image_id = tok.convert_tokens_to_ids("<image>")
    instr = ["Describe the image.", "What color is the circle?", "这张图片里有什么？"]
    targets = ["a red circle at the top left", "blue", "两个红色的正方形"]
    many = encode_many(tok, instr, targets, 16, image_id, 128)
    for enc, i, t in zip(many, instr, targets):
        one = encode(tok, i, t, 16, image_id, 128)
        assert enc.input_ids == one.input_ids and enc.labels == one.labels
        assert enc.input_ids.count(image_id) == 16 and enc.labels[-1] == tok.eos_token_id


def test_truncation_cuts_text_never_image_tokens():
    tok = train_bpe_tokenizer(CORPUS, vocab_size=300, image_token="<image>")
    image_id = tok.convert_tokens_to_ids("<image>")
    enc = encode(tok, "What color is the circle?", "a red circle at the top left " * 10, 196, image_id, 12)
    assert enc.truncated and enc.input_ids.count(image_id) == 196
    assert len(enc.input_ids) == 1 + 196 + 12
    start, end = enc.image_positions
    assert all(x == IGNORE_INDEX for x in enc.labels[: end]) and any(x != IGNORE_INDEX for x in enc.labels[end:])
