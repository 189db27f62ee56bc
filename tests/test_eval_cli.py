"""``openmind eval`` and the evaluation code path it shares with the inference task.

One untrained tiny model is saved as a run's ``final/`` beside a generated lake (no training: the
scores are not the point here, the plumbing is).  Checked: the lake's validation split, a JSONL
file, a local HF data set, 10-answer VQA rows scored with the consensus formula, eval.json, the
Prefect artifact, and clear usage errors.
"""

from __future__ import annotations

import json

import pytest

from schemas import InferenceReport, load_config

TINY = ["data.synthetic.num_captions=24", "data.synthetic.num_vqa=24", "inference.max_samples=8",
        "inference.max_new_tokens=3", "inference.extra_prompts=[]"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """(lake, run_dir, curated): a run directory with config.yaml, report-less, and final/ saved."""
    from openmind_core.data import convert, download
    from openmind_core.app.tokenizer import load_prepared, prepare_tokenizer
    from openmind_core.app.train import build_model

    lake = tmp_path_factory.mktemp("lake")
    cfg = load_config(overrides=TINY)
    cur = convert(download(cfg.data, lake), cfg.data, lake)
    run_dir = lake / "runs" / "r1"
    run_dir.mkdir(parents=True)
    (run_dir / "config.yaml").write_text(cfg.to_yaml())
    tok = load_prepared(prepare_tokenizer(cfg, cur, run_dir))
    build_model(cfg, tok).save_pretrained(run_dir / "final")
    return lake, run_dir, cur


def _rows_with_images(cur, kind):
    from openmind_core.data import read_rows

    return [r for r in read_rows(cur, split=None, with_images=True) if r["kind"] == kind]


def test_eval_on_the_lake_validation_split_writes_eval_json(run):
    from openmind_core.evaluation import evaluate_path

    lake, run_dir, cur = run
    cfg = load_config(run_dir / "config.yaml")
    report, written = evaluate_path(run_dir, cfg.inference)  # no report.json: the lake is found from config.yaml
    assert written == run_dir / "eval.json" and written.is_file()
    again = InferenceReport.model_validate_json(written.read_text())
    assert again == report
    assert report.data.startswith(f"lake {cur.root}") and "validation" in report.data
    assert report.chance_from == "the lake's training split"
    val = [r for r in _rows_with_images(cur, "vqa") if r["split"] == "validation"]
    assert report.vqa_count == min(8, len(val)) > 0
    assert report.vqa_method.startswith("normalised exact match (one answer)")  # old lakes: one answer per row
    assert 0.0 <= report.vqa_accuracy <= 1.0 and report.vqa_chance is not None and report.vqa_random is not None
    assert report.caption_count > 0 and report.caption_cider is not None and report.caption_bleu4 is not None
    assert report.caption_chance_cider is not None and "not PTB-tokenised" in report.caption_tokenizer
    assert report.scored == report.vqa_count + report.caption_count
    assert all(p.score is not None for p in report.predictions if p.kind in ("vqa", "caption"))


def test_ten_answer_rows_use_the_consensus_formula(run):
    from openmind_core.evaluation import evaluate_model
    from openmind_core.evaluation.run import load_model

    _, run_dir, cur = run
    rows = _rows_with_images(cur, "vqa")[:4]
    model = load_model(run_dir / "final")
    cfg = load_config(overrides=TINY).inference
    first = evaluate_model(model, rows, cfg, model_dir="m")
    preds = [p.prediction for p in first.predictions if p.kind == "vqa"]
    # ten human answers: the model's own answer given by 2 of them -> 0.6 (official worked value)
    ten = [dict(r, answers=[pred, pred] + ["zebra"] * 8) for r, pred in zip(rows, preds)]
    report = evaluate_model(model, ten, cfg, chance_rows=rows, chance_from="train", model_dir="m")
    assert report.vqa_method == "VQAv2 10-answer consensus on 4"
    assert [p.method for p in report.predictions if p.kind == "vqa"] == ["vqav2"] * 4
    assert report.vqa_accuracy == pytest.approx(0.6)


def test_conversation_rows_are_scored_on_their_last_answer(run):
    """A conversation row's last assistant turn is answered (the turns before it are the prompt) and
    scored with CIDEr-D / BLEU-4 against it; a reasoning trace is left out on both sides."""
    from openmind_core.evaluation import evaluate_model
    from openmind_core.evaluation.run import load_model, summary_lines

    _, run_dir, cur = run
    vqa = _rows_with_images(cur, "vqa")[:6]
    convs = [dict(r, kind="conversation", sample_id=f"c{i}", conversation=[
        {"role": "user", "content": "<image>\nWhat is in the image?"}, {"role": "assistant", "content": "a shape"},
        {"role": "user", "content": r["question"]},
        {"role": "assistant", "content": ("<think>\nlook at it\n</think>\n\n" if i == 0 else "") + r["answer"]}])
        for i, r in enumerate(vqa)]
    convs.append(dict(convs[1], sample_id="text-only", image=None))
    convs.append(dict(convs[1], sample_id="no-answer", conversation=[{"role": "user", "content": "hi"}]))
    cfg = load_config(overrides=TINY).inference
    report = evaluate_model(load_model(run_dir / "final"), convs, cfg, chance_rows=convs, model_dir="m")
    preds = {p.sample_id: p for p in report.predictions if p.kind == "conversation"}
    assert report.conversation_count == 7 and set(preds) == {f"c{i}" for i in range(6)} | {"text-only"}
    assert preds["c0"].reference == vqa[0]["answer"] and preds["c0"].prompt == vqa[0]["question"]
    assert report.conversation_cider is not None and report.conversation_bleu4 is not None
    assert report.conversation_chance_cider is not None and all(p.score is not None for p in preds.values())
    assert "1 conversation(s) without a user turn" in report.conversation_note
    assert report.scored == 7 and report.thinking  # a training answer holds a trace: the model may think
    assert any(line.startswith("conversations (last answer) CIDEr-D") for line in summary_lines(report))


def test_eval_cli_on_a_jsonl_file_under_prefect(run, prefect_server, tmp_path, capsys):
    from prefect.client.orchestration import get_client

    from flows.cli import main

    lake, run_dir, cur = run
    images = tmp_path / "img"
    images.mkdir()
    with open(tmp_path / "eval.jsonl", "w") as f:
        for i, r in enumerate(_rows_with_images(cur, "vqa")[:5]):
            (images / f"{i}.png").write_bytes(r["image"])
            f.write(json.dumps({"image": f"img/{i}.png", "question": r["question"], "answer": r["answer"]}) + "\n")
    out = tmp_path / "out" / "eval.json"
    from flows import console

    begun = []
    real_begin = console.begin
    console.begin = lambda lake, command, debug=False: (begun.append(command), real_begin(lake, command, debug))
    try:
        rc = main(["eval", str(run_dir / "final"), "--jsonl", str(tmp_path / "eval.jsonl"), "--out", str(out)])
    finally:
        console.begin = real_begin
    text = capsys.readouterr().out
    assert rc == 0, text
    assert begun == ["eval"]  # the start-up every command has: quiet terminal, log file, own temporary server
    assert "VQA accuracy" in text and "on 5 questions" in text
    report = InferenceReport.model_validate_json(out.read_text())
    assert report.data.startswith(f"jsonl {tmp_path / 'eval.jsonl'}") and report.vqa_count == 5
    assert report.chance_from.startswith("training split of")  # final/ sits in a run: its training lake
    with get_client(sync_client=True) as client:
        arts = client.read_artifacts()
        names = [r.name for r in client.read_flow_runs()]
    assert any(a.key == "openmind-eval" and "VQA accuracy" in (a.data or "") for a in arts)
    assert "eval-r1-final-eval" in names, names  # named after what it evaluates, on which data


def test_eval_on_a_local_hf_data_set(run, tmp_path):
    import datasets

    from openmind_core.evaluation import evaluate_path

    lake, run_dir, cur = run
    caps = _rows_with_images(cur, "caption")[:4]
    ds = datasets.Dataset.from_dict({"img": [{"bytes": r["image"], "path": None} for r in caps],
                                     "sentence": [r["text"] for r in caps]},
                                    features=datasets.Features({"img": datasets.Image(), "sentence": datasets.Value("string")}))
    ds.to_parquet(str(tmp_path / "hf" / "validation.parquet"))
    cfg = load_config(overrides=TINY).inference
    report, written = evaluate_path(run_dir, cfg, hf=str(tmp_path / "hf"), kind="caption", split="validation",
                                    columns={"image": "img", "text": "sentence"}, out=tmp_path / "e.json")
    assert report.caption_count == 4 and report.vqa_count == 0 and report.caption_cider is not None
    assert report.data == f"hf {tmp_path / 'hf'} split validation (caption)" and written.is_file()


def test_eval_usage_errors(run, tmp_path, capsys):
    from flows.cli import main

    _, run_dir, _ = run
    assert main(["eval", str(tmp_path)]) == 2
    assert "neither a run directory" in capsys.readouterr().err
    assert main(["eval", str(run_dir / "final"), "--jsonl", str(tmp_path / "nope.jsonl")]) == 2
    assert "file not found" in capsys.readouterr().err
