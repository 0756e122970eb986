"""Where onestop finds its configs and recipes and keeps its caches.

conf/ and recipes/ are read through `onestop/shipped/`: in a wheel that folder holds copies of them, in a
checkout (editable install) it holds links to the top-level folders, so both installs find them alike.
"""

import os
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parents[1]
CONF_DIR = (PACKAGE_DIR / "shipped" / "conf").resolve()
RECIPES_DIR = (PACKAGE_DIR / "shipped" / "recipes").resolve()
# The checkout in a source tree (the tiny test model lives under it); in a wheel, the shipped folder.
PROJECT_ROOT = CONF_DIR.parent


def cache_dir() -> Path:
    """Root of onestop's caches: `$ONESTOP_HOME`, else `~/.cache/onestop`."""
    return Path(os.environ.get("ONESTOP_HOME") or Path.home() / ".cache" / "onestop")
