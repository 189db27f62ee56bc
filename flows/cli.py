"""The ``openmind`` command line.

    openmind run [--config FILE] [--set key=value ...] [--run-name NAME] [--lake DIR]
                 [--task-runner thread|dask] [--dask-address tcp://HOST:8786]
    openmind data prepare [--config FILE] [--set ...] [--lake DIR] [--task-runner thread|dask] [--dask-address ADDR]
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

This file is the entry point and the dispatch; ``parser.py`` holds the options, ``preflight.py``
the checks, ``commands.py`` the commands and ``summary.py`` the end-of-run summary.
"""

from __future__ import annotations

import sys

from flows.commands import (cmd_config, cmd_data_inspect, cmd_data_prepare, cmd_estimate_memory, cmd_eval,
                            cmd_export, cmd_run)
from flows.console import exit_now, fail, quiet_environment
from flows.parser import build_parser
from flows.preflight import EXIT_USAGE, UsageError

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
    code = _main(argv)
    if argv is None:
        exit_now(code)
    return code


def _main(argv: list[str] | None) -> int:
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
        return fail(e, getattr(args, "debug", False))
    except BaseException as e:  # Prefect's TerminationSignal (SIGTERM while its handler is in place)
        if type(e).__name__ != "TerminationSignal":
            raise
        return fail(e, getattr(args, "debug", False))


if __name__ == "__main__":
    sys.exit(main())
