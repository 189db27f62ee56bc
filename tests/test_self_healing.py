"""A run whose machine dies is marked Crashed and resumed by Prefect alone, and ends as an unbroken run ends.

As README's "Self-healing runs" sets it up: ``prefect server start --analytics-off``, the pool,
``prefect --no-prompt deploy --all``, both automations loaded with ``prefect automation create
--from-file``, and two process workers (two machines).  A run of ``week1/week1-manual`` trains; once
it has written a checkpoint, the worker that runs it and its flow-run process are SIGKILLed together
(a lost node: no one is left to report the crash).  Then, with no one acting:

- the zombie automation marks the run Crashed once its heartbeats stop, within the stated bound;
- the resume automation runs the deployment again with the same parameters and run name; the other
  worker picks it up and training resumes from the newest checkpoint;
- the final weights equal, tensor for tensor, those of an unbroken run of the same config;
- the automatic resume is a Prefect event, a ``metrics.jsonl`` event and a line in the report;
- the server, started with README's command, logged nothing about telemetry.

To keep the test short, the zombie automation is loaded with ``within: 40`` instead of 90 (the one
change; heartbeats still every 30 s, Prefect's minimum), so the stated bound here is 40 + 5 s.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from conftest import REPO
from prefect_server import free_port

pytestmark = pytest.mark.slow

WITHIN = 40  # seconds without a heartbeat before the zombie automation fires (the file says 90)
GRANULARITY = 5  # the server evaluates proactive triggers every 5 s (PREFECT_SERVER_EVENTS_PROACTIVE_GRANULARITY)
OVERRIDES = ["data.synthetic.num_captions=200", "data.synthetic.num_vqa=100", "train.micro_batch_size=8",
             "train.epochs=2", "train.save_steps=10", "train.eval_steps=20", "inference.max_samples=2",
             "inference.max_new_tokens=2", "inference.extra_prompts=[]"]


def readme_command(marker: str) -> list[str]:
    """The first line of README's Prefect section that starts with ``marker`` (a command), as argv."""
    text = (REPO / "README.md").read_text()
    section = text[text.index("## Prefect: UI, deployments, schedules"):]
    line = next(ln for ln in section.splitlines() if ln.startswith(marker))
    argv = shlex.split(line.split("#")[0])
    return [sys.executable, "-m", "prefect", *argv[1:]] if argv[0] == "prefect" else argv  # this venv's prefect


def _pids_of_flow_run(flow_run_id: str) -> list[int]:
    """Processes whose environment names the flow run (the flow-run process, and any supervisor)."""
    return _pids_with(f"PREFECT__FLOW_RUN_ID={flow_run_id}")


def _pids_with(variable: str) -> list[int]:
    """Processes (but this one) whose environment holds ``variable`` (``NAME=value``)."""
    out = []
    needle = variable.encode()
    for e in os.listdir("/proc"):
        if e.isdigit() and int(e) == os.getpid():
            continue
        if e.isdigit():
            try:
                if needle in Path(f"/proc/{e}/environ").read_bytes().split(b"\0"):
                    out.append(int(e))
            except OSError:
                pass
    return out


def _parent(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def _events(api: str, name: str) -> list[dict]:
    r = httpx.post(f"{api}/events/filter", json={"filter": {"event": {"name": [name]}}, "limit": 50}, timeout=10)
    r.raise_for_status()
    return r.json()["events"]


def _flow_runs(api: str, name: str) -> list[dict]:
    r = httpx.post(f"{api}/flow_runs/filter", json={"flow_runs": {"name": {"any_": [name]}}, "sort": "START_TIME_ASC"},
                   timeout=10)
    r.raise_for_status()
    return r.json()


def _wait(what: str, check, timeout: float, every: float = 0.5):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = check()
        if got:
            return got
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def _checkpoint_steps(run_dir: Path) -> list[int]:
    try:
        lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    except OSError:
        return []
    out = []
    for line in lines:
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if rec.get("event") == "checkpoint":
            out.append(rec["step"])
    return out


REFERENCE = """
import sys
from pathlib import Path
from openmind_core.app.train import train_from_config
from schemas import CuratedDataset, load_config
cfg = load_config(None, sys.argv[1].split("\\n"))
curated = CuratedDataset.model_validate_json(Path(sys.argv[2]).read_text())
train_from_config(cfg, curated, sys.argv[3], sys.argv[4])
"""


def test_a_run_whose_machine_dies_is_resumed_by_prefect_alone(tmp_path):
    import torch
    from safetensors.torch import load_file

    home, lake = tmp_path / "prefect", tmp_path / "lake"
    port = free_port()
    api = f"http://127.0.0.1:{port}/api"
    base = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    base.update(PREFECT_HOME=str(home), PREFECT_LOGGING_EXTRA_LOGGERS="openmind_core")
    env = dict(base, PREFECT_API_URL=api, PWD=str(REPO), PREFECT_WORKER_QUERY_SECONDS="1",
               OMP_NUM_THREADS="1")  # the flow runs and the reference train on one thread each
    procs: list[subprocess.Popen] = []
    timings: dict[str, float] = {}
    t0 = time.monotonic()

    server_cmd = readme_command("prefect server start")  # as README starts it: no telemetry
    assert "--analytics-off" in server_cmd
    server_log = open(tmp_path / "server.log", "w")
    procs.append(subprocess.Popen([*server_cmd, "--host", "127.0.0.1", "--port", str(port)], cwd=REPO,
                                  env=dict(base, PREFECT_SERVER_UI_ENABLED="false"), stdout=server_log,
                                  stderr=subprocess.STDOUT, start_new_session=True))

    def start(*args):
        return subprocess.Popen([sys.executable, "-m", "prefect", *args], cwd=REPO, env=env, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT)

    def finish(proc, timeout=180):
        out = proc.communicate(timeout=timeout)[0]
        assert proc.returncode == 0, f"{' '.join(proc.args[3:])}:\n{out[-3000:]}"
        return out

    try:
        _wait("the server", lambda: _healthy(api), 120)
        timings["server_s"] = time.monotonic() - t0
        finish(start("work-pool", "create", "openmind-local", "--type", "process"))
        workers = [subprocess.Popen([sys.executable, "-m", "prefect", "worker", "start", "--pool", "openmind-local",
                                     "--name", f"node-{i}"], cwd=REPO, env=env, start_new_session=True,
                                    stdout=open(tmp_path / f"worker-{i}.log", "w"), stderr=subprocess.STDOUT)
                   for i in (1, 2)]
        procs += workers
        zombie = (REPO / "automations" / "zombie-crashed.yaml").read_text()
        assert "\n  within: 90\n" in zombie
        (tmp_path / "zombie.yaml").write_text(zombie.replace("\n  within: 90\n", f"\n  within: {WITHIN}\n"))
        # what README runs one after the other, side by side (none needs another's result)
        steps = [start("--no-prompt", "deploy", "--all")] + [
            start("automation", "create", "--from-file", str(f))
            for f in (tmp_path / "zombie.yaml", REPO / "automations" / "resume-crashed.yaml")]
        outs = [finish(p) for p in steps]
        assert all("Created automation" in out for out in outs[1:]), outs
        finish(start("deployment", "run", "week1/week1-manual", "--param", "run_name=healed", "--param",
                     f"lake={lake}", "--param", f"overrides={json.dumps(OVERRIDES)}"))
        timings["set_up_s"] = time.monotonic() - t0

        run_dir = lake / "runs" / "healed"
        _wait("a checkpoint past step 0", lambda: any(s >= 10 for s in _checkpoint_steps(run_dir)), 240, 0.2)
        timings["first_checkpoint_s"] = time.monotonic() - t0
        first = _flow_runs(api, "healed")
        assert len(first) == 1 and first[0]["state_type"] == "RUNNING", first
        crashed_id = first[0]["id"]
        pids = _pids_of_flow_run(crashed_id)
        assert pids, "no process runs the flow run"
        worker = next(w for w in workers if any(_is_below(p, w.pid) for p in pids))
        for pid in [worker.pid, *pids]:  # the machine is gone: the worker and its flow run at once
            os.kill(pid, signal.SIGKILL)
        killed_at = time.monotonic()
        timings["killed_after_s"] = killed_at - t0
        timings["killed_at_step"] = max(_checkpoint_steps(run_dir))

        # meanwhile, the unbroken reference: the same config, data and tokenizer, in one process
        ref_dir = tmp_path / "reference"
        ref = subprocess.Popen([sys.executable, "-c", REFERENCE, "\n".join(OVERRIDES), str(_curated_json(lake, tmp_path)),
                                str(ref_dir), str(run_dir / "tokenizer")], cwd=REPO, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        procs.append(ref)

        def crashed():
            runs = _flow_runs(api, "healed")
            return runs[0] if runs[0]["state_type"] == "CRASHED" else None

        state = _wait("the zombie run to be marked Crashed", crashed, WITHIN + 60, 0.5)
        timings["crashed_after_kill_s"] = time.monotonic() - killed_at
        assert "No heartbeat" in (state["state"]["message"] or ""), state["state"]
        assert timings["crashed_after_kill_s"] <= WITHIN + GRANULARITY + 5, timings

        def resumed_done():
            runs = _flow_runs(api, "healed")
            done = [r for r in runs[1:] if r["state_type"] in ("COMPLETED", "FAILED", "CRASHED")]
            return done[0] if done else None

        second = _wait("the resumed run to finish", resumed_done, 300, 1.0)
        timings["resumed_done_after_crash_s"] = time.monotonic() - killed_at - timings["crashed_after_kill_s"]
        assert second["state_type"] == "COMPLETED", second["state"]
        assert second["parameters"]["auto_resume_of"] == crashed_id
        assert {k: second["parameters"][k] for k in ("run_name", "lake", "overrides")} == \
            {"run_name": "healed", "lake": str(lake), "overrides": OVERRIDES}
        resumed = _wait("the openmind.run.auto_resumed event",
                        lambda: _events(api, "openmind.run.auto_resumed"), 30, 0.5)
        assert resumed[0]["resource"]["prefect.resource.id"] == "openmind.run.healed"
        assert resumed[0]["payload"]["crashed_flow_run"] == crashed_id and resumed[0]["payload"]["attempt"] == 1
        assert ref.wait(timeout=300) == 0, ref.stdout.read()[-3000:]
        timings["total_s"] = time.monotonic() - t0
    finally:
        for p in _pids_with(f"PREFECT_API_URL={api}"):  # flow runs left behind by a failure (own sessions)
            os.kill(p, signal.SIGKILL)
        for p in reversed(procs):
            if p.poll() is None:
                p.terminate()
        for p in procs:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        server_log.close()
    print("\nself-healing timings:", json.dumps({k: round(v, 1) for k, v in timings.items()}))
    (tmp_path / "timings.json").write_text(json.dumps(timings))

    healed = load_file(run_dir / "final" / "model.safetensors")
    unbroken = load_file(ref_dir / "final" / "model.safetensors")
    assert healed.keys() == unbroken.keys()
    assert all(torch.equal(healed[k], unbroken[k]) for k in healed), "the healed run's weights differ"

    report = json.loads((run_dir / "report.json").read_text())
    assert report["training"]["resumed_from_step"] == timings["killed_at_step"]
    [auto] = report["auto_resumes"]
    assert (auto["attempt"], auto["max"], auto["crashed_flow_run"]) == (1, 3, crashed_id)
    metrics = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [m["crashed_flow_run"] for m in metrics if m.get("event") == "auto_resume"] == [crashed_id]
    assert "telemetry" not in (tmp_path / "server.log").read_text().lower()


def _healthy(api: str) -> bool:
    try:
        return httpx.get(f"{api}/health", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def _is_below(pid: int, ancestor: int) -> bool:
    while pid > 1:
        if pid == ancestor:
            return True
        try:
            pid = _parent(pid)
        except (OSError, ValueError):
            return False
    return False


def _curated_json(lake: Path, tmp_path: Path) -> Path:
    """The run's curated version as a CuratedDataset JSON (the one version in the lake)."""
    from openmind_core.data.convert import _artifact
    from openmind_core.data.layout import CURATED_MANIFEST, read_json

    [version] = [p for p in (lake / "curated").iterdir() if not p.name.startswith(".")]
    path = tmp_path / "curated.json"
    path.write_text(_artifact(version, read_json(version / CURATED_MANIFEST), lake, reused=True).model_dump_json())
    return path
