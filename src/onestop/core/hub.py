"""Whether the Hugging Face Hub can be reached from here."""

import os
import socket
from urllib.parse import urlparse


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the Hugging Face Hub answers on TCP; honours HF_HUB_OFFLINE and HF_ENDPOINT (empty = unset)."""
    if (os.environ.get("HF_HUB_OFFLINE") or "0").lower() in {"1", "true", "yes"}:
        return False
    endpoint = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    port = endpoint.port or (443 if endpoint.scheme == "https" else 80)
    try:
        with socket.create_connection((endpoint.hostname, port), timeout=timeout):
            return True
    except OSError:
        return False
