"""The ``openmind`` command line's parser: its commands, options and help texts (argparse)."""

from __future__ import annotations

import argparse


def _common(p: argparse.ArgumentParser, lake: bool = True) -> None:
    p.add_argument("--config", metavar="FILE", help="YAML config (default: the embedded tiny config)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set train.epochs=2 (repeatable)")
    if lake:
        p.add_argument("--lake", metavar="DIR", help="data lake directory (default: $OPENMIND_LAKE or ./data_lake)")
    p.add_argument("--debug", action="store_true", help="show Prefect's error records and tracebacks on the terminal")


def _runner(p: argparse.ArgumentParser) -> None:
    p.add_argument("--task-runner", choices=("thread", "dask"), default="thread",
                   help="where the per-file conversion tasks run: threads (default) or Dask (a LocalCluster, "
                        "or --dask-address); needs the dask extra")
    p.add_argument("--dask-address", metavar="ADDR",
                   help="an existing Dask scheduler, e.g. tcp://10.0.0.5:8786 (implies --task-runner dask)")


def _positive(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {n}")
    return n


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="openmind", description="OpenMind: the Week-1 VLM pipeline on Prefect.")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("run", help="run the Week-1 flow (download, convert, smoke, train, inference)")
    _common(p)
    p.add_argument("--run-name", metavar="NAME", help="run directory name; reuse it to resume")
    _runner(p)
    d = sub.add_parser("data", help="data lake commands").add_subparsers(dest="data_command", required=True)
    prep = d.add_parser("prepare", help="run download + JSONL->Parquet conversion only")
    _common(prep)
    _runner(prep)
    i = d.add_parser("inspect", help="show decoded samples and one collated batch (the guide's test_data_pipeline)")
    _common(i)
    i.add_argument("-n", type=_positive, default=3, help="samples to show (at least 1)")
    m = sub.add_parser("estimate-memory", help="predict peak GPU memory for training and inference")
    _common(m, lake=False)
    m.add_argument("--budget-gb", type=float, help="memory budget (default: memory.budget_gb, 40)")
    m.add_argument("--images-per-row", default="1", metavar="K",
                   help="images in the longest sample (default 1); 'max': data.max_images_per_row, the worst case")
    c = sub.add_parser("config", help="print the resolved config")
    _common(c, lake=False)
    e = sub.add_parser("export", help="write a run's final/ as one self-contained HF directory")
    e.add_argument("run_dir", metavar="RUN_DIR", help="a run directory (its final/) or a saved model directory")
    e.add_argument("--merge", metavar="OUT", required=True,
                   help="merge LoRA adapters into the LM and write the merged model here (loads without PEFT)")
    v = sub.add_parser("eval", help="score a run's final/ or best/: VQAv2 accuracy, CIDEr-D, BLEU-4; writes eval.json")
    _common(v)
    v.add_argument("path", metavar="PATH", help="a run directory (its final/), final/, best/ or a saved model directory")
    src = v.add_mutually_exclusive_group()
    src.add_argument("--jsonl", metavar="FILE", help="evaluate this JSONL (VQA or caption rows) instead of the lake's "
                     "validation split")
    src.add_argument("--hf", metavar="NAME", help="evaluate this Hugging Face data set (hub id or local directory)")
    v.add_argument("--split", default="validation", help="--hf split (default: validation)")
    v.add_argument("--kind", choices=["vqa", "caption"], help="row kind of --jsonl/--hf data (JSONL: detected; hf: the data set's preset, else caption)")
    v.add_argument("--column", dest="columns", action="append", default=[], metavar="FIELD=COLUMN",
                   help="--hf column mapping, e.g. --column text=caption (repeatable)")
    v.add_argument("--out", metavar="FILE", help="where to write the report (default: PATH/eval.json)")
    return parser
