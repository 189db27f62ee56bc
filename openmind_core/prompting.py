"""Prompts and tokenisation shared by training, evaluation and generation.

Two layouts, chosen by the tokenizer:

* **The tokenizer's chat template** (Llama-3, ChatML / Qwen2, any instruct model's): the user turn
  holds the image placeholder and the instruction (``<image>\\n{instruction}``, LLaVA's order), the
  assistant turn the target.  The template is rendered once per turn layout with markers where the
  contents go; its own text (headers, system prompt, end-of-turn tokens) is tokenised once and
  reused, and only the contents are tokenised per sample (two batched tokenizer calls for many
  samples).  Labels cover each assistant turn's tokens and the end-of-turn token that closes it
  (``<|eot_id|>``, ``<|im_end|>``), nothing else.
* **No template** (the tiny default's trained BPE): ``[bos] [image] * N "\\nUSER: {instruction}\\nASSISTANT:"
  " {target}" [eos]``.

In both, the image placeholder is inserted as ``N`` token ids (``openmind_core.model.tokens``),
never parsed out of text: a literal ``<image>`` inside an instruction, caption or answer is
tokenised as the plain characters it is.  The text budget (``max_length``) counts text tokens
only: truncation shortens the target first, then the instruction, and never cuts an image token
or the template's own tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

IGNORE_INDEX = -100

CAPTION_INSTRUCTION = {"en": "Describe the image.", "zh": "这张图片里有什么？"}  # zh: the guide's own prompt
TEMPLATE = "\nUSER: {instruction}\nASSISTANT:"
_OPEN, _CLOSE = "\ue000", "\ue001"  # private-use marks around each content slot while rendering a template


def caption_instruction(language: str = "en") -> str:
    return CAPTION_INSTRUCTION.get(language, CAPTION_INSTRUCTION["en"])


def format_prompt(instruction: str) -> str:
    """The text that follows the image tokens (tokenizers without a chat template)."""
    return TEMPLATE.format(instruction=instruction.strip())


def instruction_for(row: dict, language: str = "en") -> tuple[str, str | None]:
    """(instruction, target) for a curated row: a caption row or a VQA row."""
    if row.get("kind") == "vqa" or row.get("question"):
        return row["question"], row.get("answer")
    return caption_instruction(row.get("language") or language), row.get("text")


def has_chat_template(tokenizer) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


@dataclass
class Encoded:
    input_ids: list[int]
    labels: list[int]
    image_positions: tuple[int, int]  # [start, end) of the image tokens
    truncated: bool


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


# --------------------------------------------------------------------------- chat templates


@dataclass(frozen=True)
class _Skeleton:
    """A rendered template with its contents cut out: ``chunks[i]`` precedes content slot ``i``;
    ``chunks[-1]`` follows the last one.  ``turn_end[i]``: how many leading tokens of the chunk after
    assistant slot ``i`` close that turn (its end-of-turn token), labelled with the turn."""

    roles: tuple[str, ...]
    chunks: tuple[tuple[int, ...], ...]
    turn_end: tuple[int, ...]


def _render_skeleton(tokenizer, roles: tuple[str, ...], generation: bool) -> _Skeleton:
    messages = [{"role": r, "content": f"{_OPEN}{i}{_CLOSE}"} for i, r in enumerate(roles)]
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation)
    pieces, pos = [], 0
    for i in range(len(roles)):
        mark = f"{_OPEN}{i}{_CLOSE}"
        at = text.find(mark, pos)
        if at < 0:
            raise ValueError(f"the tokenizer's chat template does not reproduce message {i} ({roles[i]}) verbatim; "
                             "OpenMind needs a template that writes each message's content as given")
        pieces.append(text[pos:at])
        pos = at + len(mark)
    pieces.append(text[pos:])
    chunks = tuple(tuple(tokenizer(p, add_special_tokens=False)["input_ids"]) if p else () for p in pieces)
    stops = set(_stop_ids(tokenizer))
    turn_end = []
    for i, role in enumerate(roles):
        after = chunks[i + 1]
        n = next((k + 1 for k, t in enumerate(after) if t in stops), 0) if role == "assistant" else 0
        turn_end.append(n)
    return _Skeleton(roles, chunks, tuple(turn_end))


def _skeleton(tokenizer, roles: tuple[str, ...], generation: bool) -> _Skeleton:
    cache = tokenizer.__dict__.setdefault("_openmind_skeletons", {})
    key = (roles, generation, tokenizer.chat_template)
    if key not in cache:
        cache[key] = _render_skeleton(tokenizer, roles, generation)
    return cache[key]


def _stop_ids(tokenizer) -> list[int]:
    """Special tokens that may end an assistant turn: eos, and what the template writes after one."""
    cache = tokenizer.__dict__.get("_openmind_stops")
    if cache is not None:
        return cache
    stops = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    if has_chat_template(tokenizer):
        specials = set(tokenizer.all_special_ids) | {
            i for i, t in getattr(tokenizer, "added_tokens_decoder", {}).items() if getattr(t, "special", False)}
        messages = [{"role": "user", "content": f"{_OPEN}0{_CLOSE}"},
                    {"role": "assistant", "content": f"{_OPEN}1{_CLOSE}"}]
        text = tokenizer.apply_chat_template(messages, tokenize=False)
        mark = f"{_OPEN}1{_CLOSE}"
        if mark in text:
            after = tokenizer(text.split(mark, 1)[1], add_special_tokens=False)["input_ids"]
            first = next((t for t in after if t in specials), None)
            if first is not None and first not in stops:
                stops.append(first)
    tokenizer.__dict__["_openmind_stops"] = stops
    return stops


def turn_end_ids(tokenizer) -> list[int]:
    """Token ids that end an assistant turn for this tokenizer (generation stops on each)."""
    return list(_stop_ids(tokenizer))


def _assemble_turns(skel: _Skeleton, contents: list[list[int]], image_ids: list[int], max_length: int,
                    generation: bool) -> Encoded:
    """Lay out template chunks and content ids; the image goes first in the first user turn."""
    contents = [list(c) for c in contents]
    tail_kept = len(skel.chunks[-1]) if generation or not skel.roles else skel.turn_end[-1]
    fixed = sum(len(c) for c in skel.chunks[:-1]) + tail_kept
    user = [i for i, r in enumerate(skel.roles) if r == "user"]
    overflow = fixed + sum(len(c) for c in contents) - max_length
    truncated = overflow > 0
    # targets first, then instructions; each keeps one token, template tokens are never cut
    for i in [k for k, r in reversed(list(enumerate(skel.roles))) if r == "assistant"] + user[::-1]:
        cut = min(max(overflow, 0), max(len(contents[i]) - 1, 0))
        contents[i] = contents[i][: len(contents[i]) - cut]
        overflow -= cut
    input_ids: list[int] = []
    labels: list[int] = []
    start = end = 0
    first_user = user[0] if user else None
    for i, role in enumerate(skel.roles):
        chunk = list(skel.chunks[i])
        if i > 0 and skel.turn_end[i - 1]:  # the end-of-turn token(s) closing the previous assistant turn
            n = skel.turn_end[i - 1]
            input_ids += chunk[:n]
            labels += chunk[:n]
            chunk = chunk[n:]
        input_ids += chunk
        labels += [IGNORE_INDEX] * len(chunk)
        if i == first_user and image_ids:
            start = len(input_ids)
            input_ids += image_ids
            labels += [IGNORE_INDEX] * len(image_ids)
            end = len(input_ids)
        input_ids += contents[i]
        labels += contents[i] if role == "assistant" else [IGNORE_INDEX] * len(contents[i])
    tail = list(skel.chunks[-1])
    if skel.roles and skel.turn_end[-1]:
        n = skel.turn_end[-1]
        input_ids += tail[:n]
        labels += tail[:n]
        tail = tail[n:]
    if generation:  # the generation prompt (the assistant header); after a finished turn (ChatML's
        input_ids += tail  # trailing newline) the tail is left out: nothing follows it
        labels += [IGNORE_INDEX] * len(tail)
    return Encoded(input_ids, labels, (start, end), truncated)


def encode_turns(tokenizer, turns: list[tuple[str, str]], num_image_tokens: int, image_token_id: int,
                 max_length: int, generation: bool | None = None) -> Encoded:
    """Tokenise a conversation (``[(role, text), ...]``, roles ``user``/``assistant``; the image goes in
    the first user turn).  ``generation`` (default: the last turn is the user's) ends with the
    template's generation prompt and takes no labels."""
    if generation is None:
        generation = bool(turns) and turns[-1][0] == "user"
    roles = tuple(r for r, _ in turns)
    texts = [t.strip() for _, t in turns]
    if has_chat_template(tokenizer):
        skel = _skeleton(tokenizer, roles, generation)
        ids = tokenizer(["\n" + t if i == 0 and num_image_tokens else t for i, t in enumerate(texts)],
                        add_special_tokens=False)["input_ids"] if texts else []
        ids = [_plain(x, tokenizer, image_token_id) for x in ids]
        return _assemble_turns(skel, ids, [image_token_id] * num_image_tokens, max_length, generation)
    # no template: USER/ASSISTANT lines after [bos] [image] * N
    if roles[0] != "user" or any(r != ("user" if k % 2 == 0 else "assistant") for k, r in enumerate(roles)):
        raise ValueError(f"turns must alternate user/assistant starting with user, got {list(roles)}")
    prompts = [format_prompt(t) for t in texts[0::2]]
    answers = [" " + t for t in texts[1::2]]
    p_ids = [_plain(x, tokenizer, image_token_id) for x in tokenizer(prompts, add_special_tokens=False)["input_ids"]]
    a_ids = ([_plain(x, tokenizer, image_token_id) for x in tokenizer(answers, add_special_tokens=False)["input_ids"]]
             if answers else [])
    if len(p_ids) == 1:
        return assemble(tokenizer, p_ids[0], a_ids[0] if a_ids else None, num_image_tokens, image_token_id,
                        max_length)
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    input_ids = bos + [image_token_id] * num_image_tokens
    labels = [IGNORE_INDEX] * len(input_ids)
    for k, p in enumerate(p_ids):
        input_ids += p
        labels += [IGNORE_INDEX] * len(p)
        if k < len(a_ids):
            input_ids += a_ids[k] + eos
            labels += a_ids[k] + eos
    text_len = len(input_ids) - num_image_tokens
    truncated = text_len > max_length
    if truncated:  # multi-turn: drop from the end, never into the image
        keep = len(input_ids) - (text_len - max_length)
        input_ids, labels = input_ids[:keep], labels[:keep]
    start = len(bos)
    return Encoded(input_ids, labels, (start, start + num_image_tokens), truncated)


# --------------------------------------------------------------------------- no template


def _target_text(target: str) -> str:
    return " " + target.strip()


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
    start = len(bos)
    return Encoded(input_ids, labels, (start, start + num_image_tokens), truncated)


# --------------------------------------------------------------------------- one sample, many samples


def encode(
    tokenizer,
    instruction: str,
    target: str | None,
    num_image_tokens: int,
    image_token_id: int,
    max_length: int,
) -> Encoded:
    """Tokenise one sample.  ``target=None`` gives a generation prompt (no target, no labels)."""
    turns = [("user", instruction)] + ([("assistant", target)] if target is not None else [])
    return encode_turns(tokenizer, turns, num_image_tokens, image_token_id, max_length)


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
    if has_chat_template(tokenizer):
        skel = _skeleton(tokenizer, ("user", "assistant"), False)
        lead = "\n" if num_image_tokens else ""
        users = tokenizer([lead + i.strip() for i in instructions], add_special_tokens=False)["input_ids"]
        answers = tokenizer([t.strip() for t in targets], add_special_tokens=False)["input_ids"]
        return [_assemble_turns(skel, [_plain(u, tokenizer, image_token_id), _plain(a, tokenizer, image_token_id)],
                                image, max_length, False) for u, a in zip(users, answers)]
    prompts = tokenizer([format_prompt(i) for i in instructions], add_special_tokens=False)["input_ids"]
    answers = tokenizer([_target_text(t) for t in targets], add_special_tokens=False)["input_ids"]
    return [assemble(tokenizer, p, t, num_image_tokens, image_token_id, max_length) for p, t in zip(prompts, answers)]
