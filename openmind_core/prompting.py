"""Prompts and tokenisation shared by training, evaluation and generation.

Two layouts, chosen by the tokenizer:

* **The tokenizer's chat template** (Llama-3, ChatML / Qwen2, any instruct model's): the user turn
  holds the image placeholder and the instruction (``<image>\\n{instruction}``, LLaVA's order), the
  assistant turn the target.  The template is rendered once per turn layout with markers where the
  contents go (``openmind_core.chat_template``); its own text (headers, system prompt, end-of-turn
  tokens) is tokenised once and reused, and only the contents are tokenised per sample (two batched tokenizer calls for many
  samples).  The ids equal the template's own rendering, tokenised (what it writes after the last
  turn, ChatML's newline, included, unlabelled).  Labels cover each assistant turn's tokens and the
  end-of-turn token that closes it (``<|eot_id|>``, ``<|im_end|>``), nothing else; an answer that
  starts with a reasoning trace (``<think>...</think>``) is rendered as the template renders one,
  and the block that holds it is part of the target.  Generation prompts set ``enable_thinking``
  (``thinking``, False by default), so reasoning templates render the assistant turn as in training.
* **No template** (the tiny default's trained BPE): ``[bos] [image] * N "\\nUSER: {instruction}\\nASSISTANT:"
  " {target}" [eos]``.

In both, the image placeholder is inserted as ``N`` token ids (``openmind_core.model.image_tokens``),
never parsed out of text: a literal ``<image>`` inside an instruction, caption or answer is
tokenised as the plain characters it is.  The text budget (``max_length``) counts text tokens
only: truncation shortens the target first, then the instruction, and never cuts an image token
or the template's own tokens.

**Conversations** (``encode_turns`` / ``encode_conversations``; curated rows of kind
``conversation``): any number of turns, an optional first ``system`` turn, then user / assistant
alternating.  Each image's tokens go where its ``<image>`` tag is (``image_tag``; a row with k images
has k tags in its user turns, the i-th image at the i-th tag; the tag itself is removed, the text around
it kept as written, so ``"...this?\n<image>"`` keeps its newline as the template does; a leading tag
gives the same layout as a caption row; ``prompt_layout.py`` cuts the text); a row without an
image (``num_image_tokens=0``) gets no image tokens, and its tag-free text stays text.  Caption and
VQA rows with k images put the k runs first, one after another.  Every
assistant turn is a label target (with its end-of-turn token), system and user turns are masked.
A conversation longer than ``max_length`` first loses whole trailing user/assistant pairs (never
a pair holding an image, never the first pair), then the per-turn truncation above.
"""

from __future__ import annotations

from dataclasses import dataclass

from openmind_core.chat_template import Skeleton, has_chat_template, plain_skeleton, skeleton, split_reasoning
from openmind_core.prompt_layout import TEMPLATE, _fit_pairs, _target_text, _turn_pieces, format_prompt

__all__ = ["TEMPLATE", "format_prompt"]  # the fixed layout's, re-exported: callers import them from here

IGNORE_INDEX = -100
IMAGE_TAG = "<image>"  # marks the image's place in a conversation row's user turn

CAPTION_INSTRUCTION = {"en": "Describe the image.", "zh": "这张图片里有什么？"}  # zh: the guide's own prompt


def caption_instruction(language: str = "en") -> str:
    return CAPTION_INSTRUCTION.get(language, CAPTION_INSTRUCTION["en"])


def instruction_for(row: dict, language: str = "en") -> tuple[str, str | None]:
    """(instruction, target) for a curated row: a caption row or a VQA row."""
    if row.get("kind") == "vqa" or row.get("question"):
        return row["question"], row.get("answer")
    return caption_instruction(row.get("language") or language), row.get("text")


@dataclass
class Encoded:
    input_ids: list[int]
    labels: list[int]
    image_positions: tuple[int, int]  # [start, end) of the (first) image's tokens; (0, 0): none
    truncated: bool
    image_runs: tuple[tuple[int, int], ...] = ()  # [start, end) of every image's tokens, in order (set where
    # images can be apart: conversations; empty: ``image_positions`` holds them all)

    @property
    def runs(self) -> tuple[tuple[int, int], ...]:
        """Every image run: ``image_runs``, else the one ``image_positions`` (none when empty)."""
        if self.image_runs:
            return self.image_runs
        start, end = self.image_positions
        return ((start, end),) if end > start else ()


# --------------------------------------------------------------------------- literal "<image>" in text


def _literal_ids(tokenizer, image_token_id: int) -> list[int]:
    cache = tokenizer.__dict__.setdefault("_openmind_literal_image", {})
    if image_token_id not in cache:
        text = tokenizer.convert_ids_to_tokens(image_token_id)
        cache[image_token_id] = tokenizer(text, add_special_tokens=False, split_special_tokens=True)["input_ids"]
    return cache[image_token_id]


def _plain(ids: list[int], tokenizer, image_token_id: int) -> list[int]:
    """Token ids of text with any image placeholder the tokenizer matched replaced by its plain characters."""
    if image_token_id not in ids:
        return ids
    literal = _literal_ids(tokenizer, image_token_id)
    out: list[int] = []
    for t in ids:
        out.extend(literal if t == image_token_id else (t,))
    return out


def _fixed_tokens(skel: Skeleton, generation: bool) -> int:
    """Template tokens a layout always keeps (they count towards ``max_length``)."""
    return sum(len(c) for c in skel.chunks)


def _assemble_turns(skel: Skeleton, contents: list[list[int]], image_ids: list[int], max_length: int,
                    generation: bool, image_at: tuple[int, int] | list[tuple[int, int]] | None = None,
                    truncated: bool = False) -> Encoded:
    """Lay out template chunks and content ids.  ``image_at`` = (turn, token offset in its content), or
    a list of them, one per image in order: where each image's run ``image_ids`` goes (default: one,
    first in the first user turn); truncation never cuts one (a run whose text was cut follows the
    text that is left)."""
    contents = [list(c) for c in contents]
    fixed = _fixed_tokens(skel, generation)
    user = [i for i, r in enumerate(skel.roles) if r == "user"]
    if image_at is None:
        image_at = (user[0], 0) if user else None
    marks = [] if image_at is None or not image_ids else [image_at] if isinstance(image_at, tuple) else list(image_at)
    overflow = fixed + sum(len(c) for c in contents) - max_length
    truncated = truncated or overflow > 0
    # targets first, then instructions; each keeps one token, template tokens are never cut
    for i in [k for k, r in reversed(list(enumerate(skel.roles))) if r == "assistant"] + user[::-1]:
        cut = min(max(overflow, 0), max(len(contents[i]) - 1, 0))
        contents[i] = contents[i][: len(contents[i]) - cut]
        overflow -= cut
    input_ids: list[int] = []
    labels: list[int] = []
    runs: list[tuple[int, int]] = []
    for i, role in enumerate(skel.roles):
        chunk = list(skel.chunks[i])
        if i > 0 and skel.turn_end[i - 1]:  # the end-of-turn token(s) closing the previous assistant turn
            n = skel.turn_end[i - 1]
            input_ids += chunk[:n]
            labels += chunk[:n]
            chunk = chunk[n:]
        opened = skel.opener[i] if skel.trace_kept(i) else 0  # "<think>\n": the start of the turn's target
        input_ids += chunk
        labels += [IGNORE_INDEX] * (len(chunk) - opened) + chunk[len(chunk) - opened:]
        content, done = contents[i], 0
        for at in sorted(min(off, len(content)) for turn, off in marks if turn == i):  # text after may be cut
            input_ids += content[done:at]
            labels += [IGNORE_INDEX] * (at - done)  # images are in user turns
            runs.append((len(input_ids), len(input_ids) + len(image_ids)))
            input_ids += image_ids
            labels += [IGNORE_INDEX] * len(image_ids)
            done = at
        content = content[done:]
        input_ids += content
        labels += content if role == "assistant" else [IGNORE_INDEX] * len(content)
    tail = list(skel.chunks[-1])
    if skel.roles and skel.turn_end[-1]:
        n = skel.turn_end[-1]
        input_ids += tail[:n]
        labels += tail[:n]
        tail = tail[n:]
    input_ids += tail  # the generation prompt (the assistant header), or what the template writes after
    labels += [IGNORE_INDEX] * len(tail)  # the last turn (ChatML's "\n"): as the template renders it, unlabelled
    return Encoded(input_ids, labels, runs[0] if runs else (0, 0), truncated, tuple(runs))


def encode_conversations(tokenizer, conversations: list[list[tuple[str, str]]], num_image_tokens: int | list[int],
                         image_token_id: int, max_length: int, image_tag: str | None = IMAGE_TAG,
                         generation: bool | None = None, thinking: bool = False,
                         num_images: int | list[int] | None = None) -> list[Encoded]:
    """Many conversations at once (one batched tokenizer call); see the module docstring.

    ``num_image_tokens``: tokens per image, per conversation (or one for all): 0 for a text-only row.
    ``num_images``: images per conversation (or one for all; default 1 where ``num_image_tokens`` > 0),
    placed at the first ``num_images`` tags in order.  ``image_tag`` (default ``<image>``): the text that
    marks an image's place in a user turn; None: the images go first in the first user turn and every
    ``<image>`` in the text stays plain text.
    ``thinking``: a generation prompt that lets a reasoning template think (``enable_thinking``).
    """
    if isinstance(num_image_tokens, int):
        num_image_tokens = [num_image_tokens] * len(conversations)
    if num_images is None:
        num_images = [1 if n > 0 else 0 for n in num_image_tokens]
    elif isinstance(num_images, int):
        num_images = [num_images] * len(conversations)
    if not len(num_image_tokens) == len(num_images) == len(conversations):
        raise ValueError(f"{len(conversations)} conversations but {len(num_image_tokens)} image token counts "
                         f"and {len(num_images)} image counts")
    if any(n < 0 for n in num_image_tokens) or any(k < 0 for k in num_images):
        raise ValueError("num_image_tokens and num_images must be >= 0")
    templated = has_chat_template(tokenizer)
    prepared, flat = [], []
    for turns, n, k in zip(conversations, num_image_tokens, num_images):
        if not turns:
            raise ValueError("a conversation needs at least one turn")
        roles, pieces, marks, traces = _turn_pieces(turns, k if n > 0 else 0, image_tag, templated)
        prepared.append((roles, [len(p) for p in pieces], marks, n, traces))
        flat.extend(x for p in pieces for x in p)
    flat_ids = tokenizer([x for x in flat if x], add_special_tokens=False)["input_ids"] if any(flat) else []
    it = iter(flat_ids)
    ids_of = [_plain(next(it), tokenizer, image_token_id) if x else [] for x in flat]
    out: list[Encoded] = []
    pos = 0
    for roles, counts, marks, n, traces in prepared:
        contents, parts_of = [], []
        for k in counts:
            parts = ids_of[pos: pos + k]
            pos += k
            parts_of.append(parts)
            contents.append([t for part in parts for t in part])
        at = [(turn, sum(len(p) for p in parts_of[turn][:j])) for turn, j in marks]
        image_turn = max((turn for turn, _ in marks), default=None)
        gen = (roles[-1] != "assistant") if generation is None else generation
        if templated:
            def fixed_of(r, g=gen, tr=traces):
                return _fixed_tokens(skeleton(tokenizer, r, g, tr[:len(r)], thinking), g)
        elif roles in (("user",), ("user", "assistant")) and all(off == 0 for _, off in at):
            # a single exchange in the fixed layout: exactly a caption / VQA row's tokens
            out.append(assemble(tokenizer, contents[0], contents[1] if len(contents) > 1 else None, n * len(at),
                                image_token_id, max_length))
            continue
        else:
            def fixed_of(r, g=gen):
                return _fixed_tokens(plain_skeleton(tokenizer, r), g)
        roles, contents, dropped = _fit_pairs(roles, contents, image_turn, fixed_of, max_length, gen)
        traces = traces[:len(roles)]
        if templated:
            skel = skeleton(tokenizer, roles, gen, traces, thinking)
            for i, traced in enumerate(traces):  # trace, the template's tokens between, answer; or the answer
                if traced:  # alone where the template drops the trace (Qwen3: turns before the last question)
                    trace_ids, answer_ids = parts_of[i]
                    contents[i] = trace_ids + list(skel.mid[i]) + answer_ids if skel.trace_kept(i) else answer_ids
        else:
            skel = plain_skeleton(tokenizer, roles)
        out.append(_assemble_turns(skel, contents, [image_token_id] * n, max_length, gen, image_at=at,
                                   truncated=dropped))
    return out


def encode_turns(tokenizer, turns: list[tuple[str, str]], num_image_tokens: int, image_token_id: int,
                 max_length: int, generation: bool | None = None, image_tag: str | None = IMAGE_TAG,
                 thinking: bool = False, num_images: int | None = None) -> Encoded:
    """Tokenise one conversation (``[(role, text), ...]``: an optional ``system`` turn, then ``user`` /
    ``assistant`` alternating).  Each image's tokens go where a user turn's ``image_tag`` is, in order
    (default ``<image>``; without one, first in the first user turn); ``num_image_tokens=0``: a text-only
    row; ``num_images``: the row's images (default 1).
    ``generation`` (default: the last turn is not the assistant's) ends with the template's
    generation prompt and takes no labels; ``thinking`` lets a reasoning template think there."""
    return encode_conversations(tokenizer, [turns], num_image_tokens, image_token_id, max_length,
                                image_tag=image_tag, generation=generation, thinking=thinking,
                                num_images=None if num_images is None else [num_images])[0]


# --------------------------------------------------------------------------- no template


def assemble(tokenizer, prompt_ids: list[int], target_ids: list[int] | None, num_image_tokens: int,
             image_token_id: int, max_length: int) -> Encoded:
    """Lay out ``[bos] [image]*N prompt target [eos]`` from token ids; truncate text, never images."""
    if num_image_tokens < 0:
        raise ValueError("num_image_tokens must be >= 0")
    prompt_ids = _plain(list(prompt_ids), tokenizer, image_token_id)  # idempotent: callers may have done it
    target_ids = _plain(list(target_ids), tokenizer, image_token_id) if target_ids is not None else []
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
    start = len(bos) if num_image_tokens else 0  # (0, 0): no image
    return Encoded(input_ids, labels, (start, start + num_image_tokens), truncated)


# --------------------------------------------------------------------------- one sample, many samples


def encode(
    tokenizer,
    instruction: str,
    target: str | None,
    num_image_tokens: int,
    image_token_id: int,
    max_length: int,
    thinking: bool = False,
) -> Encoded:
    """Tokenise one sample.  ``target=None`` gives a generation prompt (no target, no labels)."""
    turns = [("user", instruction)] + ([("assistant", target)] if target is not None else [])
    return encode_turns(tokenizer, turns, num_image_tokens, image_token_id, max_length, image_tag=None,
                        thinking=thinking)


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
    image = [image_token_id] * num_image_tokens
    if has_chat_template(tokenizer) and any(split_reasoning(t)[0] is not None for t in targets):
        return encode_conversations(tokenizer, [[("user", i), ("assistant", t)] for i, t in zip(instructions, targets)],
                                    num_image_tokens, image_token_id, max_length, image_tag=None)
    if has_chat_template(tokenizer):
        skel = skeleton(tokenizer, ("user", "assistant"), False)
        lead = "\n" if num_image_tokens else ""
        users = tokenizer([lead + i.strip() for i in instructions], add_special_tokens=False)["input_ids"]
        answers = tokenizer([t.strip() for t in targets], add_special_tokens=False)["input_ids"]
        return [_assemble_turns(skel, [_plain(u, tokenizer, image_token_id), _plain(a, tokenizer, image_token_id)],
                                image, max_length, False) for u, a in zip(users, answers)]
    prompts = tokenizer([format_prompt(i) for i in instructions], add_special_tokens=False)["input_ids"]
    answers = tokenizer([_target_text(t) for t in targets], add_special_tokens=False)["input_ids"]
    return [assemble(tokenizer, p, t, num_image_tokens, image_token_id, max_length) for p, t in zip(prompts, answers)]
