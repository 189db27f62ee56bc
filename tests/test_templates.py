"""Prompts as the tokenizer's own chat template renders them: whitespace around image tags, reasoning
(``<think>``) templates, date-dependent templates, and generation without warnings from real files.

The expected token ids are always the template's own: ``tokenizer(apply_chat_template(messages))``
with each image placeholder widened to the image's tokens.  The Qwen3-style tokenizer is built here:
the tiny Qwen2.5 stand-in (tests/families.py) with ``<think>`` / ``</think>`` and Qwen3's template.
"""

from __future__ import annotations

import datetime as dt
import json
import shutil

import pytest
import torch

from families import llama3_dir, make_qwen2_lm, qwen2_dir, siglip_dir  # noqa: F401  (fixtures)
from openmind_core import prompting
from openmind_core.chat_template import pin_template_date, split_reasoning, strip_reasoning
from openmind_core.model import build_tokenizer
from schemas.loading import load_config

N = 4  # image tokens per image
I = prompting.IGNORE_INDEX

# Qwen3's chat template (Qwen/Qwen3-8B tokenizer_config.json), tool branches left out
QWEN3_TEMPLATE = r"""{%- if messages[0].role == 'system' %}
    {{- '<|im_start|>system\n' + messages[0].content + '<|im_end|>\n' }}
{%- endif %}
{%- set ns = namespace(multi_step_tool=true, last_query_index=messages|length - 1) %}
{%- for message in messages[::-1] %}
    {%- set index = (messages|length - 1) - loop.index0 %}
    {%- if ns.multi_step_tool and message.role == "user" and message.content is string and not(message.content.startswith('<tool_response>') and message.content.endswith('</tool_response>')) %}
        {%- set ns.multi_step_tool = false %}
        {%- set ns.last_query_index = index %}
    {%- endif %}
{%- endfor %}
{%- for message in messages %}
    {%- if message.content is string %}
        {%- set content = message.content %}
    {%- else %}
        {%- set content = '' %}
    {%- endif %}
    {%- if (message.role == "user") or (message.role == "system" and not loop.first) %}
        {{- '<|im_start|>' + message.role + '\n' + content + '<|im_end|>' + '\n' }}
    {%- elif message.role == "assistant" %}
        {%- set reasoning_content = '' %}
        {%- if message.reasoning_content is string %}
            {%- set reasoning_content = message.reasoning_content %}
        {%- else %}
            {%- if '</think>' in content %}
                {%- set reasoning_content = content.split('</think>')[0].rstrip('\n').split('<think>')[-1].lstrip('\n') %}
                {%- set content = content.split('</think>')[-1].lstrip('\n') %}
            {%- endif %}
        {%- endif %}
        {%- if loop.index0 > ns.last_query_index %}
            {%- if loop.last or (not loop.last and reasoning_content) %}
                {{- '<|im_start|>' + message.role + '\n<think>\n' + reasoning_content.strip('\n') + '\n</think>\n\n' + content.lstrip('\n') }}
            {%- else %}
                {{- '<|im_start|>' + message.role + '\n' + content }}
            {%- endif %}
        {%- else %}
            {{- '<|im_start|>' + message.role + '\n' + content }}
        {%- endif %}
        {{- '<|im_end|>\n' }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\n' }}
    {%- if enable_thinking is defined and enable_thinking is false %}
        {{- '<think>\n\n</think>\n\n' }}
    {%- endif %}
{%- endif %}"""


@pytest.fixture(scope="module")
def qwen3_tok(tmp_path_factory):
    from transformers import AutoTokenizer

    d = make_qwen2_lm(tmp_path_factory.mktemp("qwen3"), vocab_words=["think", "the shape is red"])
    tok = AutoTokenizer.from_pretrained(d)
    tok.add_tokens(["<think>", "</think>"])  # Qwen3: added tokens, not special (decoded with the text)
    tok.chat_template = QWEN3_TEMPLATE
    tok.save_pretrained(d)
    return build_tokenizer(load_config(overrides=[f"model.lm.name_or_path={d}"]).model.tokenizer)


def _tok(request, family):
    if family == "qwen3":
        return request.getfixturevalue("qwen3_tok")
    d = request.getfixturevalue(f"{family}_dir")
    return build_tokenizer(load_config(overrides=[f"model.lm.name_or_path={d}"]).model.tokenizer)


def template_ids(tok, turns, generation=False, **kw):
    """The template's own rendering, tokenised, each image tag widened to N image tokens."""
    image_id = tok.convert_tokens_to_ids("<image>")
    text = tok.apply_chat_template([{"role": r, "content": c} for r, c in turns], tokenize=False,
                                   add_generation_prompt=generation, **kw)
    out = []
    for t in tok(text, add_special_tokens=False)["input_ids"]:
        out.extend([image_id] * N if t == image_id else [t])
    return out


def labelled(tok, enc):
    return tok.decode([t for t in enc.labels if t != I])


CONVERSATIONS = {
    "tag last": [("user", "What animal is this?\n<image>"), ("assistant", "a cat")],
    "tag first": [("user", "<image>\nWhat color is this?"), ("assistant", "green")],
    "tag inside": [("user", "Look at this <image> and name the color."), ("assistant", "red")],
    "multi-turn": [("system", "Be brief."), ("user", "<image>\nWhat color?"), ("assistant", "green"),
                   ("user", "Is it dark?"), ("assistant", "no, it is light")],
}


@pytest.mark.parametrize("family", ["llama3", "qwen2", "qwen3"])
@pytest.mark.parametrize("name", list(CONVERSATIONS))
def test_rendered_prompts_equal_the_templates_own(family, name, request):
    tok = _tok(request, family)
    image_id = tok.convert_tokens_to_ids("<image>")
    turns = CONVERSATIONS[name]
    enc = prompting.encode_turns(tok, turns, N, image_id, 512)
    assert enc.input_ids == template_ids(tok, turns)  # "...this?\n<image>" keeps its "\n"
    # the generation prompt for the last answer: the template's, with enable_thinking stated
    gen = prompting.encode_turns(tok, turns[:-1], N, image_id, 512, generation=True)
    assert gen.input_ids == template_ids(tok, turns[:-1], generation=True, enable_thinking=False)
    # training and generation render the assistant turn alike: the prompt is where the answer starts
    assert enc.input_ids[: len(gen.input_ids)] == gen.input_ids
    assert turns[-1][1] in labelled(tok, enc)


@pytest.mark.parametrize("family", ["llama3", "qwen2", "qwen3"])
def test_caption_and_vqa_rows_render_as_image_then_instruction(family, request):
    tok = _tok(request, family)
    image_id = tok.convert_tokens_to_ids("<image>")
    enc = prompting.encode(tok, "Describe the image.", "a red circle", N, image_id, 512)
    assert enc.input_ids == template_ids(tok, [("user", "<image>\nDescribe the image."), ("assistant", "a red circle")])
    many = prompting.encode_many(tok, ["Describe the image."], ["a red circle"], N, image_id, 512)
    assert many[0] == enc
    gen = prompting.encode(tok, "Describe the image.", None, N, image_id, 512)
    assert enc.input_ids[: len(gen.input_ids)] == gen.input_ids


def test_qwen3_answers_without_a_trace_get_the_empty_think_block_in_training_and_generation(qwen3_tok):
    tok, image_id = qwen3_tok, qwen3_tok.convert_tokens_to_ids("<image>")
    turns = [("user", "<image>\nWhat color is the shape?"), ("assistant", "red")]
    enc = prompting.encode_turns(tok, turns, N, image_id, 512)
    gen = prompting.encode_turns(tok, turns[:1], N, image_id, 512, generation=True)
    assert tok.decode(gen.input_ids).endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")
    assert enc.input_ids[: len(gen.input_ids)] == gen.input_ids
    assert labelled(tok, enc) == "red<|im_end|>"  # the empty block is prompt, not target


def test_a_reasoning_trace_is_trained_on_and_the_answer_after_it_scored(qwen3_tok):
    tok, image_id = qwen3_tok, qwen3_tok.convert_tokens_to_ids("<image>")
    answer = "<think>\nThe shape is filled with red.\n</think>\n\nred"
    assert split_reasoning(answer) == ("The shape is filled with red.", "red")
    turns = [("user", "<image>\nWhat color is the shape?"), ("assistant", answer)]
    enc = prompting.encode_turns(tok, turns, N, image_id, 512)
    assert enc.input_ids == template_ids(tok, turns)
    # the target is the whole block and the answer: "<think>\n", the trace, "\n</think>\n\n", "red", <|im_end|>
    assert labelled(tok, enc) == answer + "<|im_end|>"
    # a generation prompt that lets the model think is the training prompt up to the block
    gen = prompting.encode_turns(tok, turns[:1], N, image_id, 512, generation=True, thinking=True)
    assert gen.input_ids == template_ids(tok, turns[:1], generation=True, enable_thinking=True)
    assert enc.input_ids[: len(gen.input_ids)] == gen.input_ids
    assert tok.decode(gen.input_ids).endswith("<|im_start|>assistant\n")
    # batched caption/VQA rows with traces take the same path
    many = prompting.encode_many(tok, ["What color is the shape?"], [answer], N, image_id, 512)
    assert many[0] == prompting.encode(tok, "What color is the shape?", answer, N, image_id, 512)
    assert labelled(tok, many[0]) == answer + "<|im_end|>"
    # evaluation scores the text after the trace
    assert strip_reasoning("<think>\nhmm, red\n</think>\n\nred") == "red" and strip_reasoning("red") == "red"


def test_earlier_traces_are_dropped_as_the_template_drops_them(qwen3_tok):
    """Qwen3 keeps only the reasoning after the last question: an earlier turn's trace is not rendered,
    so it is not trained on; the last one is."""
    tok, image_id = qwen3_tok, qwen3_tok.convert_tokens_to_ids("<image>")
    turns = [("user", "<image>\nWhat color?"), ("assistant", "<think>\nlooks red\n</think>\n\nred"),
             ("user", "And the shape?"), ("assistant", "<think>\nthree corners\n</think>\n\ntriangle")]
    enc = prompting.encode_turns(tok, turns, N, image_id, 512)
    assert enc.input_ids == template_ids(tok, turns)
    text = labelled(tok, enc)
    assert "looks red" not in text and text == "red<|im_end|><think>\nthree corners\n</think>\n\ntriangle<|im_end|>"


def test_evaluation_lets_the_model_think_when_the_training_answers_do():
    from openmind_core.evaluation.run import holds_traces

    assert not holds_traces([{"kind": "vqa", "answer": "red"}])
    assert holds_traces([{"kind": "vqa", "answer": "<think>\nred it is\n</think>\n\nred"}])
    assert holds_traces([{"kind": "conversation", "conversation": [
        {"role": "user", "content": "<image>\nColor?"}, {"role": "assistant", "content": "<think>x</think>red"}]}])


DATED = ("{{ bos_token }}{{ '<|start_header_id|>system<|end_header_id|>\n\nToday Date: ' + strftime_now(\"%d %b %Y\") "
         "+ '<|eot_id|>' }}{% for m in messages %}{{ '<|start_header_id|>' + m['role'] + '<|end_header_id|>\n\n' + "
         "m['content'] | trim + '<|eot_id|>' }}{% endfor %}{% if add_generation_prompt %}"
         "{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}")


def test_a_date_dependent_template_renders_a_date_fixed_per_run_and_recorded(llama3_dir, tmp_path):
    """Llama-3.2's template writes today's date into the system prompt: a run pins the date it first started on."""
    from openmind_core.app.tokenizer import prepare_tokenizer
    from schemas import CuratedDataset

    d = tmp_path / "llama32"
    shutil.copytree(llama3_dir, d)
    cfg_file = d / "tokenizer_config.json"
    (d / "chat_template.jinja").unlink(missing_ok=True)
    cfg_file.write_text(json.dumps({**json.loads(cfg_file.read_text()), "chat_template": DATED}))
    cfg = load_config(overrides=[f"model.lm.name_or_path={d}"])
    tok = build_tokenizer(cfg.model.tokenizer, template_date=dt.date(2026, 12, 1))
    image_id = tok.convert_tokens_to_ids("<image>")
    enc = prompting.encode(tok, "What is it?", "a cat", N, image_id, 512)
    assert "Today Date: 01 Dec 2026" in tok.decode(enc.input_ids) and "strftime_now" not in tok.chat_template
    assert pin_template_date(tok) is None  # already pinned: nothing left to pin
    cur = CuratedDataset(version="v", schema_version=2, root="/c", shards=[], rows_in=0, rows_kept=0,
                         rows_quarantined=0, splits={})
    first = prepare_tokenizer(cfg, cur, tmp_path / "run")
    assert first.template_date == dt.date.today().isoformat()
    assert (tmp_path / "run" / "tokenizer" / "template_date.txt").read_text().strip() == first.template_date
    again = prepare_tokenizer(cfg, cur, tmp_path / "run")  # a resume: the same tokenizer, the same date
    assert again.reused and again.template_date == first.template_date
    plain = prepare_tokenizer(load_config(overrides=[f"model.lm.name_or_path={llama3_dir}"]), cur, tmp_path / "r2")
    assert plain.template_date is None  # Llama-3's own template reads no date


def test_real_generation_configs_cause_no_warnings(llama3_dir, siglip_dir, tmp_path):
    """Meta's Llama-3 files: generation_config.json has max_length 4096 and tokenizer_config.json
    clean_up_tokenization_spaces true; neither makes generate warn."""
    import logging

    from PIL import Image
    from transformers.utils import logging as hf_logging

    from openmind_core.model import build_model

    d = tmp_path / "llama3-real-files"
    shutil.copytree(llama3_dir, d)
    for name, extra in (("generation_config.json", {"max_length": 4096}),
                        ("tokenizer_config.json", {"clean_up_tokenization_spaces": True})):
        (d / name).write_text(json.dumps({**json.loads((d / name).read_text()), **extra}))
    cfg = load_config(overrides=[f"model.lm.name_or_path={d}", f"model.vision.pretrained={siglip_dir}",
                                 "model.max_length=64"]).model
    tok = build_tokenizer(cfg.tokenizer)
    torch.manual_seed(0)
    model = build_model(cfg, tok).eval()
    assert model.generation_config.max_length is None and tok.clean_up_tokenization_spaces is False

    class Collect(logging.Handler):
        def __init__(self):
            super().__init__(logging.WARNING)
            self.messages = []

        def emit(self, record):
            self.messages.append(record.getMessage())

    seen = Collect()
    root = logging.getLogger("transformers")  # transformers' loggers do not propagate past it
    root.addHandler(seen)
    hf_logging.warning_once.cache_clear()
    image = [Image.new("RGB", (56, 56), "red")]
    try:
        out = model.generate(image * 2, "What is it?", max_new_tokens=3, do_sample=False)
        assert len(out) == 2 and not seen.messages, seen.messages
        model.generate(image, "What is it?", max_new_tokens=3, max_length=99, do_sample=False)
        assert any("Both `max_new_tokens`" in m for m in seen.messages)  # the handler sees such warnings
    finally:
        root.removeHandler(seen)
