"""`invoke ui.screenshots`: a PNG of each page of the UI, for docs/ui.md.

Two tiny runs are trained (and one evaluated) in a temporary folder, the app serves them on a free loopback
port, and Debian's Chromium (/usr/bin/chromium, driven by Playwright) photographs each page.
"""

# Lazy imports: playwright (inside take_screenshots).

import socket
import tempfile
import threading
import time
from pathlib import Path

import uvicorn

from onestop.config.compose import compose
from onestop.core.errors import OnestopError
from onestop.core.paths import PROJECT_ROOT
from onestop.evaluation.run import run_eval
from onestop.training.train import train
from onestop.ui.app import create_app

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run"]
TINY_DATA = PROJECT_ROOT / "tests" / "assets" / "alpaca_small.jsonl"
TINY = ["model=tiny", "hardware=cpu", "data=alpaca", f"data.path={TINY_DATA}", "data.batch_size=4", "logger=csv"]


def take_screenshots(output: str = "docs/images") -> list[Path]:
    """ui-runs.png, ui-run.png, ui-compare.png, ui-new.png, ui-data.png in `output`."""
    if not CHROMIUM.is_file():
        raise OnestopError(f"{CHROMIUM}: not found; install Chromium (apt-get install chromium)")
    if not TINY_DATA.is_file():
        raise OnestopError(f"{TINY_DATA}: not found; run this from a checkout of onestop")
    from playwright.sync_api import sync_playwright

    target = Path(output)
    target.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="onestop-ui-") as folder:
        root = Path(folder) / "runs"
        for name, lr in (("lora-lr2e-4", "2e-4"), ("lora-lr1e-3", "1e-3")):
            run_dir = root / "train" / name
            train(compose("train", [*TINY, "trainer.max_steps=20", f"optim.lr={lr}", f"hydra.run.dir={run_dir}"]))
        evaluation = [f"run_dir={run_dir}", "eval=qa", f"eval.path={TINY_DATA}", "logger=none", "eval.limit=4"]
        run_eval(compose("eval", [*evaluation, "eval.max_new_tokens=8"]))
        pages = {
            "ui-runs.png": "/",
            "ui-run.png": "/run/0/train/lora-lr1e-3",
            "ui-compare.png": "/compare?run=0/train/lora-lr2e-4&run=0/train/lora-lr1e-3",
            "ui-new.png": "/new?model=tiny&hardware=cpu&data=alpaca&logger=csv"
            f"&data.path={TINY_DATA.relative_to(PROJECT_ROOT)}&trainer.max_steps=50",
            "ui-data.png": f"/data?path={TINY_DATA.relative_to(PROJECT_ROOT)}&model=tiny&data=alpaca&limit=3",
        }
        written = []
        with _served(create_app([root], PROJECT_ROOT, None)) as url, sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            for name, path in pages.items():
                page.goto(url + path)
                page.wait_for_load_state("networkidle")
                if name == "ui-new.png":
                    page.wait_for_function("!document.getElementById('estimate').textContent.includes('…')")
                page.screenshot(path=str(target / name), full_page=name != "ui-new.png")
                written.append(target / name)
                print(target / name, flush=True)
            browser.close()
    return written


class _served:
    """The app on a free loopback port in a background thread, for the length of a `with` block."""

    def __init__(self, app):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def __enter__(self) -> str:
        self.thread.start()
        while not self.server.started:
            time.sleep(0.05)
        return f"http://127.0.0.1:{self.sock.getsockname()[1]}"

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
        self.sock.close()
