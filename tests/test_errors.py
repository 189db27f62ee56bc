"""Errors as a user meets them: refused up front when they can be, otherwise one line and
an exit code, the traceback in the log file; permanent errors are never retried."""

from __future__ import annotations

import errno
import os
import subprocess
import sys

import pytest

from conftest import REPO


def openmind(*args, env=None):
    return subprocess.run([sys.executable, "-m", "flows.cli", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=300, env=dict(os.environ, **(env or {})))


def _one_line(proc) -> str:
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, proc.stderr[-3000:]
    return lines[0]


def test_a_directory_where_a_file_belongs_is_refused_up_front(tmp_path):
    lake = tmp_path / "lake"
    proc = openmind("data", "prepare", "--set", "data.source=jsonl", "--set", f"data.jsonl.captions={tmp_path}",
                    "--lake", str(lake))
    assert proc.returncode == 2
    assert f"data.jsonl.captions: {tmp_path} is a directory; expected a file" in _one_line(proc)
    assert not lake.exists()


def test_config_errors_say_where_and_what(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  epochs: 2\n lr: [1\n")
    assert "bad.yaml, line 3, column 2: not valid YAML" in _one_line(openmind("config", "--config", str(bad)))
    assert "train.lrr: unknown key (did you mean 'lr'?)" in _one_line(openmind("config", "--set", "train.lrr=1"))
    assert "/proc does not accept new files" in _one_line(openmind("run", "--lake", "/proc/openmind-lake"))
    proc = openmind("data", "inspect", "-n", "0")
    assert proc.returncode == 2 and "-n: must be at least 1" in proc.stderr and "Traceback" not in proc.stderr


def test_estimate_memory_exits_1_when_training_does_not_fit():
    proc = openmind("estimate-memory", "--config", "configs/full.yaml", "--budget-gb", "1")
    assert proc.returncode == 1
    assert "DOES NOT FIT" in proc.stdout and "does not fit the 1.0 GiB budget" in _one_line(proc)


@pytest.mark.parametrize("exc", [OSError("Expected file path, got a directory"), OSError(errno.EISDIR, "Is a directory"),
                                 OSError(errno.EACCES, "Permission denied")])
def test_path_errors_are_permanent(exc):
    from tasks.common import is_permanent

    assert is_permanent(exc)


@pytest.mark.slow
def test_a_fully_bad_input_fails_in_one_line_with_the_traceback_in_the_log(prefect_server, tmp_path):
    (tmp_path / "bad.jsonl").write_text("{nope\n[1, 2]\n")
    lake = tmp_path / "lake"
    proc = openmind("data", "prepare", "--set", "data.source=jsonl", "--set", f"data.jsonl.captions={tmp_path / 'bad.jsonl'}",
                    "--lake", str(lake), env={"PREFECT_API_URL": prefect_server})
    assert proc.returncode == 1
    errors = [ln for ln in proc.stderr.splitlines() if "Error" in ln or "Traceback" in ln or "Crash" in ln]
    assert len(errors) == 1 and errors[0].startswith("openmind: error: DataError: no usable rows"), proc.stderr[-3000:]
    log = errors[0].rsplit("traceback in ", 1)[1].rstrip(")")
    text = open(log).read()
    assert "Traceback (most recent call last)" in text and "DataError" in text
    # no retries: the task failed once, and no "Task run failed with ... - Retry 1/N will start" was logged
    assert text.count("Finished in state Failed('Task run encountered an exception DataError") == 1, text[-3000:]
    assert " will start " not in text and "Task run failed with" not in text, text[-3000:]
    debug = openmind("data", "prepare", "--set", "data.source=jsonl", "--set",
                     f"data.jsonl.captions={tmp_path / 'bad.jsonl'}", "--lake", str(lake), "--debug",
                     env={"PREFECT_API_URL": prefect_server})
    assert debug.returncode == 1 and "Traceback (most recent call last)" in debug.stderr
