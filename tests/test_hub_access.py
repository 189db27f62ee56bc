"""Hub ids fail in seconds when the hub cannot be reached (offline the libraries retry for minutes)."""

from __future__ import annotations

import socket
from types import SimpleNamespace

import pytest

from openmind_core import hub


def _closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there: a connection is refused at once
    return port


@pytest.fixture
def dead_hub(monkeypatch):
    for k in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(k, raising=False)
    port = _closed_port()
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    return port


def test_reason_names_the_endpoint_and_offline_mode_is_restored(dead_hub):
    import huggingface_hub.constants as c

    reason = hub.unreachable_reason()
    assert reason and f"127.0.0.1:{dead_hub}" in reason
    before = c.HF_HUB_OFFLINE
    with hub.hub_access("someone/model") as why:
        assert why == reason and c.HF_HUB_OFFLINE is True
    assert c.HF_HUB_OFFLINE == before
    with hub.hub_access(".") as why:  # a local path never probes
        assert why is None


def test_env_offline_and_proxy(monkeypatch, dead_hub):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert hub.unreachable_reason() == "HF_HUB_OFFLINE is set"
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.invalid:3128")
    assert hub.unreachable_reason() is None  # through a proxy a direct probe says nothing


def _count_connections(monkeypatch, port: int) -> list[tuple]:
    """Every TCP connection this process tries to ``127.0.0.1:port`` from now on (the hub's endpoint)."""
    tried: list[tuple] = []
    connect = socket.socket.connect

    def counted(self, address):
        if isinstance(address, tuple) and address[1:2] == (port,):
            tried.append(address)
        return connect(self, address)

    monkeypatch.setattr(socket.socket, "connect", counted)
    return tried


def test_unreachable_hub_dataset_fails_fast_and_clearly(dead_hub, tmp_path, monkeypatch):
    """Fast: one probe of the endpoint, then the libraries' offline mode, so no request is retried
    (before the probe, datasets retried with back-off for minutes)."""
    from openmind_core.data import HubUnreachableError, download
    from schemas.config import DataConfig

    tried = _count_connections(monkeypatch, dead_hub)
    cfg = DataConfig(source="hf", hf={"name": "someone/not-a-cached-dataset", "split": "train[:10]"})
    with pytest.raises(HubUnreachableError, match=r"someone/not-a-cached-dataset.*unreachable \(no connection to 127\.0\.0\.1"):
        download(cfg, tmp_path / "lake")
    assert tried == [("127.0.0.1", dead_hub)]  # the probe, and nothing after it


def test_unreachable_hub_model_and_tokenizer_fail_clearly(dead_hub):
    from openmind_core.model.language import language_model_config
    from openmind_core.model.tokenizer import build_tokenizer

    with pytest.raises(OSError, match=r"lm.name_or_path 'someone/llm'.*hub is unreachable.*not in the local cache"):
        language_model_config(SimpleNamespace(name_or_path="someone/llm", gguf_file=None), None)
    with pytest.raises(OSError, match=r"tokenizer.name_or_path 'someone/llm'.*hub is unreachable"):
        build_tokenizer(SimpleNamespace(name_or_path="someone/llm", gguf_file=None, image_token="<image>"))
