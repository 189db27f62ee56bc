"""Prompt templates and tokenisation shared by training, evaluation and generation.

A sample becomes ``[bos] [image] * N  prompt  target [eos]`` where N is the projector's token
count (``openmind_core.model.tokens``).  Image placeholders are inserted as token ids, never
parsed out of text, and the text budget (``max_length``) counts text tokens only: truncation
shortens the target first, then the prompt, and never cuts an image token.  Labels are -100 on
bos, image and prompt positions, so the loss covers the target (and eos) alone.
"""

from __future__ import annotations

from dataclasses import dataclass

IGNORE_INDEX = -100

CAPTION_INSTRUCTION = {"en": "Describe the image.", "zh": "这张图片里有什么？"}  # zh: the guide's own prompt
TEMPLATE = "\nUSER: {instruction}\nASSISTANT:"


def caption_instruction(language: str = "en") -> str:
    return CAPTION_INSTRUCTION.get(language, CAPTION_INSTRUCTION["en"])


def format_prompt(instruction: str) -> str:
    """The text that follows the image tokens."""
    return TEMPLATE.format(instruction=instruction.strip())


def instruction_for(row: dict, language: str = "en") -> tuple[str, str | None]:
    """(instruction, target) for a curated row: a caption row or a VQA row."""
    if row.get("kind") == "vqa" or row.get("question"):
        return row["question"], row.get("answer")
    return caption_instruction(row.get("language") or language), row.get("text")


@dataclass
class Encoded:
    input_ids: list[int]
    labels: list[int]
    image_positions: tuple[int, int]  # [start, end) of the image tokens
    truncated: bool


def _target_text(target: str) -> str:
    return " " + target.strip()


def assemble(tokenizer, prompt_ids: list[int], target_ids: list[int] | None, num_image_tokens: int,
             image_token_id: int, max_length: int) -> Encoded:
    """Lay out ``[bos] [image]*N prompt target [eos]`` from token ids; truncate text, never images."""
    if num_image_tokens < 0:
        raise ValueError("num_image_tokens must be >= 0")
    prompt_ids = list(prompt_ids)
    target_ids = list(target_ids) if target_ids is not None else []
    if target_ids and tokenizer.eos_token_id is not None:
        target_ids.append(tokenizer.eos_token_id)
    truncated = False
    overflow = len(prompt_ids) + len(target_ids) - max_length
    if overflow > 0:
        truncated = True
        cut = min(overflow, max(len(target_ids) - 1, 0))  # keep at least one target token
        target_ids = target_ids[: len(target_ids) - cut]
        overflow -= cut
        if overflow > 0:
            prompt_ids = prompt_ids[: max(len(prompt_ids) - overflow, 1)]
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    image = [image_token_id] * num_image_tokens
    input_ids = bos + image + prompt_ids + target_ids
    labels = [IGNORE_INDEX] * (len(bos) + len(image) + len(prompt_ids)) + target_ids
    start = len(bos)
    return Encoded(input_ids, labels, (start, start + num_image_tokens), truncated)


def encode(
    tokenizer,
    instruction: str,
    target: str | None,
    num_image_tokens: int,
    image_token_id: int,
    max_length: int,
) -> Encoded:
    """Tokenise one sample.  ``target=None`` gives a generation prompt (no eos, no labels)."""
    prompt_ids = tokenizer(format_prompt(instruction), add_special_tokens=False)["input_ids"]
    target_ids = None
    if target is not None:
        target_ids = tokenizer(_target_text(target), add_special_tokens=False)["input_ids"]
    return assemble(tokenizer, prompt_ids, target_ids, num_image_tokens, image_token_id, max_length)


def encode_many(
    tokenizer,
    instructions: list[str],
    targets: list[str],
    num_image_tokens: int,
    image_token_id: int,
    max_length: int,
) -> list[Encoded]:
    """``encode`` for many training samples at once: two batched tokenizer calls (Rust, no per-row Python)."""
    if len(instructions) != len(targets):
        raise ValueError(f"{len(instructions)} instructions but {len(targets)} targets")
    if not instructions:
        return []
    prompts = tokenizer([format_prompt(i) for i in instructions], add_special_tokens=False)["input_ids"]
    answers = tokenizer([_target_text(t) for t in targets], add_special_tokens=False)["input_ids"]
    return [assemble(tokenizer, p, t, num_image_tokens, image_token_id, max_length) for p, t in zip(prompts, answers)]
