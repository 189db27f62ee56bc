"""The deployment path (README / prefect.yaml) with the Prefect server on PostgreSQL.

A throw-away PostgreSQL cluster (initdb + pg_ctl, Debian's packages: ``.ci/run`` installs them when
missing) on a free port; ``prefect server start`` with
``PREFECT_SERVER_DATABASE_CONNECTION_URL=postgresql+asyncpg://...``; then the same steps as
tests/test_deployments.py: create the process pool, ``prefect deploy --all``, trigger a run, and a
worker runs it.  Skips when PostgreSQL is not installed, naming the README claim it leaves unproven
(under ``.ci/run`` the skip fails the run; ``.ci/run`` installs PostgreSQL first and fails when it
cannot).  initdb refuses root: as root the cluster runs as ``nobody``.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from conftest import REPO, skip_unproven
from prefect_server import client_env, free_port, prefect_server

pytestmark = pytest.mark.slow


def _pg_bin() -> Path | None:
    found = shutil.which("pg_ctl") or next(iter(sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"))[-1:]), None)
    return Path(os.path.realpath(found)).parent if found else None


@pytest.fixture(scope="module")
def postgres_url():
    bindir = _pg_bin()
    if bindir is None or not (bindir / "initdb").exists():
        skip_unproven("README, PostgreSQL: the deployment path runs on a Prefect server backed by PostgreSQL",
                      "no pg_ctl/initdb on PATH or in /usr/lib/postgresql/*/bin; .ci/run installs Debian's postgresql")
    as_user = []
    base = Path(tempfile.mkdtemp(prefix="openmind-pg-"))
    if os.geteuid() == 0:  # initdb refuses root
        as_user = ["runuser", "-u", "nobody", "--"]
        shutil.chown(base, "nobody")
    data, port = base / "data", free_port()

    def run(*cmd, timeout=120):
        proc = subprocess.run([*as_user, *map(str, cmd)], capture_output=True, text=True, timeout=timeout, cwd=base)
        assert proc.returncode == 0, f"{cmd[0]} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"

    run(bindir / "initdb", "-D", data, "-U", "prefect", "--auth=trust", "-E", "UTF8", "--no-sync")
    run(bindir / "pg_ctl", "-D", data, "-l", base / "pg.log", "-w", "-t", "120", "start", "-o",
        f"-p {port} -k {base} -c listen_addresses=127.0.0.1 -c fsync=off")
    try:
        run(bindir / "createdb", "-h", "127.0.0.1", "-p", port, "-U", "prefect", "prefect")
        yield f"postgresql+asyncpg://prefect@127.0.0.1:{port}/prefect"
    finally:
        subprocess.run([*as_user, str(bindir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"],
                       capture_output=True, timeout=120)
        shutil.rmtree(base, ignore_errors=True)


def _prefect(args, env, timeout=300):
    proc = subprocess.run([sys.executable, "-m", "prefect", *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=timeout)
    assert proc.returncode == 0, f"prefect {' '.join(args)} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


def test_deployment_runs_on_a_server_backed_by_postgres(postgres_url, tmp_path):
    with prefect_server(tmp_path / "server", database_url=postgres_url) as api:
        env = dict(client_env(api, tmp_path / "client"), PWD=str(REPO))
        _prefect(["work-pool", "create", "openmind-local", "--type", "process"], env)
        _prefect(["--no-prompt", "deploy", "--all"], env)
        lake = tmp_path / "lake"
        overrides = json.dumps(["data.synthetic.num_captions=24", "data.synthetic.num_vqa=12",
                                "train.micro_batch_size=8", "inference.max_samples=2", "inference.max_new_tokens=2"])
        _prefect(["deployment", "run", "week1/week1-manual", "--param", "run_name=on-postgres",
                  "--param", f"lake={lake}", "--param", f"overrides={overrides}"], env)
        _prefect(["worker", "start", "--pool", "openmind-local", "--run-once"], env, timeout=600)
        report = json.loads((lake / "runs" / "on-postgres" / "report.json").read_text())
        assert report["run_name"] == "on-postgres" and report["training"]["steps"] > 0
        # the server really keeps its state in PostgreSQL: the flow run is a row there
        import asyncio

        import asyncpg

        async def count() -> int:
            conn = await asyncpg.connect(postgres_url.replace("postgresql+asyncpg", "postgresql"))
            try:
                return await conn.fetchval("SELECT count(*) FROM flow_run WHERE state_type = 'COMPLETED'")
            finally:
                await conn.close()

        assert asyncio.run(count()) >= 1
