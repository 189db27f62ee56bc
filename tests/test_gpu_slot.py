"""GPU slots (tasks/slots.py) against the session's Prefect server: the limit held, the second run
waiting for it, and a missing limit costing one log line."""

from __future__ import annotations

import logging
import threading


from tasks.slots import GPU_LIMIT, gpu_slot


def _active_slots(client, name: str) -> int:
    return client.read_global_concurrency_limit_by_name(name).active_slots


def test_without_the_limit_training_proceeds_with_one_line(prefect_server, caplog):
    caplog.set_level(logging.INFO, logger="tasks.slots")
    caplog.set_level(logging.INFO, logger="prefect")
    with gpu_slot(1, name="gpu-not-created") as held:
        assert held is False
    lines = [r for r in caplog.records if "gpu-not-created" in r.getMessage()]
    assert len(lines) == 1 and lines[0].levelno == logging.INFO and "prefect gcl create" in lines[0].getMessage()
    with gpu_slot(0) as held:  # training on the CPU takes no slot and says nothing
        assert held is False


def test_two_runs_never_hold_the_gpu_at_once(prefect_server):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate

    with get_client(sync_client=True) as client:
        client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=GPU_LIMIT, limit=1))
        try:
            second: dict = {}

            def other_run():
                try:
                    with gpu_slot(1, timeout_seconds=3):
                        second["held"] = True
                except Exception as e:  # the slot stayed taken: Prefect's acquisition timeout
                    second["error"] = e

            with gpu_slot(1) as held:
                assert held is True and _active_slots(client, GPU_LIMIT) == 1
                t = threading.Thread(target=other_run)
                t.start()
                t.join(timeout=60)
            assert "held" not in second and "timed out" in str(second.get("error")), second
            assert _active_slots(client, GPU_LIMIT) == 0
            with gpu_slot(1) as held:  # released: the next run gets it
                assert held is True
        finally:
            client.delete_global_concurrency_limit_by_name(GPU_LIMIT)
