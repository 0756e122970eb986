"""Browser fixtures for the web UI (`invoke ui`): one app, one Chromium, one trained run for the whole session.

How other tests use them (tests/conftest.py loads this module as a plugin, so no import is needed):

    def test_my_page(ui_server, page):
        page.goto(ui_server.url + "/deploy")          # a real Chromium page (Playwright's sync API)
        assert page.locator("h1").inner_text() == "Deploy & chat"

- `ui_runs` — a runs folder holding one tiny LoRA run (`model=tiny hardware=cpu logger=csv`, a few steps)
  with one `eval=qa` evaluation: `ui_runs.root`, `ui_runs.run` (its RunDir), `ui_runs.ref` (its id in URLs).
- `ui_server` — `create_app([ui_runs.root], PROJECT_ROOT, token=None)` served by uvicorn in a thread on a
  free 127.0.0.1 port: `.url`, `.app`. `serve_app(app)` serves any other app the same way (a context manager).
- `browser` (session) and `page` (one fresh context per test) — Debian's /usr/bin/chromium driven by
  Playwright; tests using them skip with the reason when Chromium or Playwright is missing (CI installs it).
"""

import os
import socket
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
UI_RUN_STEPS = 6


@dataclass
class UIRuns:
    root: Path
    run: object  # RunDir
    ref: str


@dataclass
class UIServer:
    url: str
    app: object  # FastAPI


@contextmanager
def serve_app(app):
    """Serve `app` with uvicorn in a background thread on a free loopback port; yields the base URL."""
    import uvicorn

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the UI server did not start")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


@pytest.fixture(scope="session")
def ui_runs(tmp_path_factory):
    """A runs folder with one tiny trained run (and one evaluation of it), as `invoke ui --runs DIR` shows it."""
    from conftest import TINY, TINY_DATA, compose

    from onestop.config.compose import compose as compose_config
    from onestop.core.rundir import RunDir
    from onestop.evaluation.run import run_eval
    from onestop.training.train import train

    root = tmp_path_factory.mktemp("ui-runs")
    run_dir = root / "train" / "tiny-lora"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HF_HUB_OFFLINE", "1")
        patch.setenv("WANDB_MODE", "offline")
        train(compose(*TINY, "logger=csv", f"trainer.max_steps={UI_RUN_STEPS}", run_dir=run_dir))
        evaluation = [f"run_dir={run_dir}", "eval=qa", f"eval.path={TINY_DATA}", "logger=none"]
        run_eval(compose_config("eval", [*evaluation, "eval.limit=3", "eval.max_new_tokens=4"]))
    return UIRuns(root, RunDir(run_dir), "0/train/tiny-lora")


@pytest.fixture(scope="session")
def ui_server(ui_runs):
    from onestop.core.paths import PROJECT_ROOT
    from onestop.ui.app import create_app

    app = create_app([ui_runs.root], PROJECT_ROOT, token=None)
    with serve_app(app) as url:
        yield UIServer(url, app)
    for process in getattr(app.state, "processes", {}).values():  # runs a failed test left training
        if process.poll() is None:
            process.kill()
            process.wait()


@pytest.fixture(scope="session")
def browser():
    if not os.access(CHROMIUM, os.X_OK):
        pytest.skip(f"{CHROMIUM} not found: the browser tests need Debian's Chromium (apt-get install -y chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("the browser tests need the playwright package (pip install -e '.[dev]')")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            yield launched
        finally:
            launched.close()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    opened = context.new_page()
    opened.set_default_timeout(30_000)
    try:
        yield opened
    finally:
        context.close()
