"""Chat templates cut into reusable pieces: the tokenizer's template rendered once per turn layout.

``skeleton(tokenizer, roles, generation)`` renders the template with a private-use marker where
each message's content goes and tokenises the text between them once (cached on the tokenizer):
``chunks[i]`` precedes content slot ``i``, and for an assistant turn ``turn_end[i]`` says how many
leading tokens of the next chunk close it (its end-of-turn token, labelled with the turn).
``plain_skeleton`` is the same shape for tokenizers without a template (the fixed USER/ASSISTANT
layout).  ``stop_ids`` / ``turn_end_ids``: the special tokens that end an assistant turn (eos, and
what the template writes after one), which generation stops on.
"""

from __future__ import annotations

from dataclasses import dataclass

OPEN, CLOSE = "\ue000", "\ue001"  # private-use marks around each content slot while rendering a template


def has_chat_template(tokenizer) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


@dataclass(frozen=True)
class Skeleton:
    """A rendered template with its contents cut out: ``chunks[i]`` precedes content slot ``i``;
    ``chunks[-1]`` follows the last one.  ``turn_end[i]``: how many leading tokens of the chunk after
    assistant slot ``i`` close that turn (its end-of-turn token), labelled with the turn."""

    roles: tuple[str, ...]
    chunks: tuple[tuple[int, ...], ...]
    turn_end: tuple[int, ...]


def _render(tokenizer, roles: tuple[str, ...], generation: bool) -> Skeleton:
    messages = [{"role": r, "content": f"{OPEN}{i}{CLOSE}"} for i, r in enumerate(roles)]
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation)
    pieces, pos = [], 0
    for i in range(len(roles)):
        mark = f"{OPEN}{i}{CLOSE}"
        at = text.find(mark, pos)
        if at < 0:
            raise ValueError(f"the tokenizer's chat template does not reproduce message {i} ({roles[i]}) verbatim; "
                             "OpenMind needs a template that writes each message's content as given")
        pieces.append(text[pos:at])
        pos = at + len(mark)
    pieces.append(text[pos:])
    chunks = tuple(tuple(tokenizer(p, add_special_tokens=False)["input_ids"]) if p else () for p in pieces)
    stops = set(stop_ids(tokenizer))
    turn_end = []
    for i, role in enumerate(roles):
        after = chunks[i + 1]
        n = next((k + 1 for k, t in enumerate(after) if t in stops), 0) if role == "assistant" else 0
        turn_end.append(n)
    return Skeleton(roles, chunks, tuple(turn_end))


def skeleton(tokenizer, roles: tuple[str, ...], generation: bool) -> Skeleton:
    cache = tokenizer.__dict__.setdefault("_openmind_skeletons", {})
    key = (roles, generation, tokenizer.chat_template)
    if key not in cache:
        cache[key] = _render(tokenizer, roles, generation)
    return cache[key]


def stop_ids(tokenizer) -> list[int]:
    """Special tokens that may end an assistant turn: eos, and what the template writes after one."""
    cache = tokenizer.__dict__.get("_openmind_stops")
    if cache is not None:
        return cache
    stops = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    if has_chat_template(tokenizer):
        specials = set(tokenizer.all_special_ids) | {
            i for i, t in getattr(tokenizer, "added_tokens_decoder", {}).items() if getattr(t, "special", False)}
        messages = [{"role": "user", "content": f"{OPEN}0{CLOSE}"},
                    {"role": "assistant", "content": f"{OPEN}1{CLOSE}"}]
        text = tokenizer.apply_chat_template(messages, tokenize=False)
        mark = f"{OPEN}1{CLOSE}"
        if mark in text:
            after = tokenizer(text.split(mark, 1)[1], add_special_tokens=False)["input_ids"]
            first = next((t for t in after if t in specials), None)
            if first is not None and first not in stops:
                stops.append(first)
    tokenizer.__dict__["_openmind_stops"] = stops
    return stops


def turn_end_ids(tokenizer) -> list[int]:
    """Token ids that end an assistant turn for this tokenizer (generation stops on each)."""
    return list(stop_ids(tokenizer))


def plain_skeleton(tokenizer, roles: tuple[str, ...]) -> Skeleton:
    """The fixed USER/ASSISTANT layout as a skeleton: [bos] first, [eos] closing each assistant turn."""
    bos = (tokenizer.bos_token_id,) if tokenizer.bos_token_id is not None else ()
    eos = (tokenizer.eos_token_id,) if tokenizer.eos_token_id is not None else ()
    chunks = [bos] + [eos if r == "assistant" else () for r in roles]
    return Skeleton(roles, tuple(chunks), tuple(len(eos) if r == "assistant" else 0 for r in roles))
