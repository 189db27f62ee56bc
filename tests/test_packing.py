"""Packed micro-batches (``train.packing``): the layout, and equality with the padded batches (CPU, fp32).

The model is the default config's tiny ``MultimodalReasoningModel`` (SDPA); the data mixes
text-only, single-image, two-image, multi-turn and chat-templated samples.  A packed batch's
per-sample losses, its loss and its gradients equal the padded batch's (relative 1e-5), for every
stage and with LoRA; a packed run counts tokens and slots and equals the padded run step by step;
it resumes bit-exact after ``kill -9``; DDP with packing equals one process.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from openmind_core import prompting
from openmind_core.data.collate import Collator
from openmind_core.data.packing import PackingCollator, first_fit_decreasing
from openmind_core.training.metrics import read_metrics
from packing_helpers import PackDataset, run_packed, tiny_tokenizer, tiny_vlm
from trainer_helpers import assert_same_state, make_cfg

HELPER = Path(__file__).with_name("trainer_helpers.py")
CHAT = ("{% for m in messages %}<s>{{ m['role'] }}: {{ m['content'] }}</s>{% endfor %}"
        "{% if add_generation_prompt %}<s>assistant: {% endif %}")


def test_first_fit_decreasing_fills_rows_deterministically():
    lengths = [5, 9, 2, 7, 3, 3, 10, 1]
    rows = first_fit_decreasing(lengths, 10)
    assert sorted(i for r in rows for i in r) == list(range(len(lengths)))  # every item once
    assert all(sum(lengths[i] for i in r) <= 10 for r in rows)
    # longest first into the first row with room: 10 | 9+1 | 7+3 | 5+3+2; rows by first item, items in order
    assert rows == [[0, 2, 5], [1, 7], [3, 4], [6]]
    assert first_fit_decreasing(lengths, 10) == rows
    # an item longer than a row is a row of its own (never cut): 10 | 9 | 7+2 | 5+3+1 | 3
    assert first_fit_decreasing(lengths, 9) == [[0, 4, 7], [1], [2, 3], [5], [6]]
    with pytest.raises(ValueError, match="positive number of tokens"):
        first_fit_decreasing(lengths, 0)


def _item(sid, ids, labels, px=None):
    return {"sample_id": sid, "input_ids": torch.tensor(ids), "labels": torch.tensor(labels), "pixel_values": px}


def test_packing_collator_restarts_positions_masks_first_labels_and_keeps_image_order():
    img = [torch.full((3, 4, 4), float(v)) for v in range(4)]
    items = [_item("a", [7, 4, 4, 8], [-100, -100, -100, 8], img[0]),
             _item("b", [9] * 7, [-100] + [9] * 6),
             _item("c", [5, 4, 4, 4, 4, 6], [5, -100, -100, -100, -100, 6], torch.stack([img[1], img[2]])),
             _item("d", [3, 3], [3, 3])]
    batch = PackingCollator(pad_token_id=0, pack_length=10)(items)
    # lengths 4, 7, 6, 2 -> rows [b, d] (7+2) and [a, c] (4+6), ordered by first item: [a, c], [b, d]
    assert batch["input_ids"].tolist() == [[7, 4, 4, 8, 5, 4, 4, 4, 4, 6], [9] * 7 + [3, 3, 0]]
    assert batch["position_ids"].tolist() == [[0, 1, 2, 3, 0, 1, 2, 3, 4, 5], [0, 1, 2, 3, 4, 5, 6, 0, 1, 0]]
    assert batch["attention_mask"].tolist() == [[1] * 10, [1] * 9 + [0]]
    # a sample's first label is never a target (c's and d's were, unpacked they are dropped by the shift)
    assert batch["labels"].tolist() == [[-100, -100, -100, 8, -100, -100, -100, -100, -100, 6],
                                        [-100] + [9] * 6 + [-100, 3, -100]]
    assert batch["pixel_values"][:, 0, 0, 0].tolist() == [0.0, 1.0, 2.0]  # a's, then c's two, in order
    assert batch["packed"] is True and batch["sample_ids"] == ["a", "b", "c", "d"]
    padded = Collator(0)(items)
    assert padded["pixel_values"][:, 0, 0, 0].tolist() == [0.0, 1.0, 2.0]  # [k, 3, H, W] items in the padded path too
    wide = PackingCollator(0, 6)(items)  # b (7 tokens) is longer than a row: alone, never cut
    assert wide["input_ids"].shape == (3, 7) and wide["input_ids"][1].tolist() == [9] * 7


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


@pytest.fixture(scope="module")
def mixed(tok):
    """Text-only, single-image, two-image, multi-turn and chat-templated samples, as dataset items."""
    model = tiny_vlm("full", tok=tok)
    n, img_id, size, length = model.num_image_tokens, model.image_token_id, model.img_size, 128
    chat = copy.deepcopy(tok)
    chat.chat_template = CHAT
    g = torch.Generator().manual_seed(3)

    def px(k):
        return torch.randn(k, 3, size, size, generator=g)

    encs = [(prompting.encode(tok, "What color is the circle?", "red", n, img_id, length), px(1)[0]),
            (prompting.encode(tok, "Describe the image.", "a red circle on a blue background", 0, img_id, length), None),
            (prompting.encode_turns(tok, [("user", "<image> What color?"), ("assistant", "red"),
                                          ("user", "and the background?"), ("assistant", "blue")], n, img_id, length),
             px(1)[0]),
            (prompting.encode_turns(chat, [("user", "<image> Describe the image."), ("assistant", "a red circle")],
                                    n, img_id, length), px(1)[0])]
    items = [_item(f"s{i}", e.input_ids, e.labels, p) for i, (e, p) in enumerate(encs)]
    e = prompting.encode(tok, "Describe the image.", "a green square", n, img_id, length)
    end = e.image_positions[1]  # a second image run right after the first: two images in tag order
    items.append(_item("two", e.input_ids[:end] + [img_id] * n + e.input_ids[end:],
                       e.labels[:end] + [-100] * n + e.labels[end:], px(2)))
    assert (items[3]["input_ids"] == chat.convert_tokens_to_ids("<s>")).any()  # the template's tokens are there
    return items


def _per_sample_losses(logits: torch.Tensor, labels: torch.Tensor, spans) -> list[float]:
    ce = F.cross_entropy(logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten(), reduction="none",
                         ignore_index=-100).view(labels.shape[0], -1)
    out = []
    for r, a, k in spans:  # row, start, length
        target = labels[r, a + 1: a + k] != -100
        out.append(float(ce[r, a: a + k - 1][target].mean()))
    return out


def _loss_and_grads(model, batch):
    model.zero_grad(set_to_none=True)
    batch = {k: v for k, v in batch.items() if k != "sample_ids"}
    out = model(**batch)
    out.loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad and p.grad is not None}
    return out, grads


def _assert_grads_equal(got: dict, ref: dict) -> None:
    """Relative 1e-5 per tensor; a tensor whose gradient is 0 in exact arithmetic (the key bias: softmax
    ignores it) holds rounding noise, so the scale is at least 1e-3 of the largest gradient anywhere."""
    assert got.keys() == ref.keys() and ref
    floor = 1e-3 * max(v.abs().max().item() for v in ref.values())
    for k in ref:
        scale = max(ref[k].abs().max().item(), floor)
        assert (got[k] - ref[k]).abs().max().item() <= 1e-5 * scale, k


def test_packed_per_sample_losses_loss_and_gradients_equal_unpacked(tok, mixed):
    model = tiny_vlm("full", tok=tok).eval()  # eval: no dropout, the same function both ways
    padded = Collator(0)(mixed)
    collate = PackingCollator(0, 128)
    rows = collate.rows(mixed)
    assert len(rows) < len(mixed)  # really packed: some row holds several samples
    packed = collate(mixed)
    ref, ref_grads = _loss_and_grads(model, padded)
    got, got_grads = _loss_and_grads(model, packed)
    spans_pad = [(i, 0, len(it["input_ids"])) for i, it in enumerate(mixed)]
    spans_packed = {}
    for r, row in enumerate(rows):
        at = 0
        for i in row:
            spans_packed[i] = (r, at, len(mixed[i]["input_ids"]))
            at += len(mixed[i]["input_ids"])
    want = _per_sample_losses(ref.logits.detach(), padded["labels"], spans_pad)
    have = _per_sample_losses(got.logits.detach(), packed["labels"], [spans_packed[i] for i in range(len(mixed))])
    assert have == pytest.approx(want, rel=1e-5)
    assert got.loss.item() == pytest.approx(ref.loss.item(), rel=1e-5)
    _assert_grads_equal(got_grads, ref_grads)
    # the check can fail: without isolation (a plain causal mask over the row, nanoVLM's way) the later
    # samples of a row see the earlier ones and their losses move far beyond 1e-5
    leaky = {k: v for k, v in packed.items() if k not in ("packed", "sample_ids", "position_ids")}
    seen = _per_sample_losses(model(**leaky).logits.detach(), packed["labels"],
                              [spans_packed[i] for i in range(len(mixed))])
    assert seen != pytest.approx(want, rel=1e-5)


@pytest.mark.parametrize("stage,lora", [("align", False), ("finetune", False), ("finetune", True)])
def test_every_stage_and_lora_train_the_same_packed(tok, mixed, stage, lora):
    model = tiny_vlm(stage, lora=lora, tok=tok).eval()
    ref, ref_grads = _loss_and_grads(model, Collator(0)(mixed))
    got, got_grads = _loss_and_grads(model, PackingCollator(0, 128)(mixed))
    assert got.loss.item() == pytest.approx(ref.loss.item(), rel=1e-5)
    _assert_grads_equal(got_grads, ref_grads)
    if lora:
        assert any("lora_" in k for k in got_grads)
    if stage == "align":
        assert all(k.startswith("projector.") for k in got_grads)


def CFG():
    # lr 1e-3: the runs compared group their samples differently (packed rows, ranks), so they round
    # differently; the default 3e-2 amplifies that to 4e-4 within 8 steps, 1e-3 keeps it near 1e-6
    return make_cfg(lr=1e-3)


def _steps(run_dir: Path) -> list[dict]:
    return [r for r in read_metrics(run_dir / "metrics.jsonl") if "event" not in r]


@pytest.fixture(scope="module")
def packed_run(tmp_path_factory):
    d = tmp_path_factory.mktemp("packed")
    return d, run_packed(d, CFG())


def test_a_packed_run_counts_tokens_and_slots_and_equals_the_padded_run(tmp_path, packed_run):
    from openmind_core.training.summary import summary_line

    packed_dir, packed = packed_run
    padded = run_packed(tmp_path, CFG(), packed=False)
    a, b = _steps(packed_dir), _steps(tmp_path)
    assert [r["step"] for r in a] == [r["step"] for r in b] == list(range(1, 9))
    assert [r["tokens"] for r in a] == [r["tokens"] for r in b]  # the same samples, the same real tokens
    assert all(r["slots"] >= r["tokens"] > 0 for r in a + b)
    assert sum(r["slots"] for r in a) < sum(r["slots"] for r in b)  # less padding packed
    assert a[0]["loss"] == pytest.approx(b[0]["loss"], rel=1e-6)  # the same objective
    assert [r["loss"] for r in a] == pytest.approx([r["loss"] for r in b], rel=1e-5)
    for res, steps in ((packed, a), (padded, b)):
        assert res.tokens == sum(r["tokens"] for r in steps) and res.slots == sum(r["slots"] for r in steps)
        assert res.pad_fraction == pytest.approx(1 - res.tokens / res.slots)
    assert packed.pad_fraction < padded.pad_fraction
    assert f"pad fraction {packed.pad_fraction:.1%}" in summary_line(packed)


def test_packed_dataset_mix_has_text_only_and_multi_image_rows(tok):
    ds = PackDataset(tiny_vlm("align", tok=tok), 40)
    kinds = [0 if it["pixel_values"] is None else (1 if it["pixel_values"].dim() == 3 else len(it["pixel_values"]))
             for it in (ds[i] for i in range(len(ds)))]
    assert kinds.count(0) >= 4 and kinds.count(2) >= 6 and kinds.count(1) >= 20


@pytest.mark.slow
def test_a_packed_run_resumes_bit_exact_after_kill_9(tmp_path, packed_run):
    ref_dir, ref = packed_run
    env = {**os.environ, "OPENMIND_TEST_KILL_AT": "micro:3,step:5", "OPENMIND_TEST_KILL_MARKERS": str(tmp_path / "_k"),
           "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(HELPER.parent), str(HELPER.parent.parent)])}
    codes = []
    for i in range(4):
        p = subprocess.run([sys.executable, str(HELPER), "--run-dir", str(tmp_path), "--model", "packed", "--dump",
                            str(tmp_path / "result.json"), "--set", f"num_workers={2 * (i % 2)}", "--set", "lr=0.001"],
                           env=env, capture_output=True, text=True, timeout=180)
        codes.append(p.returncode)
        if p.returncode == 0:
            break
        assert p.returncode == -9, p.stderr[-3000:]
    assert codes == [-9, -9, 0], codes
    assert_same_state(ref_dir, tmp_path)
    assert [r["loss"] for r in _steps(tmp_path)] == [r["loss"] for r in _steps(ref_dir)]
    assert json.loads((tmp_path / "result.json").read_text())["resumed_from_step"] == 4


@pytest.mark.slow
def test_ddp_with_packing_keeps_ranks_in_step_and_equals_one_process(tmp_path, packed_run):
    from openmind_core.training import run_torchrun

    ref_dir, _ = packed_run  # one process: micro-batches of 4, 2 per step
    lines: list[str] = []
    pp = os.pathsep.join([str(HELPER.parent), str(HELPER.parent.parent), os.environ.get("PYTHONPATH", "")])
    rc = run_torchrun("trainer_helpers", ["--run-dir", str(tmp_path), "--model", "packed", "--set",
                                          "micro_batch_size=4", "--set", "grad_accum=1", "--set", "lr=0.001"],
                      nproc=2, on_line=lines.append, timeout_s=240, env={"PYTHONPATH": pp, "OMP_NUM_THREADS": "1"})
    assert rc == 0, "\n".join(lines[-40:])
    ref, got = _steps(ref_dir), _steps(tmp_path)
    # every step ran on both ranks (a rank with another number of micro-batches would hang the collectives)
    assert [r["step"] for r in got] == [r["step"] for r in ref] == list(range(1, 9))
    assert [r["tokens"] for r in got] == [r["tokens"] for r in ref]  # both ranks' tokens, summed
    assert [r["loss"] for r in got] == pytest.approx([r["loss"] for r in ref], rel=1e-5)


@pytest.mark.slow
def test_the_app_trains_packed_from_the_config(tmp_path):
    """``train.packing`` through the stages: the smoke test and training build the packing collator; the
    run reloads equal and reports its pad fraction; a pack_length without room for text is refused."""
    from openmind_core.app.smoke import run_smoke
    from openmind_core.app.tokenizer import load_prepared, prepare_tokenizer
    from openmind_core.app.train import PipelineError, build_datasets, build_model, train_from_config
    from openmind_core.data import convert, download
    from schemas import load_config

    over = ["data.synthetic.num_captions=16", "data.synthetic.num_vqa=8", "train.micro_batch_size=8",
            "train.max_steps=2", "train.wandb.mode=disabled", "train.packing=true"]
    cfg = load_config(overrides=over)
    cur = convert(download(cfg.data, tmp_path), cfg.data, tmp_path)
    prepared = prepare_tokenizer(cfg, cur, tmp_path / "run")
    tok_dir = prepared.path
    assert run_smoke(cfg, cur, prepared).passed
    model = build_model(cfg, load_prepared(prepared))
    _, _, collate = build_datasets(cfg, cur, model)
    assert isinstance(collate, PackingCollator) and collate.pack_length == 1 + 16 + cfg.model.max_length
    result = train_from_config(cfg, cur, tmp_path / "run", tok_dir)
    assert result.steps == 2 and result.reload_equal
    assert 0 <= result.pad_fraction < 1 and result.tokens < result.slots
    with pytest.raises(PipelineError, match="train.pack_length 17 leaves no room for text"):
        build_datasets(load_config(overrides=over + ["train.pack_length=17"]), cur, model)


def test_the_memory_estimate_counts_packed_rows():
    from openmind_core.model import estimate_memory
    from schemas.config import FULL_CONFIG
    from schemas.loading import load_config

    padded = estimate_memory(load_config(FULL_CONFIG))
    same = estimate_memory(load_config(FULL_CONFIG, ["train.packing=true"]))  # default row: the longest sample
    assert same.train_peak_bytes == padded.train_peak_bytes and same.seq_len == padded.seq_len
    double = estimate_memory(load_config(FULL_CONFIG, ["train.packing=true", f"train.pack_length={2 * padded.seq_len}"]))
    assert double.seq_len == 2 * padded.seq_len
    assert double.logits == 2 * padded.logits and double.activations > padded.activations
    assert double.weights == padded.weights and double.optimizer_state == padded.optimizer_state
    assert f"packed rows of {double.seq_len} tokens" in double.format_table()


def test_the_report_gives_the_pad_fraction():
    from test_criteria import _report, _train

    from openmind_core.app.report import checklist_markdown

    md = checklist_markdown(_report(_train(tokens=9_000, slots=10_000, pad_fraction=0.1, tokens_per_second=1234.0)))
    assert "Trained on 9,000 real tokens in 10,000 computed positions: pad fraction 10.0%, 1,234 tokens/s." in md
    assert "pad fraction" not in checklist_markdown(_report(_train()))  # a result without steps says nothing


def test_the_flash_attn_path_flattens_real_tokens_with_transformers_cu_seqlens():
    """flash-attn cannot run here; its inputs can: one row of the real tokens, and the cu_seqlens /
    max lengths transformers' own ``prepare_fa_kwargs_from_position_ids`` derives from those positions."""
    from transformers.modeling_flash_attention_utils import prepare_fa_kwargs_from_position_ids

    from openmind_core.model.packed import packed_lm_inputs

    img = [torch.zeros(3, 4, 4)]
    items = [_item("a", [7, 4, 4, 8], [-100, -100, -100, 8], img[0]), _item("b", [9] * 7, [-100] + [9] * 6),
             _item("c", [5, 6, 1, 2, 3, 4], [5, 6, 1, 2, 3, 4]), _item("d", [3, 3], [3, 3])]
    batch = PackingCollator(0, 10)(items)
    embeds = batch["input_ids"].float().unsqueeze(-1).expand(-1, -1, 2)
    out = packed_lm_inputs("flash_attention_2", embeds, batch["attention_mask"], batch["position_ids"], batch["labels"])
    keep = batch["attention_mask"].bool()
    assert out["inputs_embeds"].shape == (1, 19, 2) and out["attention_mask"] is None  # 19 real tokens, no padding
    assert torch.equal(out["labels"][0], batch["labels"][keep])
    (cu_q, cu_k), (max_q, max_k) = prepare_fa_kwargs_from_position_ids(out["position_ids"])
    assert out["cu_seq_lens_q"].tolist() == cu_q.tolist() == [0, 4, 10, 17, 19] and out["cu_seq_lens_k"] is out["cu_seq_lens_q"]
    assert out["max_length_q"] == out["max_length_k"] == int(max_q) == 7
    sdpa = packed_lm_inputs("sdpa", embeds, batch["attention_mask"], batch["position_ids"], batch["labels"])
    assert sdpa["attention_mask"] is None and sdpa["inputs_embeds"] is embeds  # transformers masks by position ids
