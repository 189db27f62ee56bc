"""The ``openmind`` command line.

    openmind run [--config FILE] [--set key=value ...] [--run-name NAME] [--lake DIR]
                 [--task-runner thread|dask] [--dask-address tcp://HOST:8786]
    openmind data prepare [--config FILE] [--set ...] [--lake DIR]
    openmind data inspect [--config FILE] [--set ...] [--lake DIR] [-n 3]
    openmind estimate-memory [--config FILE] [--set ...] [--budget-gb 40]
    openmind config [--config FILE] [--set ...]
    openmind export RUN_DIR --merge OUT   (LoRA adapters merged: one self-contained HF directory)
    openmind eval PATH [--jsonl FILE | --hf NAME [--split S]] [--kind vqa|caption] [--set ...] [--out FILE]

Everything a run needs is checked before Prefect starts (config, lake, input files, whether the run
may resume): a problem is one line on stderr and exit code 2, with nothing written.  A failure during
the run is one line and exit 1 (the traceback goes to ``<lake>/logs/`` and the Prefect UI; ``--debug``
shows it).  Ctrl-C or SIGTERM stops training at the next step boundary and prints the resume command:
exit 130 (SIGINT) or 143 (SIGTERM).
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
    p.add_argument("--debug", action="store_true", help="show Prefect's error records and tracebacks on the terminal")


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
    p.add_argument("--task-runner", choices=("thread", "dask"), default="thread",
                   help="where the per-file conversion tasks run: threads (default) or Dask (a LocalCluster, "
                        "or --dask-address); needs the dask extra")
    p.add_argument("--dask-address", metavar="ADDR",
                   help="an existing Dask scheduler, e.g. tcp://10.0.0.5:8786 (implies --task-runner dask)")
    d = sub.add_parser("data", help="data lake commands").add_subparsers(dest="data_command", required=True)
    _common(d.add_parser("prepare", help="run download + JSONL->Parquet conversion only"))
    i = d.add_parser("inspect", help="show decoded samples and one collated batch (the guide's test_data_pipeline)")
    _common(i)
    i.add_argument("-n", type=_positive, default=3, help="samples to show (at least 1)")
    m = sub.add_parser("estimate-memory", help="predict peak GPU memory for training and inference")
    _common(m, lake=False)
    m.add_argument("--budget-gb", type=float, help="memory budget (default: memory.budget_gb, 40)")
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
        raise UsageError(f"lake {lake} is not writable: {_why_unwritable(probe, e)}") from None


def _why_unwritable(probe: Path, e: OSError) -> str:
    """The real reason files cannot be created in ``probe`` (a virtual file system says "No such file")."""
    import errno

    if e.errno in (errno.EACCES, errno.EPERM):
        return f"permission denied to create files in {probe}"
    if e.errno == errno.EROFS:
        return f"{probe} is on a read-only file system"
    if e.errno == errno.ENOSPC:
        return f"no space left on the device of {probe}"
    fstype = _fs_type(probe)
    if e.errno == errno.ENOENT or fstype in ("proc", "sysfs", "cgroup", "cgroup2", "devpts", "debugfs"):
        return f"{probe} does not accept new files" + (f" (a {fstype} file system)" if fstype else "")
    return f"{probe}: {e.strerror or e}"


def _fs_type(path: Path) -> str | None:
    """The file system type of the mount holding ``path`` (Linux: /proc/self/mounts), or None."""
    try:
        mounts = [line.split()[1:3] for line in Path("/proc/self/mounts").read_text().splitlines()]
    except OSError:
        return None
    best = max((m for m in mounts if len(m) == 2 and (str(path) + "/").startswith(m[0].rstrip("/") + "/")),
               key=lambda m: len(m[0]), default=None)
    return best[1] if best else None


def check_inputs(cfg) -> None:
    from tasks.inputs import InputError, check_input_files

    try:
        check_input_files(cfg.data)  # missing, a directory where a file belongs, unreadable
    except InputError as e:
        raise UsageError(str(e)) from None
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
    from flows import console
    from flows.lake import check_resumable, default_run_name, resolve_lake
    from schemas import ConfigError

    cfg = load(args)
    lake = resolve_lake(args.lake)
    check_lake(lake)
    check_inputs(cfg)
    check_model_parts(cfg)
    name = args.run_name or cfg.run.name or default_run_name()
    try:  # model, data settings, input stamps, batch: refused before anything runs or is written
        check_resumable(cfg, lake / "runs" / name)
    except ConfigError as e:
        raise UsageError(str(e)) from None
    console.set_resume_hint(console.resume_command(args.argv, name), lake / "runs" / name)
    runner = _task_runner(args)
    from flows.week1 import week1  # imports prefect: only after the checks

    if runner is not None:
        week1 = week1.with_options(task_runner=runner)

    console.begin(lake, "run", args.debug)
    state = week1(config_path=args.config, overrides=args.overrides, run_name=name, lake=str(lake), return_state=True)
    report = state.result()
    print(summary(report))
    print(f"  prefect    flow run {name!r} (week1){console.flow_run_url(state)}")
    return 0 if report.passed else 1


def _task_runner(args):
    """``--task-runner`` / ``--dask-address`` as a Prefect task runner (None: the flow's default threads)."""
    if args.task_runner == "thread" and not args.dask_address:
        return None
    from flows.runners import task_runner

    try:  # an address means Dask
        return task_runner("dask" if args.dask_address else args.task_runner, args.dask_address)
    except (ImportError, ValueError) as e:
        raise UsageError(str(e)) from None


def raw_rows(raw) -> str:
    """'1000 caption + 500 VQA rows', with conversation rows when there are any."""
    conv = raw.conversation_rows
    return (f"{raw.caption_rows} caption + {raw.vqa_rows} VQA" + (f" + {conv} conversation" if conv else "")
            + " rows")


def normalised_note(cur) -> str:
    """'; normalised 12 CRLF line ends, 1 BOM' when a Windows-written file was read, else ''."""
    text = cur.normalised_text()
    return f"; normalised {text}" if text else ""


def training_events(t) -> list[str]:
    """The trainer's rollbacks and resume-time settings changes, one line each (nothing on a clean run)."""
    lines = []
    for e in t.rollbacks:
        lines.append(f"rollback at step {e.step} -> step {e.restored_step}: {e.reason} "
                     f"({e.skipped_samples} samples skipped, LR x {e.lr_scale:.3g})")
    for c in t.settings_changes:
        lines.append(f"resumed with {c['key']} {c['old']!r} -> {c['new']!r} at step {c['step']}")
    if t.skipped_steps:
        lines.append(f"{t.skipped_steps} optimizer step(s) skipped (reasons in metrics.jsonl)")
    return lines


def summary(report) -> str:
    t, inf, cur = report.training, report.inference, report.curated
    from openmind_core.evaluation import summary_lines
    from openmind_core.report import MARKS, verdict
    from openmind_core.report import fmt_float as fmt
    lines = [
        "",
        f"OpenMind week1 — run {report.run_name}: {verdict(report)}",
        f"  download   {raw_rows(report.raw)} ({report.raw.source})"
        f"{' [reused]' if report.raw.reused else ''}",
        f"  convert    {cur.rows_kept} kept, {cur.rows_quarantined} quarantined; splits {cur.splits}"
        + normalised_note(cur),
        f"  smoke      {sum(c.passed for c in report.smoke.checks)}/{len(report.smoke.checks)} checks passed; "
        f"{report.smoke.total_params:,} params ({report.smoke.trainable_params:,} trainable)",
        f"  train      {t.steps} steps, {t.epochs_completed} epoch(s): loss {fmt(t.first_loss)} -> {fmt(t.last_loss)}, "
        f"val {fmt(t.first_val_loss)} -> {fmt(t.final_val_loss)}"
        + (f" [resumed from step {t.resumed_from_step}]" if t.resumed_from_step else ""),
        *(f"             {part}" for part in training_events(t)),
        *(f"  {'inference' if i == 0 else '':<9}  {line}" for i, line in enumerate(summary_lines(inf))),
    ]
    prompts = [p for p in inf.predictions if p.kind == "prompt"][:1]
    for p in prompts:
        lines.append(f"             {p.prompt} -> {p.prediction!r}")
    lines += [f"  {'criteria' if i == 0 else '':<9}  [{MARKS[c.status]}] {c.name}" for i, c in enumerate(report.criteria)]
    if report.advice:
        lines.append(f"  advice     {report.advice}")
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
    from flows import console
    from flows.data import prepare_data

    console.begin(lake, "data-prepare", args.debug)
    cur = prepare_data(config_path=args.config, overrides=args.overrides, lake=str(lake))
    print(f"curated {cur.version}: {cur.rows_in} rows in, {cur.rows_kept} kept, {cur.rows_quarantined} quarantined"
          + normalised_note(cur))
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
    if not est.fits:
        print(f"openmind: training does not fit the {est.budget_bytes / 2**30:.1f} GiB budget (see above)", file=sys.stderr)
        return 1
    return 0


def cmd_export(args) -> int:
    src, out = Path(args.run_dir), Path(args.merge)
    if not ((src / "final" / "config.json").is_file() or (src / "config.json").is_file()):
        raise UsageError(f"{src}: neither a run directory with final/ nor a saved model directory")
    if out.exists() and any(out.iterdir()):
        raise UsageError(f"--merge {out}: exists and is not empty")
    from openmind_core.app.export import export_merged

    print(f"merged model written to {export_merged(src, out)}")
    return 0


def cmd_eval(args) -> int:
    from openmind_core.evaluation.run import EvalError, resolve_model_path

    try:
        model_dir, run_dir = resolve_model_path(args.path)
    except EvalError as e:
        raise UsageError(str(e)) from None
    if run_dir is None and not (args.jsonl or args.hf):
        raise UsageError(f"{args.path}: not inside a run directory, so there is no lake validation split; "
                         "pass --jsonl FILE or --hf NAME")
    if args.jsonl and not Path(args.jsonl).expanduser().is_file():
        raise UsageError(f"--jsonl {args.jsonl}: file not found")
    bad = [c for c in args.columns if "=" not in c]
    if bad:
        raise UsageError(f"--column {bad[0]!r}: expected FIELD=COLUMN")
    config = args.config or (str(run_dir / "config.yaml") if run_dir is not None else None)
    args.config = config
    load(args)  # config errors before Prefect starts
    from flows.eval import evaluate
    from openmind_core.evaluation import summary_lines

    report = evaluate(path=args.path, config_path=config, overrides=args.overrides, lake=args.lake, jsonl=args.jsonl,
                      hf=args.hf, kind=args.kind, split=args.split,
                      columns=dict(c.split("=", 1) for c in args.columns) or None, out=args.out)
    print(f"openmind eval — {report.model_dir} on {report.data}")
    for line in summary_lines(report):
        print(f"  {line}")
    print(f"  report     {Path(args.out) if args.out else Path(args.path) / 'eval.json'}")
    return 0 if report.scored else 1


def cmd_config(args) -> int:
    print(load(args).to_yaml(), end="")
    return 0


COMMANDS = {
    "run": cmd_run,
    "estimate-memory": cmd_estimate_memory,
    "config": cmd_config,
    "export": cmd_export,
    "eval": cmd_eval,
    ("data", "prepare"): cmd_data_prepare,
    ("data", "inspect"): cmd_data_inspect,
}


def main(argv: list[str] | None = None) -> int:
    """The ``openmind`` command.  Called with ``argv`` (a test, a script): returns the exit code.  As the
    command itself (no ``argv``) it exits as soon as everything is flushed (``console.exit_now``)."""
    from flows.console import exit_now

    code = _main(argv)
    if argv is None:
        exit_now(code)
    return code


def _main(argv: list[str] | None) -> int:
    from flows.console import quiet_environment

    quiet_environment()  # telemetry, wandb's console output: before prefect or wandb load
    import tasks  # noqa: F401  (Prefect environment defaults)

    args = build_parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    key = (args.command, args.data_command) if args.command == "data" else args.command
    try:
        return COMMANDS[key](args)
    except UsageError as e:
        print(f"openmind: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except (Exception, KeyboardInterrupt) as e:  # a failed stage or a stop: one line (flows/console.py)
        from flows.console import fail

        return fail(e, getattr(args, "debug", False))
    except BaseException as e:  # Prefect's TerminationSignal (SIGTERM while its handler is in place)
        if type(e).__name__ != "TerminationSignal":
            raise
        from flows.console import fail

        return fail(e, getattr(args, "debug", False))


if __name__ == "__main__":
    sys.exit(main())
