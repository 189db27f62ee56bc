"""Prefect tasks: thin wrappers (retries, caching, artifacts, logs) over one openmind_core call each.

Importing this package first sets environment defaults that must be in place before prefect loads:
- telemetry off (otherwise "database is locked" tracebacks on SQLite);
- a longer ephemeral-server start-up timeout (the server takes ~10 s on 2 slow cores);
- OpenMind's library loggers forwarded to Prefect, so core log lines reach the UI;
- wandb silent (no banner), whether the flow runs under the CLI or a worker.
A value the user already set wins.
"""

import os

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90")
os.environ.setdefault("PREFECT_LOGGING_EXTRA_LOGGERS", "openmind_core")
# ... and outside a flow run (``openmind data inspect``, a notebook) those lines just stay local
os.environ.setdefault("PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW", "ignore")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")
# wandb: no banner, no 25-line run history at the end, no capture of the terminal; a flow run under a
# worker imports this package as the CLI does, so it is as quiet there
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("WANDB_CONSOLE", "off")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")

import logging as _logging

# Prefect forwards the library's loggers to the UI (PREFECT_LOGGING_EXTRA_LOGGERS) but leaves their
# level at the root's WARNING: let the library's INFO lines (smoke checks, resume, rollbacks) through.
if _logging.getLogger("openmind_core").level == _logging.NOTSET:
    _logging.getLogger("openmind_core").setLevel(_logging.INFO)
