"""Where the text pieces and the images of a conversation go, before tokenisation (``prompting``'s helper).

``_turn_pieces`` cuts every turn's text into the pieces ``prompting.encode_conversations`` tokenises in
one batch, and says where each image's run goes: at a user turn's ``<image>`` tags, in order (one tag
per image), or, with no tag, first in the first user turn.  ``format_prompt`` is the fixed layout's
user turn (tokenizers without a chat template); ``_fit_pairs`` drops trailing pairs of a conversation
that does not fit.
"""

from __future__ import annotations

from openmind_core.chat_template import split_reasoning

TEMPLATE = "\nUSER: {instruction}\nASSISTANT:"


def format_prompt(instruction: str) -> str:
    """The text that follows the image tokens (tokenizers without a chat template)."""
    return TEMPLATE.format(instruction=instruction.strip())


def _check_roles(roles: tuple[str, ...]) -> None:
    body = roles[1:] if roles and roles[0] == "system" else roles
    if not body or any(r != ("user" if k % 2 == 0 else "assistant") for k, r in enumerate(body)):
        raise ValueError(f"turns must be an optional system turn, then user/assistant alternating from user, "
                         f"got {list(roles)}")


def _image_pieces(text: str, images: int, tagged: bool, image_tag: str | None,
                  templated: bool) -> tuple[list[str], list[int]]:
    """A user turn holding ``images`` images: (its text pieces, for each image the number of pieces
    before it).  Tagged: the text around the first ``images`` tags as written (the template renders it so:
    ``"...this?\n<image>"``); untagged: LLaVA's order, the images, then "\n" + the text (a caption row's
    layout).  The fixed layout puts leading images first, then "\nUSER: ..." as for caption rows."""
    if not tagged:
        return (["", "\n" + text] if templated else ["", format_prompt(text)]), [1] * images
    segs = text.split(image_tag, images)
    if templated:
        return segs, list(range(1, images + 1))
    lead = 0
    while lead < images and not segs[lead].strip():
        lead += 1
    mark = "\ue002"
    if not lead:
        segs[0], segs[-1] = segs[0].strip(), segs[-1].rstrip()
        return format_prompt(mark.join(segs)).split(mark), list(range(1, images + 1))
    rest = segs[lead:]
    rest[0] = rest[0].lstrip()
    rest[-1] = rest[-1].rstrip()
    return ["", *format_prompt(mark.join(rest)).split(mark)], [1] * lead + list(range(2, images - lead + 2))


def _turn_pieces(turns: list[tuple[str, str]], images: int, image_tag: str | None, templated: bool
                 ) -> tuple[tuple[str, ...], list[list[str]], list[tuple[int, int]], tuple[bool, ...]]:
    """(roles, text pieces per turn, where each image goes, which turns hold a reasoning trace).  Each image
    goes at a user turn's tag, in order (``_image_pieces``; no tag at all: every image first in the first
    user turn) and is given as (turn, pieces of that turn before it); a templated assistant turn with a
    trace (``<think>...</think>`` first) has two pieces: the trace and the answer; every other turn one."""
    roles = tuple(r for r, _ in turns)
    _check_roles(roles)
    texts = [t.strip() for _, t in turns]
    allotted: dict[int, int] = {}  # user turn -> images placed at its tags
    tagged = False
    if images:
        users = [i for i, r in enumerate(roles) if r == "user"]
        left = images
        for i in users if image_tag else ():
            n = min(texts[i].count(image_tag), left)
            if n:
                allotted[i], left = n, left - n
        tagged = bool(allotted)
        if not tagged:
            allotted = {users[0]: images}
        elif left:
            raise ValueError(f"{images} images but only {images - left} {image_tag} tag(s) to place them at")
    pieces: list[list[str]] = []
    marks: list[tuple[int, int]] = []
    traces = []
    for i, (role, text) in enumerate(zip(roles, texts)):
        trace, answer = split_reasoning(text) if templated and role == "assistant" else (None, text)
        traces.append(trace is not None)
        if i in allotted:
            turn_pieces, before = _image_pieces(text, allotted[i], tagged, image_tag, templated)
            pieces.append(turn_pieces)
            marks += [(i, j) for j in before]
        elif trace is not None:
            pieces.append([trace, answer])
        elif templated:
            pieces.append([text])
        elif role == "user":
            pieces.append([format_prompt(text)])
        elif role == "assistant":
            pieces.append([_target_text(text)])
        else:  # a system turn in the fixed layout: its text, before the first "\nUSER:"
            pieces.append([text])
    return roles, pieces, marks, tuple(traces)


def _fit_pairs(roles: tuple[str, ...], contents: list[list[int]], image_turn: int | None, fixed_of,
               max_length: int, generation: bool) -> tuple[tuple[str, ...], list[list[int]], bool]:
    """Drop whole trailing user/assistant pairs while the text is over ``max_length`` (keeping the
    first pair and the one holding the image)."""
    dropped = False
    first = 1 if roles and roles[0] == "system" else 0
    keep_to = max(first + 2, (image_turn + 2) if image_turn is not None else 0)
    while (not generation and len(roles) >= keep_to + 2 and roles[-2:] == ("user", "assistant")
           and fixed_of(roles) + sum(len(c) for c in contents) > max_length):
        roles, contents, dropped = roles[:-2], contents[:-2], True
    return roles, contents, dropped


def _target_text(target: str) -> str:
    return " " + target.strip()
