"""The ``openmind`` commands: each takes the parsed arguments, runs its pre-flight, then its flow; returns the exit code.

Prefect, transformers and torch are imported inside the commands, after the pre-flight checks, so a
refused command costs a fraction of a second (an import in a function here is for start-up cost).
"""

from __future__ import annotations

import sys
from pathlib import Path

from flows import console
from flows.lake import default_run_name, resolve_lake
from openmind_core.app.run_dir import with_lake_paths
from flows.preflight import (UsageError, check_inputs, check_lake, check_model_parts, check_resumable,
                             check_run_dir_free, load)
from tasks.runners import task_runner
from flows.summary import normalised_note, summary


def cmd_run(args) -> int:
    lake = resolve_lake(args.lake)
    cfg = load(args)
    check_lake(lake)
    check_inputs(cfg, lake)
    cfg = with_lake_paths(cfg, lake)  # as the flow does: model.init_from read from the lake
    check_model_parts(cfg)
    name = args.run_name or cfg.run.name or default_run_name()
    check_resumable(cfg, lake / "runs" / name)
    check_run_dir_free(lake / "runs" / name)
    console.set_resume_hint(console.resume_command(args.argv, name), lake / "runs" / name)
    task_runner_from_args(args)  # prefect-dask installed when asked for
    from flows.week1 import week1  # imports prefect: only after the checks

    console.begin(lake, "run", args.debug)
    state = week1(config_path=args.config, overrides=args.overrides, run_name=name, lake=str(lake),
                  task_runner="dask" if args.dask_address else args.task_runner, dask_address=args.dask_address,
                  return_state=True)
    report = state.result()
    print(summary(report))
    print(f"  prefect    flow run {name!r} (week1){console.flow_run_url(state)}")
    return 0 if report.passed else 1


def task_runner_from_args(args):
    """``--task-runner`` / ``--dask-address`` as a Prefect task runner (None: the flow's default threads)."""
    if args.task_runner == "thread" and not args.dask_address:
        return None
    try:  # an address means Dask
        return task_runner("dask" if args.dask_address else args.task_runner, args.dask_address)
    except (ImportError, ValueError) as e:
        raise UsageError(str(e)) from None


def cmd_data_prepare(args) -> int:
    cfg = load(args)
    lake = resolve_lake(args.lake)
    check_lake(lake)
    check_inputs(cfg, lake)
    task_runner_from_args(args)  # prefect-dask installed when asked for
    from flows.data import prepare_data  # start-up cost: prefect, after the checks

    console.begin(lake, "data-prepare", args.debug)
    cur = prepare_data(config_path=args.config, overrides=args.overrides, lake=str(lake),
                       task_runner="dask" if args.dask_address else args.task_runner, dask_address=args.dask_address)
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
    cfg = load(args)
    lake = resolve_lake(args.lake)
    check_lake(lake)
    check_inputs(cfg, lake)
    # start-up cost: the model package and torch load after the checks
    from openmind_core.app.inspect_data import inspect_samples
    from openmind_core.app.tokenizer import build_run_tokenizer
    from openmind_core.data import convert, download

    raw = download(cfg.data, lake, seed=cfg.run.seed)
    cur = convert(raw, cfg.data, lake)
    tok, _ = build_run_tokenizer(cfg, cur)
    print(inspect_samples(cur, tok, cfg.model, n=args.n))
    return 0


def cmd_estimate_memory(args) -> int:
    cfg = load(args)
    from openmind_core.model import estimate_memory  # start-up cost: transformers, after the config check

    k = cfg.data.max_images_per_row if args.images_per_row == "max" else \
        int(args.images_per_row) if str(args.images_per_row).isdigit() else 0
    if not 1 <= k <= cfg.data.max_images_per_row:
        raise UsageError(f"--images-per-row {args.images_per_row}: give 1 to data.max_images_per_row "
                         f"({cfg.data.max_images_per_row}) or 'max'")
    est = estimate_memory(cfg, budget_gb=args.budget_gb, images_per_row=k)
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
    from openmind_core.app.export import export_merged  # start-up cost: after the argument checks

    print(f"merged model written to {export_merged(src, out)}")
    return 0


def cmd_eval(args) -> int:
    from openmind_core.evaluation.run import EvalError, resolve_model_path  # start-up cost (torch)

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
    # start-up cost: prefect and the model load after the checks
    from flows.eval import evaluate
    from openmind_core.evaluation import summary_lines

    lake = resolve_lake(args.lake) if args.lake or run_dir is None else Path(run_dir).resolve().parent.parent
    console.begin(lake, "eval", args.debug)
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
