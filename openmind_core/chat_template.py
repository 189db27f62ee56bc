"""Chat templates cut into reusable pieces: the tokenizer's template rendered once per turn layout.

``skeleton(tokenizer, roles, generation)`` renders the template with a private-use marker where
each message's content goes and tokenises the text between them once (cached on the tokenizer):
``chunks[i]`` precedes content slot ``i``, and for an assistant turn ``turn_end[i]`` says how many
leading tokens of the next chunk close it (its end-of-turn token, labelled with the turn).
``plain_skeleton`` is the same shape for tokenizers without a template (the fixed USER/ASSISTANT
layout).  ``stop_ids`` / ``turn_end_ids``: the special tokens that end an assistant turn (eos, and
what the template writes after one), which generation stops on.

**Reasoning templates** (Qwen3, DeepSeek-R1 distills, SmolLM3) write a ``<think>...</think>`` block
in the assistant turn.  An answer whose text starts with a reasoning trace (``split_reasoning``) is
rendered as the template renders a message holding one: the skeleton then has a second marker for
the trace, ``mid[i]`` holds the template's tokens between trace and answer, and ``opener[i]`` counts
the last tokens of ``chunks[i]`` that open the block (``<think>\n``): trace, block and answer are
the turn's target.  A template that drops the traces of earlier turns (Qwen3 keeps only the last
turn's) drops them here too.  Generation prompts are rendered with ``enable_thinking`` set
explicitly (``thinking``, False by default): Qwen3 then writes the same empty block that its
training rendering of an answer without a trace holds, so both render the assistant turn alike.

**Date-dependent templates** (Llama-3.1/3.2 write ``strftime_now("%d %b %Y")`` into the system
prompt): ``pin_template_date`` replaces each such call with that date's text, so a run's prompts are
the same every day; the run's tokenizer keeps the pinned template and the tokenizer stage records
the date.
"""

from __future__ import annotations

import datetime as _dt
import re
from dataclasses import dataclass

OPEN, CLOSE = "\ue000", "\ue001"  # private-use marks around each content slot while rendering a template
TRACE = "\ue003"  # marks a reasoning trace's slot (inside OPEN ... CLOSE)
THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
_STRFTIME = re.compile(r"""strftime_now\(\s*(["'])(.*?)\1\s*\)""")


def split_reasoning(text: str) -> tuple[str | None, str]:
    """(reasoning trace or None, answer) of an answer text: ``<think>trace</think> answer`` holds a trace."""
    t = text.lstrip()
    if not t.startswith(THINK_OPEN) or THINK_CLOSE not in t:
        return None, text
    trace, _, answer = t[len(THINK_OPEN):].partition(THINK_CLOSE)
    return trace.strip("\n"), answer.lstrip()


def strip_reasoning(text: str) -> str:
    """The answer after a reasoning block (``...</think>``): what evaluation scores."""
    return text.rpartition(THINK_CLOSE)[2].strip() if THINK_CLOSE in text else text.strip()


def pin_template_date(tokenizer, day: _dt.date | None = None) -> _dt.date | None:
    """Replace every ``strftime_now("<format>")`` in the tokenizer's chat template with ``day`` in that
    format (default today); returns the date pinned, or None when the template reads no date."""
    template = getattr(tokenizer, "chat_template", None)
    if not isinstance(template, str) or "strftime_now" not in template:
        return None
    day = day or _dt.date.today()

    def literal(m: re.Match) -> str:
        return '"' + day.strftime(m.group(2)).replace("\\", "\\\\").replace('"', '\\"') + '"'

    tokenizer.chat_template = _STRFTIME.sub(literal, template)
    tokenizer.__dict__["_openmind_template_date"] = day
    return day


def pinned_date(tokenizer) -> _dt.date | None:
    """The date ``pin_template_date`` wrote into this tokenizer's template (None: it pinned none)."""
    return tokenizer.__dict__.get("_openmind_template_date")


def has_chat_template(tokenizer) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


@dataclass(frozen=True)
class Skeleton:
    """A rendered template with its contents cut out: ``chunks[i]`` precedes content slot ``i``;
    ``chunks[-1]`` follows the last one.  ``turn_end[i]``: how many leading tokens of the chunk after
    assistant slot ``i`` close that turn (its end-of-turn token), labelled with the turn.  For a turn
    rendered with a reasoning trace: ``mid[i]`` the template's tokens between trace and answer (None:
    no trace, or the template dropped it) and ``opener[i]`` the last tokens of ``chunks[i]`` that open
    the block (labelled with the turn)."""

    roles: tuple[str, ...]
    chunks: tuple[tuple[int, ...], ...]
    turn_end: tuple[int, ...]
    mid: tuple[tuple[int, ...] | None, ...] = ()
    opener: tuple[int, ...] = ()

    def trace_kept(self, i: int) -> bool:
        return bool(self.mid) and self.mid[i] is not None


def _mark(i: int) -> str:
    return f"{OPEN}{i}{CLOSE}"


def _ids(tokenizer, text: str) -> tuple[int, ...]:
    return tuple(tokenizer(text, add_special_tokens=False)["input_ids"]) if text else ()


def render_kwargs(generation: bool, thinking: bool) -> dict:
    """What a generation prompt is rendered with besides the messages: ``enable_thinking`` set explicitly."""
    return {"enable_thinking": thinking} if generation else {}


def _render(tokenizer, roles: tuple[str, ...], generation: bool, traces: tuple[bool, ...],
            thinking: bool) -> Skeleton:
    messages = []
    for i, r in enumerate(roles):
        content = _mark(i)
        if traces[i]:  # as the template renders a message whose text holds a trace
            content = f"{THINK_OPEN}\n{OPEN}{TRACE}{i}{CLOSE}\n{THINK_CLOSE}\n\n{_mark(i)}"
        messages.append({"role": r, "content": content})
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation,
                                         **render_kwargs(generation, thinking))
    pieces, mids, openers, pos = [], [], [], 0
    for i in range(len(roles)):
        trace_mark = f"{OPEN}{TRACE}{i}{CLOSE}"
        at_trace = text.find(trace_mark, pos) if traces[i] else -1
        mark = _mark(i)
        at = text.find(mark, max(pos, at_trace))
        if at < 0:
            raise ValueError(f"the tokenizer's chat template does not reproduce message {i} ({roles[i]}) verbatim; "
                             "OpenMind needs a template that writes each message's content as given")
        if at_trace >= 0:
            before = text[pos:at_trace]
            opener = before[before.rfind(THINK_OPEN):] if THINK_OPEN in before else ""
            pieces.append(before)
            mids.append(_ids(tokenizer, text[at_trace + len(trace_mark):at]))
            openers.append(len(_ids(tokenizer, opener)))
        else:
            pieces.append(text[pos:at])
            mids.append(None)
            openers.append(0)
        pos = at + len(mark)
    pieces.append(text[pos:])
    chunks = tuple(_ids(tokenizer, p) for p in pieces)
    stops = set(stop_ids(tokenizer))
    turn_end = []
    for i, role in enumerate(roles):
        after = chunks[i + 1]
        n = next((k + 1 for k, t in enumerate(after) if t in stops), 0) if role == "assistant" else 0
        turn_end.append(n)
    return Skeleton(roles, chunks, tuple(turn_end), tuple(mids), tuple(openers))


def skeleton(tokenizer, roles: tuple[str, ...], generation: bool, traces: tuple[bool, ...] | None = None,
             thinking: bool = False) -> Skeleton:
    """The template's pieces for a turn layout (cached): ``traces[i]``: assistant turn ``i`` holds a
    reasoning trace; ``thinking``: a generation prompt that lets the model think (``enable_thinking``)."""
    traces = tuple(traces) if traces is not None else (False,) * len(roles)
    cache = tokenizer.__dict__.setdefault("_openmind_skeletons", {})
    key = (roles, generation, traces, thinking and generation, tokenizer.chat_template)
    if key not in cache:
        cache[key] = _render(tokenizer, roles, generation, traces, thinking and generation)
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
