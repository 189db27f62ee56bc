"""The CLI's set-up around Prefect: a dead API said in one line, the resume hint as typed, quiet wandb, run names.

- a ``PREFECT_API_URL`` that nothing answers (from the environment or from a Prefect profile) ends the
  command within seconds with one line naming the setting, where it comes from and how to go on;
- the resume hint repeats the program as the user typed it (``openmind`` when that is on PATH);
- a flow run under a worker imports ``tasks`` first, which silences wandb (no banner);
- ``data prepare`` and ``eval`` flow runs are named after what they do.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from types import SimpleNamespace

import pytest

from conftest import REPO
from prefect_server import free_port


def _openmind(args, env, timeout=60):
    return subprocess.run([sys.executable, "-m", "flows.cli", *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=timeout)


@pytest.mark.parametrize("where", ["environment", "profile"])
def test_an_unreachable_api_fails_in_seconds_with_one_line(tmp_path, where):
    url = f"http://127.0.0.1:{free_port()}/api"  # nothing listens there
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env["PREFECT_HOME"] = str(tmp_path / "home")
    if where == "environment":
        env["PREFECT_API_URL"] = url
    else:  # what `prefect config set PREFECT_API_URL=...` leaves in the user's profile
        (tmp_path / "home").mkdir()
        (tmp_path / "home" / "profiles.toml").write_text(
            f'active = "default"\n\n[profiles.default]\nPREFECT_API_URL = "{url}"\n')
        env["PREFECT_PROFILES_PATH"] = str(tmp_path / "home" / "profiles.toml")
    start = time.monotonic()
    proc = _openmind(["data", "prepare", "--lake", str(tmp_path / "lake")], env)
    took = time.monotonic() - start
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("openmind: error: no Prefect server answers at PREFECT_API_URL=" + url)
    assert "prefect server start" in lines[0]
    fix = "`unset PREFECT_API_URL`" if where == "environment" else "`prefect config unset PREFECT_API_URL`"
    assert fix in lines[0] and ("environment variable" if where == "environment" else "profile 'default'") in lines[0]
    assert took < 20, took  # seconds, not Prefect's minutes of retries
    assert not (tmp_path / "lake" / "logs").exists()  # refused before anything ran


def test_the_resume_hint_repeats_the_program_as_typed(tmp_path, monkeypatch):
    from flows.console import resume_command, typed_program

    bindir = tmp_path / "venv" / "bin"
    bindir.mkdir(parents=True)
    script = bindir / "openmind"
    script.write_text("#!/bin/sh\n")
    script.chmod(0o755)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}")
    assert typed_program(str(script)) == "openmind"  # found on PATH: the user typed `openmind`
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    assert typed_program(str(script)) == "venv/bin/openmind"  # not on PATH: the path they typed
    assert typed_program("/x/flows/cli.py") == "python -m flows.cli"
    monkeypatch.setattr(sys, "argv", [str(script)])
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}/usr/bin:/bin")
    assert resume_command(["run", "--set", "train.epochs=2"], "demo") == \
        "openmind run --set train.epochs=2 --run-name demo"


def test_wandb_prints_no_banner_in_a_flow_run_process(tmp_path):
    pytest.importorskip("wandb")
    code = ("import flows.week1\n"  # what a worker's flow-run process imports first
            "from openmind_core.training.metrics import WandbLogger\n"
            f"w = WandbLogger('offline', 'openmind', 'quiet', {str(tmp_path)!r}, {{}})\n"
            "w.log({'train/loss': 1.0}, step=1)\nw.finish()\nprint('trained')\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    env["WANDB_MODE"] = "offline"
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=180)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "wandb" not in (proc.stdout + proc.stderr).lower(), proc.stdout + proc.stderr
    assert list(tmp_path.glob("wandb/offline-run-*"))  # it did log, offline


def test_prepare_and_eval_flow_runs_are_named_after_what_they_do(monkeypatch, tmp_path):
    import flows.data
    import flows.eval

    monkeypatch.setattr(flows.data, "flow_run", SimpleNamespace(parameters={"overrides": ["data.synthetic.num_vqa=3"]}))
    assert flows.data._flow_run_name().startswith("prepare-synthetic-")
    run = tmp_path / "runs" / "demo"
    (run / "final").mkdir(parents=True)
    cases = {str(run): "eval-demo-final", str(run / "best"): "eval-demo-best"}
    for path, name in cases.items():
        monkeypatch.setattr(flows.eval, "flow_run", SimpleNamespace(parameters={"path": path}))
        assert flows.eval._flow_run_name() == name
    monkeypatch.setattr(flows.eval, "flow_run", SimpleNamespace(parameters={"path": str(run), "hf": "lmms-lab/VQAv2"}))
    assert flows.eval._flow_run_name() == "eval-demo-final-lmms-lab-VQAv2"
