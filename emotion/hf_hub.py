"""Reaching the Hugging Face Hub, or failing fast and saying what to do.

``datasets``, ``transformers`` and ``timm`` retry network calls for a long time
when the Hub is unreachable.  Every Hub access in this package first asks
:func:`hub_reachable` (one TCP connect with a short timeout); offline it uses
only the local cache (:func:`offline_hub`) or raises a message naming the fix.
"""

from __future__ import annotations

import contextlib
import os
import socket
from typing import Iterator
from urllib.parse import urlparse

HUB_TIMEOUT_S = 3.0
_TRUE = ("1", "true", "yes", "on")


def hub_endpoint() -> str:
    return os.environ.get("HF_ENDPOINT", "https://huggingface.co")


def hub_reachable(timeout: float = HUB_TIMEOUT_S) -> bool:
    """Whether a TCP connection to the Hub endpoint opens within ``timeout`` seconds."""
    if any(os.environ.get(v, "").lower() in _TRUE for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE",
                                                            "TRANSFORMERS_OFFLINE")):
        return False
    url = urlparse(hub_endpoint())
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((url.hostname or "", port), timeout=timeout):
            return True
    except OSError:
        return False


def offline_message(what: str, alternative: str) -> str:
    """The error text for a Hub download that cannot happen."""
    return (
        f"cannot reach the Hugging Face Hub ({hub_endpoint()}) to download {what}: this machine "
        f"looks offline and no cached copy was found. Download it on a connected machine "
        f"(it lands in ~/.cache/huggingface), or {alternative}."
    )


@contextlib.contextmanager
def offline_hub() -> Iterator[None]:
    """Make huggingface_hub (and so timm, transformers, datasets) use the local cache only.

    The libraries read their offline flags at import time; this switches the
    live flags for the duration of the block, so nothing waits on the network.
    """
    from huggingface_hub import constants

    patched = [(constants, "HF_HUB_OFFLINE")]
    try:
        import datasets.config as dcfg

        patched.append((dcfg, "HF_HUB_OFFLINE"))
    except ImportError:  # pragma: no cover
        pass
    saved = [(mod, name, getattr(mod, name)) for mod, name in patched]
    for mod, name in patched:
        setattr(mod, name, True)
    try:
        yield
    finally:
        for mod, name, value in saved:
            setattr(mod, name, value)
