import os
import subprocess
import sys
from pathlib import Path

import pytest

from onestop.config.compose import compose as compose_config
from onestop.core.paths import PROJECT_ROOT

ASSETS = Path(__file__).parent / "assets"
TINY_DATA = ASSETS / "alpaca_small.jsonl"
# What every tiny end-to-end run shares: the real config, shrunk to the tiny model, CPU, a few steps.
TINY = ["model=tiny", "hardware=cpu", "data=alpaca", f"data.path={TINY_DATA}", "data.batch_size=4"]


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    """No test may reach a hub or W&B's servers."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)


def compose(*overrides: str, run_dir: Path | None = None):
    extra = [f"hydra.run.dir={run_dir}"] if run_dir else []
    return compose_config("train", [*overrides, *extra])


def run_invoke(
    *args: str, cwd: Path = PROJECT_ROOT, env: dict | None = None, unset: tuple[str, ...] = (), timeout: int = 600
):
    """The real `invoke` console script of this environment, as a user types it; `unset` drops variables."""
    invoke = Path(sys.executable).parent / "invoke"
    return subprocess.run(
        [str(invoke), *args],
        cwd=cwd,
        env={name: value for name, value in {**os.environ, **(env or {})}.items() if name not in unset},
        capture_output=True,
        text=True,
        timeout=timeout,
    )
