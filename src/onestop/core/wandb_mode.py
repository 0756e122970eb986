"""The one decision of whether a W&B run logs online or offline, for every stage that logs."""

import netrc
import os
from urllib.parse import urlparse

OFFLINE_MODES = {"offline", "dryrun"}


def wandb_credentials_present() -> bool:
    """True when W&B can authenticate: WANDB_API_KEY or a netrc entry for the W&B host."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL") or "https://api.wandb.ai").hostname
    try:
        return netrc.netrc().authenticators(host) is not None
    except (FileNotFoundError, netrc.NetrcParseError):
        return False


def wandb_mode(offline: bool | None = None) -> str:
    """`online`, `offline` or `disabled` for a W&B run about to start, with the environment made fit for W&B.

    `offline` forces a mode; None decides: WANDB_MODE when it names one, else offline without credentials.
    Set-but-empty WANDB_* variables (CI systems and shell profiles leave them) count as unset and are
    removed, because W&B rejects an empty WANDB_MODE with a validation traceback.
    """
    for name in [n for n, value in os.environ.items() if n.startswith("WANDB_") and not value.strip()]:
        del os.environ[name]
    os.environ.setdefault("WANDB_SILENT", "true")
    if offline is not None:
        return "offline" if offline else "online"
    requested = os.environ.get("WANDB_MODE", "").strip().lower()
    if requested == "disabled":
        return "disabled"
    if requested in OFFLINE_MODES or not wandb_credentials_present():
        return "offline"
    return "online"
