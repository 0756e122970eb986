"""Environment variables that are set but empty count as unset.

CI systems and shell profiles leave `HF_HOME=` or `WANDB_MODE=` behind. The libraries read them as values:
huggingface_hub takes an empty HF_HOME for the current directory and writes its cache there, W&B rejects
an empty WANDB_MODE with a validation traceback. Every task drops them before anything reads them.
"""

import os

PREFIXES = ("HF_", "HUGGINGFACE_", "TRANSFORMERS_", "WANDB_", "ONESTOP_", "TORCH_HOME", "XDG_CACHE_HOME")


def drop_empty_variables() -> list[str]:
    """Remove the set-but-empty variables onestop and its libraries read; returns their names."""
    empty = [name for name, value in os.environ.items() if name.startswith(PREFIXES) and not value.strip()]
    for name in empty:
        del os.environ[name]
    return empty


def debugging() -> bool:
    """ONESTOP_DEBUG=1: user errors print their traceback too."""
    return (os.environ.get("ONESTOP_DEBUG") or "").strip().lower() not in ("", "0", "false", "no")
