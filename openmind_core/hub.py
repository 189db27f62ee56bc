"""Hugging Face hub access that fails in seconds, not minutes, when the hub cannot be reached.

Offline, ``huggingface_hub`` retries every request with back-off: ``datasets.load_dataset`` of an
unreachable hub id took 2 min 20 s to fail here, ``AutoConfig.from_pretrained`` 30 s.  Before a
hub id is loaded, :func:`hub_access` opens one TCP connection to the hub's endpoint (``HF_ENDPOINT``,
default ``https://huggingface.co``; 3 s timeout, once per process).  When that fails, the load runs
in the libraries' own offline mode, so a data set or model in the local cache still loads, and one
that is not fails at once; the caller names the reason.

Where a proxy is configured (``HTTPS_PROXY``, ``ALL_PROXY``) a direct connection says nothing, so no
probe is made.  ``HF_HUB_OFFLINE=1`` (or ``HF_DATASETS_OFFLINE=1``) is offline mode without a probe.
"""

from __future__ import annotations

import functools
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlparse

PROBE_TIMEOUT_S = 3.0
_TRUE = ("1", "true", "yes", "on")


def env_offline() -> bool:
    """``HF_HUB_OFFLINE`` or ``HF_DATASETS_OFFLINE`` is set to a true value."""
    return any(os.environ.get(k, "0").strip().lower() in _TRUE for k in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))


def endpoint() -> tuple[str, int]:
    """Host and port of the hub (``HF_ENDPOINT`` or huggingface.co)."""
    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    return url.hostname or "huggingface.co", url.port or (80 if url.scheme == "http" else 443)


def _proxied() -> bool:
    return any(os.environ.get(k) for k in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"))


@functools.lru_cache(maxsize=4)
def _probe(host: str, port: int) -> str | None:
    try:
        socket.create_connection((host, port), timeout=PROBE_TIMEOUT_S).close()
        return None
    except OSError as e:
        return f"no connection to {host}:{port}: {e.strerror or e}"


def unreachable_reason() -> str | None:
    """Why the hub cannot be reached (offline mode set, or the connection failed), or None."""
    if env_offline():
        return "HF_HUB_OFFLINE is set"
    if _proxied():
        return None
    return _probe(*endpoint())


def is_local(name_or_path: str | os.PathLike) -> bool:
    return Path(str(name_or_path)).expanduser().exists()


@contextmanager
def offline_mode() -> Iterator[None]:
    """The libraries' offline mode for the block, also where they read ``HF_HUB_OFFLINE`` at import."""
    import huggingface_hub.constants as hub_constants  # start-up cost: only where a hub is reached

    targets = [hub_constants]
    try:
        import datasets.config as datasets_config

        targets.append(datasets_config)
    except ImportError:  # datasets is not needed to load a model
        pass
    saved = [t.HF_HUB_OFFLINE for t in targets]
    for t in targets:
        t.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        for t, v in zip(targets, saved):
            t.HF_HUB_OFFLINE = v


def unreachable_error(subject: str, reason: str, instead: str) -> OSError:
    """The one wording of a load that failed because the hub is unreachable and the cache lacks it."""
    return OSError(f"cannot load {subject}: the Hugging Face hub is unreachable ({reason}) and it is not in "
                   f"the local cache; {instead}")


@contextmanager
def hub_access(name_or_path: str | os.PathLike) -> Iterator[str | None]:
    """Around a ``from_pretrained`` / ``load_dataset`` of ``name_or_path``: yields why the hub is
    unreachable (the block then runs in offline mode: the local cache only), or None when it is
    reachable or ``name_or_path`` is a local path."""
    if is_local(name_or_path):
        yield None
        return
    reason = unreachable_reason()
    if reason is None:
        yield None
        return
    with offline_mode():
        yield reason
