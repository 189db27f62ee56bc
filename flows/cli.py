"""The ``openmind`` command line.

    openmind run [--config FILE] [--set key=value ...] [--run-name NAME] [--lake DIR]
    openmind data prepare [--config FILE] [--set ...] [--lake DIR]
    openmind data inspect [--config FILE] [--set ...] [--lake DIR] [-n 3]
    openmind estimate-memory [--config FILE] [--set ...] [--budget-gb 40]
    openmind config [--config FILE] [--set ...]
    openmind export RUN_DIR --merge OUT   (LoRA adapters merged: one self-contained HF directory)

Everything a run needs is checked before Prefect starts (config, lake, input files): a problem is
one line on stderr and exit code 2, with nothing written.  A failure during the run is exit 1.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

EXIT_USAGE = 2


class UsageError(Exception):
    """A problem found before anything ran: one line, exit code 2."""


def _common(p: argparse.ArgumentParser, lake: bool = True) -> None:
    p.add_argument("--config", metavar="FILE", help="YAML config (default: the embedded tiny config)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set train.epochs=2 (repeatable)")
    if lake:
        p.add_argument("--lake", metavar="DIR", help="data lake directory (default: $OPENMIND_LAKE or ./data_lake)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="openmind", description="OpenMind: the Week-1 VLM pipeline on Prefect.")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("run", help="run the Week-1 flow (download, convert, smoke, train, inference)")
    _common(p)
    p.add_argument("--run-name", metavar="NAME", help="run directory name; reuse it to resume")
    d = sub.add_parser("data", help="data lake commands").add_subparsers(dest="data_command", required=True)
    _common(d.add_parser("prepare", help="run download + JSONL->Parquet conversion only"))
    i = d.add_parser("inspect", help="show decoded samples and one collated batch (the guide's test_data_pipeline)")
    _common(i)
    i.add_argument("-n", type=int, default=3, help="samples to show")
    m = sub.add_parser("estimate-memory", help="predict peak GPU memory for training and inference")
    _common(m, lake=False)
    m.add_argument("--budget-gb", type=float, help="memory budget (default: memory.budget_gb, 40)")
    c = sub.add_parser("config", help="print the resolved config")
    _common(c, lake=False)
    e = sub.add_parser("export", help="write a run's final/ as one self-contained HF directory")
    e.add_argument("run_dir", metavar="RUN_DIR", help="a run directory (its final/) or a saved model directory")
    e.add_argument("--merge", metavar="OUT", required=True,
                   help="merge LoRA adapters into the LM and write the merged model here (loads without PEFT)")
    return parser


# --------------------------------------------------------------------------- pre-flight checks


def load(args):
    from schemas import ConfigError, load_config

    try:
        return load_config(args.config, args.overrides)
    except ConfigError as e:
        raise UsageError(str(e)) from None


def check_lake(lake: Path) -> None:
    """The lake must be a directory we can create files in: probed with a temporary file, removed at once."""
    if lake.exists() and not lake.is_dir():
        raise UsageError(f"lake {lake} exists and is not a directory")
    probe = lake
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        raise UsageError(f"lake {lake} cannot be created: {probe} is not a directory")
    try:
        fd, tmp = tempfile.mkstemp(dir=probe, prefix=".openmind-probe-")
        os.close(fd)
        os.unlink(tmp)
    except OSError as e:
        raise UsageError(f"lake {lake} is not writable ({probe}: {e.strerror or e})") from None


def check_inputs(cfg) -> None:
    for key, value in cfg.data.input_paths():
        if not Path(value).expanduser().exists():
            raise UsageError(f"{key}: input not found: {value}")
    init = cfg.model.init_from
    if init and not (Path(init).expanduser() / "model.safetensors").is_file():
        raise UsageError(f"model.init_from: {init} holds no model.safetensors (point it at an earlier run's final/)")


def check_model_parts(cfg) -> None:
    """A pretrained LM and its tokenizer must load and fit each other (imports transformers: only then)."""
    if not cfg.model.lm.name_or_path:
        return
    from openmind_core.model.language import preflight

    try:
        preflight(cfg.model)
    except (OSError, ValueError) as e:
        raise UsageError(f"model: {str(e).splitlines()[0]}") from None


# --------------------------------------------------------------------------- commands


def cmd_run(args) -> int:
    from flows.lake import check_resumable, resolve_lake
    from schemas import ConfigError

    cfg = load(args)
    lake = resolve_lake(args.lake)
    check_lake(lake)
    check_inputs(cfg)
    check_model_parts(cfg)
    if args.run_name or cfg.run.name:
        try:
            check_resumable(cfg, lake / "runs" / (args.run_name or cfg.run.name))
        except ConfigError as e:
            raise UsageError(str(e)) from None
    from flows.week1 import week1  # imports prefect: only after the checks

    report = week1(config_path=args.config, overrides=args.overrides, run_name=args.run_name, lake=str(lake))
    print(summary(report))
    return 0 if report.passed else 1


def summary(report) -> str:
    t, inf, cur = report.training, report.inference, report.curated
    acc = "n/a" if inf.vqa_accuracy is None else f"{inf.vqa_accuracy:.1%}"
    chance = "n/a" if inf.vqa_chance is None else f"{inf.vqa_chance:.1%}"
    f1 = "n/a" if inf.caption_score is None else f"{inf.caption_score:.3f}"
    from openmind_core.report import fmt_float as fmt
    lines = [
        "",
        f"OpenMind week1 — run {report.run_name}: {'all criteria met' if report.passed else 'SOME CRITERIA NOT MET'}",
        f"  download   {report.raw.caption_rows} caption + {report.raw.vqa_rows} VQA rows ({report.raw.source})"
        f"{' [reused]' if report.raw.reused else ''}",
        f"  convert    {cur.rows_kept} kept, {cur.rows_quarantined} quarantined; splits {cur.splits}",
        f"  smoke      {sum(c.passed for c in report.smoke.checks)}/{len(report.smoke.checks)} checks passed; "
        f"{report.smoke.total_params:,} params ({report.smoke.trainable_params:,} trainable)",
        f"  train      {t.steps} steps, {t.epochs_completed} epoch(s): loss {fmt(t.first_loss)} -> {fmt(t.last_loss)}, "
        f"val {fmt(t.first_val_loss)} -> {fmt(t.final_val_loss)}"
        + (f" [resumed from step {t.resumed_from_step}]" if t.resumed_from_step else ""),
        f"  inference  VQA accuracy {acc} (chance {chance}), caption F1 {f1}",
    ]
    prompts = [p for p in inf.predictions if p.kind == "prompt"][:1]
    for p in prompts:
        lines.append(f"             {p.prompt} -> {p.prediction!r}")
    lines.append("  criteria   " + ", ".join(f"{'✓' if c.passed else '✗'} {c.name}" for c in report.criteria))
    lines += [
        f"  run dir    {report.run_dir}",
        f"  report     {Path(report.run_dir) / 'report.json'}",
        f"  model      {t.final_dir} (best: {t.best_dir})",
        f"  lake       raw {report.raw.root}",
        f"             curated {cur.root}" + (f"; quarantine {cur.quarantine_path}" if cur.rows_quarantined else ""),
    ]
    return "\n".join(lines)


def cmd_data_prepare(args) -> int:
    from flows.lake import resolve_lake

    cfg = load(args)
    lake = resolve_lake(args.lake)
    check_lake(lake)
    check_inputs(cfg)
    from flows.data import prepare_data

    cur = prepare_data(config_path=args.config, overrides=args.overrides, lake=str(lake))
    print(f"curated {cur.version}: {cur.rows_in} rows in, {cur.rows_kept} kept, {cur.rows_quarantined} quarantined")
    for reason, n in sorted(cur.quarantine_by_reason.items()):
        print(f"  quarantined {n:>6}  {reason}")
    print(f"  splits {cur.splits}; kinds {cur.kinds}; {len(cur.shards)} shard(s)")
    print(f"  curated    {cur.root}")
    if cur.quarantine_path:
        print(f"  quarantine {cur.quarantine_path}")
    return 0 if cur.rows_kept > 0 else 1


def cmd_data_inspect(args) -> int:
    from flows.lake import resolve_lake

    cfg = load(args)
    lake = resolve_lake(args.lake)
    check_lake(lake)
    check_inputs(cfg)
    from openmind_core.data import convert, download, inspect_samples
    from openmind_core.model import build_tokenizer
    from openmind_core.pipeline import tokenizer_corpus

    raw = download(cfg.data, lake, seed=cfg.run.seed)
    cur = convert(raw, cfg.data, lake)
    corpus = tokenizer_corpus(cur) if cfg.model.tokenizer.name_or_path is None else None
    tok = build_tokenizer(cfg.model.tokenizer, corpus)
    print(inspect_samples(cur, tok, cfg.model, n=args.n))
    return 0


def cmd_estimate_memory(args) -> int:
    cfg = load(args)
    from openmind_core.model import estimate_memory

    est = estimate_memory(cfg, budget_gb=args.budget_gb)
    print(est.format_table())
    return 0


def cmd_export(args) -> int:
    src, out = Path(args.run_dir), Path(args.merge)
    if not ((src / "final" / "config.json").is_file() or (src / "config.json").is_file()):
        raise UsageError(f"{src}: neither a run directory with final/ nor a saved model directory")
    if out.exists() and any(out.iterdir()):
        raise UsageError(f"--merge {out}: exists and is not empty")
    from openmind_core.model.lora import export_merged

    print(f"merged model written to {export_merged(src, out)}")
    return 0


def cmd_config(args) -> int:
    print(load(args).to_yaml(), end="")
    return 0


COMMANDS = {
    "run": cmd_run,
    "estimate-memory": cmd_estimate_memory,
    "config": cmd_config,
    "export": cmd_export,
    ("data", "prepare"): cmd_data_prepare,
    ("data", "inspect"): cmd_data_inspect,
}


def main(argv: list[str] | None = None) -> int:
    import tasks  # noqa: F401  (Prefect environment defaults)

    args = build_parser().parse_args(argv)
    key = (args.command, args.data_command) if args.command == "data" else args.command
    try:
        return COMMANDS[key](args)
    except UsageError as e:
        print(f"openmind: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("openmind: interrupted; rerun with the same --run-name to resume", file=sys.stderr)
        return 130
    except Exception as e:  # a failed stage: say which and why, in one line
        msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
        print(f"openmind: error: {type(e).__name__}: {msg}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
