"""Test-session setup: offline, telemetry off, Prefect state in a temp dir, one Prefect server.

Tests that run flows take the session-scoped ``prefect_server`` fixture: one
``prefect_test_harness`` (a real temporary server, ~9 s to start) for the whole session.

No silent skips: a test that cannot run calls ``skip_unproven(claim, why)``, which names the README
claim it leaves unproven (``-ra`` prints it).  Under ``OPENMIND_CI=1`` (``.ci/run``) every skip, this
one or any other, is a failure: CI is green only when every claim was tested.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

_TMP = Path(tempfile.mkdtemp(prefix="openmind-tests-"))
os.environ["PREFECT_HOME"] = str(_TMP / "prefect-home")
os.environ["PREFECT_RESULTS_LOCAL_STORAGE_PATH"] = str(_TMP / "prefect-results")
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
os.environ["PREFECT_LOGGING_EXTRA_LOGGERS"] = "openmind_core"
os.environ["PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW"] = "ignore"
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ["WANDB_MODE"] = "disabled"
os.environ["TOKENIZERS_PARALLELISM"] = "false"
# One math thread per process, set before torch loads (subprocesses inherit it): the suite runs a
# Prefect server, workers and torchrun ranks beside the pytest process, and OpenMP threads that spin
# while another process holds the core make a step of the tiny model 10x slower (the default run's
# 85 steps took 2 min with torch's default 2 threads beside other work, 11 s with one; same losses).
os.environ["OMP_NUM_THREADS"] = "1"
os.environ["MKL_NUM_THREADS"] = "1"
os.environ.pop("PREFECT_API_URL", None)
os.environ.pop("OPENMIND_LAKE", None)

REPO = Path(__file__).resolve().parent.parent
CI = os.environ.get("OPENMIND_CI") == "1"  # .ci/run: a skipped test fails the run


def skip_unproven(claim: str, why: str) -> None:
    """Skip the calling test: ``claim`` (README's words) goes unproven because ``why``.  Fails under CI."""
    pytest.skip(f"UNPROVEN: {claim} ({why})")


# The longest modules (``--durations``), run first: ``make test`` spreads whole modules over two
# processes (pytest-xdist, ``--dist loadfile``) in collection order, so a long module collected last
# would run alone at the end.  Then the other modules with slow tests, then the rest, each group in
# its usual order.
LONGEST_FIRST = ("test_self_healing", "test_postgres", "test_interrupt", "test_torchrun_task", "test_deployments",
                 "test_flow_e2e", "test_lora", "test_ddp", "test_resume_kill", "test_ui_training", "test_automations")


def pytest_collection_modifyitems(config, items):
    slow = {item.module for item in items if item.get_closest_marker("slow")}

    def rank(module) -> tuple[int, int]:
        name = module.__name__.rpartition(".")[2] if module else ""
        if name in LONGEST_FIRST:
            return 0, LONGEST_FIRST.index(name)
        return (1 if module in slow else 2), 0

    items.sort(key=lambda item: rank(item.module))  # stable: a module's tests keep their order


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Under ``OPENMIND_CI=1`` a skipped test is reported as failed, with its reason."""
    report = (yield).get_result()
    if CI and report.skipped and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = f"skipped under OPENMIND_CI=1 (.ci/run), which allows no skip: {reason}"


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    """The same for a whole module skipped at import (``pytest.importorskip``, ``allow_module_level``)."""
    report = (yield).get_result()
    if CI and report.skipped:
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = f"{collector.nodeid} skipped under OPENMIND_CI=1 (.ci/run), which allows no skip: {reason}"


@pytest.fixture(scope="session")
def prefect_server():
    """A temporary Prefect server for the session; yields its API URL."""
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield PREFECT_API_URL.value()


@pytest.fixture(autouse=True)
def _keep_torch_threads():
    """A test that changes torch's thread count must not change the next test's float results."""
    import torch

    threads = torch.get_num_threads()
    yield
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
