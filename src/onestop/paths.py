"""Where onestop finds its configs and keeps its caches."""

import os
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[2]
CONF_DIR = PROJECT_ROOT / "conf"
RECIPES_DIR = PROJECT_ROOT / "recipes"


def cache_dir() -> Path:
    """Root of onestop's caches: `$ONESTOP_HOME`, else `~/.cache/onestop`."""
    return Path(os.environ.get("ONESTOP_HOME") or Path.home() / ".cache" / "onestop")
