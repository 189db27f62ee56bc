"""automations/*.yaml and API auth against a real ``prefect server start`` (one server for the module).

The server runs with ``PREFECT_SERVER_API_AUTH_STRING``; clients pass ``PREFECT_API_AUTH_STRING``.
The automations are loaded exactly as README says (block id substituted, then
``prefect automation create --from-file``), their notification block is a
``CustomWebhookNotificationBlock`` pointing at a webhook receiver on 127.0.0.1, and a failing week1
run and a forwarded rollback event must each make the receiver get its call.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from conftest import REPO
from prefect_server import client_env, prefect_server

pytestmark = pytest.mark.slow
AUTH = "openmind:s3cret"


@pytest.fixture(scope="module")
def auth_server(tmp_path_factory):
    home = tmp_path_factory.mktemp("prefect-auth-server")
    with prefect_server(home / "server", auth=AUTH) as api:
        yield api, home


def _cli(args, env, timeout=180):
    return subprocess.run([sys.executable, "-m", "prefect", *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=timeout)


def test_a_client_without_the_auth_string_is_refused(auth_server):
    api, home = auth_server
    refused = _cli(["flow", "ls"], client_env(api, home / "client"))
    assert refused.returncode != 0 and "401" in refused.stdout + refused.stderr, refused
    ok = _cli(["flow", "ls"], client_env(api, home / "client", auth=AUTH))
    assert ok.returncode == 0, ok.stdout + ok.stderr


class _Receiver(BaseHTTPRequestHandler):
    calls: list[dict] = []

    def do_POST(self):  # noqa: N802
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        _Receiver.calls.append(json.loads(body or b"{}"))
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args):
        pass


EMIT = """
import json, sys
from pathlib import Path
from flows.week1 import week1
try:
    week1(config_path=sys.argv[1])  # no such file: the flow run fails
except Exception as e:
    print("week1 failed:", type(e).__name__)
from tasks.events import forward_metrics
p = Path(sys.argv[2])
p.write_text(json.dumps({"step": 4, "event": "rollback", "spike_step": 6, "restored_step": 4,
                         "reason": "loss spike"}) + "\\n")
print("forwarded", forward_metrics(p, "nightly-demo"))
from prefect.events.worker import EventsWorker
EventsWorker.drain_all(timeout=60)
"""


def test_automations_notify_a_failed_week1_run_and_a_rollback(auth_server, tmp_path):
    from prefect.blocks.notifications import CustomWebhookNotificationBlock
    from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_URL, temporary_settings

    api, home = auth_server
    _Receiver.calls = []
    receiver = ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    threading.Thread(target=receiver.serve_forever, daemon=True).start()
    env = client_env(api, home / "client", auth=AUTH)
    try:
        url = f"http://127.0.0.1:{receiver.server_address[1]}/hook"
        with temporary_settings({PREFECT_API_URL: api, PREFECT_API_AUTH_STRING: AUTH}):
            block_id = CustomWebhookNotificationBlock(
                name="openmind", url=url, json_data={"subject": "{{subject}}", "body": "{{body}}"},
            ).save("openmind-alerts", overwrite=True)
        files = [REPO / "automations" / name for name in ("week1-failed.yaml", "rollback.yaml")]  # README's loop
        assert {f.name for f in (REPO / "automations").glob("*.yaml")} == \
            {"week1-failed.yaml", "rollback.yaml", "zombie-crashed.yaml", "resume-crashed.yaml"}
        for f in files:
            filled = tmp_path / f.name
            filled.write_text(f.read_text().replace("OPENMIND_NOTIFY_BLOCK_ID", str(block_id)))
            out = _cli(["automation", "create", "--from-file", str(filled)], env)
            assert out.returncode == 0 and "Created automation" in out.stdout, out.stdout + out.stderr
        proc = subprocess.run([sys.executable, "-c", EMIT, str(tmp_path / "missing.yaml"), str(tmp_path / "m.jsonl")],
                              cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
        assert "week1 failed" in proc.stdout and "forwarded 1" in proc.stdout, proc.stdout + proc.stderr[-3000:]
        deadline = time.monotonic() + 120
        while len(_Receiver.calls) < 2 and time.monotonic() < deadline:
            time.sleep(0.5)
    finally:
        receiver.shutdown()
    subjects = sorted(c["subject"] for c in _Receiver.calls)
    assert len(subjects) == 2, _Receiver.calls
    assert subjects[0].startswith("OpenMind run nightly-demo rolled back"), subjects
    assert subjects[1].startswith("OpenMind week1 run ") and subjects[1].endswith(" is Failed"), subjects
    rollback = next(c for c in _Receiver.calls if "rolled back" in c["subject"])
    assert "from step 6 to step" in rollback["body"] and "loss spike" in rollback["body"]


def test_the_self_healing_automations_load_from_their_files_as_they_are(auth_server):
    """README's "Self-healing runs": both files load with ``prefect automation create --from-file`` and
    nothing else (the end-to-end run is tests/test_self_healing.py)."""
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_URL, temporary_settings

    api, home = auth_server
    env = client_env(api, home / "client", auth=AUTH)
    for name in ("zombie-crashed.yaml", "resume-crashed.yaml"):
        out = _cli(["automation", "create", "--from-file", str(REPO / "automations" / name)], env)
        assert out.returncode == 0 and "Created automation" in out.stdout, out.stdout + out.stderr
    with temporary_settings({PREFECT_API_URL: api, PREFECT_API_AUTH_STRING: AUTH}):
        with get_client(sync_client=True) as client:
            [zombie] = client.read_automations_by_name("openmind-zombie-crashed")
            [resume] = client.read_automations_by_name("openmind-resume-crashed")
    assert zombie.trigger.posture == "Proactive" and zombie.trigger.within.total_seconds() == 90
    assert zombie.trigger.after == {"prefect.flow-run.heartbeat"} and zombie.actions[0].type == "change-flow-run-state"
    action = resume.actions[0]
    assert action.type == "run-deployment" and action.source == "inferred"
    assert set(action.parameters) == {"config_path", "overrides", "run_name", "lake", "task_runner", "dask_address",
                                      "auto_resume_of"}
