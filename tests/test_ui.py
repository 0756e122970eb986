"""The web UI (`invoke ui`) in a real Chromium: runs, a run's page, compare, a run started from the form, data
preview; and who may ask it what (token, path escapes) over plain HTTP. Fixtures: tests/ui_browser.py."""

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from conftest import TINY_DATA, run_invoke
from ui_browser import serve_app

from onestop.core.errors import OnestopError
from onestop.core.paths import PROJECT_ROOT
from onestop.deploy.service import stop as stop_deployments
from onestop.evaluation.runs import list_runs
from onestop.ui.app import create_app
from onestop.ui.server import ui_token

# Every case shares one trained and evaluated tiny run and one browser: about 1.5 minutes before the first
# case, so the module runs with the slow cases (the quick check stays under 5 minutes).
pytestmark = pytest.mark.slow


def loaded(page, selector: str) -> int:
    """naturalWidth of an <img> once it has loaded: 0 means a broken image."""
    handle = page.wait_for_selector(selector)
    page.wait_for_function("img => img.complete", arg=handle)
    return page.evaluate("img => img.naturalWidth", handle)


def test_runs_page_lists_the_run_and_its_page_shows_curves_evaluation_and_recipe(ui_server, ui_runs, page):
    page.goto(ui_server.url + "/")
    row = page.locator(f'tr[data-run="{ui_runs.ref}"]')
    assert row.locator(".status").inner_text() == "finished"
    assert "tiny" in row.inner_text() and "lora" in row.inner_text()
    assert "qa/" in row.inner_text()  # the evaluation's scores
    row.locator("a").click()
    page.wait_for_url(f"**/run/{ui_runs.ref}")
    assert loaded(page, "#loss-chart") > 0
    assert loaded(page, "#lengths-chart") > 0
    assert "train records" in page.locator("#data-report").inner_text().replace("_", " ")
    assert page.locator(".card.eval table").first.inner_text().count("qa") >= 1
    assert "provenance:" in page.locator("#recipe").inner_text()
    assert f"invoke deploy run_dir={ui_runs.run.path}" in page.locator(".commands").inner_text()


def test_compare_overlays_the_curves_and_diffs_the_recipes(ui_server, ui_runs, page, tmp_path):
    twin = ui_runs.root / "train" / "tiny-lora-copy"
    shutil.copytree(ui_runs.run.path, twin)
    recipe = (twin / "recipe.yaml").read_text()
    (twin / "recipe.yaml").write_text(recipe.replace("seed: 42", "seed: 7", 1))
    try:
        page.goto(ui_server.url + "/")
        page.check(f'input[value="{ui_runs.ref}"]')
        page.check('input[value="0/train/tiny-lora-copy"]')
        page.click("#compare")
        page.wait_for_url("**/compare?**")
        assert loaded(page, "#loss-chart") > 0
        assert page.locator("#compare-table tr").first.locator("th").count() == 3
        diff = page.locator("table.diff").inner_text()
        assert "seed" in diff and "42" in diff and "7" in diff
        assert "invoke recipe.diff" in page.locator(".commands").inner_text()
    finally:
        shutil.rmtree(twin)


def test_the_form_shows_the_command_and_puts_errors_on_their_field(ui_server, page):
    page.goto(ui_server.url + "/new?model=tiny&hardware=cpu&data=alpaca")
    page.fill('[id="f-trainer.max_steps"]', "3")
    page.wait_for_function("document.querySelector('.commands pre').textContent.includes('trainer.max_steps=3')")
    command = page.locator(".commands pre").inner_text()
    assert command.startswith("invoke train model=tiny") and "hardware=cpu" in command
    page.fill('[id="f-optim.lr"]', "abc")
    field = page.locator('.field[data-key="optim.lr"]')
    page.wait_for_function("document.querySelector('.field[data-key=\"optim.lr\"]').classList.contains('invalid')")
    assert "expected float" in field.locator(".error").inner_text()
    page.wait_for_function("!document.getElementById('estimate').textContent.includes('…')", timeout=60_000)


def test_a_run_started_from_the_form_is_stopped_and_resumed_and_a_finished_run_is_served_and_chats(
    ui_server, ui_runs, page, tmp_path, monkeypatch
):
    """The loop of the page: a run from the form, stopped and resumed from its page; then a finished run served
    from the Deploy page and chatted with. The run from the form asks for far more steps than it gets to, so
    that however fast the machine, it is still training when Stop is pressed."""
    monkeypatch.setenv("ONESTOP_HOME", str(tmp_path / "home"))  # the deployment's state, apart from any other
    page.goto(ui_server.url + "/new?model=tiny&hardware=cpu&data=alpaca&logger=csv")
    page.fill('[id="f-data.path"]', str(TINY_DATA))
    page.fill('[id="f-data.batch_size"]', "4")
    page.fill('[id="f-trainer.max_steps"]', "100000")
    page.fill('[id="f-trainer.max_epochs"]', "")
    page.fill('[id="f-trainer.log_every_n_steps"]', "1")
    page.fill("#f-run_dir", "train/from-form")
    page.click("#start-run")
    page.wait_for_url("**/run/0/train/from-form")
    run = ui_runs.root / "train" / "from-form"
    assert (run / "train.log").read_text().startswith("$ invoke train model=tiny data=alpaca hardware=cpu logger=csv")
    stopped_at = 0
    for attempt in ("started", "resumed"):
        # training (not starting up) when Stop is pressed: past the step the last stop saved
        page.wait_for_function(
            f"(document.getElementById('live-steps').textContent.match(/step (\\d+)/) || [0, 0])[1] > {stopped_at}",
            timeout=180_000,
        )
        page.click("#stop")
        page.wait_for_selector("#live-status.resumable", timeout=180_000)
        assert (run / "checkpoints" / "sigint.ckpt").is_file(), attempt
        last_command = (run / "train.log").read_text().split("\n$ ")[-1]
        assert "stopped by SIGINT" in last_command, attempt
        stopped_at = int(page.locator("#live-steps").inner_text().split()[-1])
        if attempt == "started":
            page.click("#resume")
            page.wait_for_selector("#live-status.running", timeout=60_000)
        else:
            assert "resume=auto" in last_command.splitlines()[0]
            assert "resuming from " in last_command and "sigint.ckpt" in last_command
    assert not (run / "metrics.json").exists(), "a stopped run exports nothing"

    page.goto(ui_server.url + "/deploy")
    page.select_option("#run", ui_runs.ref)
    page.click("#start")
    name = ui_runs.run.name
    try:
        page.locator(f'#deployments tr[data-name="{name}"] .status').wait_for(timeout=300_000)
        page.goto(ui_server.url + f"/deploy/chat?name={name}")
        page.fill("#prompt", "Hello!")
        with page.expect_response(lambda r: "/deploy/chat/completions" in r.url) as answer:
            page.click("#send")
        assert answer.value.headers["content-type"].startswith("text/event-stream")
        page.locator(".msg.assistant .feedback").first.wait_for(timeout=120_000)
        assert page.locator(".msg.assistant").count() == 1
    finally:
        with contextlib.suppress(OnestopError):  # none came up: the failure above says why
            stop_deployments(name)


def test_data_preview_highlights_the_tokens_that_carry_loss(ui_server, page):
    page.goto(ui_server.url + "/data")
    page.fill("#f-path", "tests/assets/alpaca_small.jsonl")
    page.select_option("#f-model", "tiny")
    page.select_option("#f-data", "alpaca")
    page.click("#preview")
    page.wait_for_selector(".example")
    first = page.locator(".example").first
    answers = first.locator(".tok.loss").inner_text()
    context = first.locator(".tok:not(.loss)").inner_text()
    assert answers.startswith("Paris.") and "<|im_end|>" in answers  # the answer and its end-of-turn marker
    assert "What is the capital of France?" in context and "Paris" not in context
    assert "20" in page.locator("#data-report").inner_text()
    assert "invoke data.prepare model=tiny data=alpaca" in page.locator(".commands").inner_text()


def test_beyond_loopback_a_token_is_required(ui_runs, monkeypatch):
    monkeypatch.delenv("ONESTOP_UI_TOKEN", raising=False)
    with pytest.raises(OnestopError, match="needs a token"):
        ui_token("0.0.0.0", None)
    assert ui_token("127.0.0.1", None) is None
    app = create_app([ui_runs.root], PROJECT_ROOT, token="s3cret")
    with serve_app(app) as url:
        assert httpx.get(url + "/").status_code == 401
        assert httpx.get(url + "/", headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert httpx.get(url + "/", headers={"Authorization": "Bearer s3cret"}).status_code == 200
        with httpx.Client(base_url=url) as client:
            first = client.get("/?token=s3cret")
            assert first.status_code == 303 and first.headers["location"] == "/"
            assert client.get("/").status_code == 200  # the cookie carries it
            assert client.get("/static/style.css").status_code == 200


def test_invoke_ui_refuses_to_listen_beyond_loopback_without_a_token():
    result = run_invoke("ui", "--host", "0.0.0.0", unset=("ONESTOP_UI_TOKEN",), timeout=120)
    assert result.returncode == 2
    assert "serving beyond this machine needs a token; set ONESTOP_UI_TOKEN or pass --token" in result.stderr


def test_paths_outside_the_project_and_run_folders_are_refused(ui_server, ui_runs, tmp_path):
    outside = tmp_path / "secret.jsonl"
    outside.write_text('{"instruction": "x", "output": "y"}\n')
    link = ui_runs.root / "escape"
    os.symlink(tmp_path, link)
    try:
        with httpx.Client(base_url=ui_server.url) as client:
            for url in (
                f"/data?path={outside}",
                "/data?path=../../../../etc/passwd",
                f"/data?path={link}/secret.jsonl",
                "/run/0/..%2F..%2F..%2Fetc",
                "/chart/loss.png?run=0/../../..",
            ):
                assert client.get(url).status_code in (403, 404), url
            assert client.get(f"/run-file/{ui_runs.ref}/config.yaml").status_code == 404  # only the charts
            assert client.get(f"/run-file/{ui_runs.ref}/data_lengths.png").status_code == 200
    finally:
        link.unlink()


def test_invoke_runs_lists_what_the_runs_page_shows(ui_runs):
    result = run_invoke("runs", "--runs", str(ui_runs.root), "--json")
    assert result.returncode == 0, result.stderr
    (row,) = [r for r in json.loads(result.stdout) if r["path"] == str(ui_runs.run.path)]
    assert row["status"] == "finished" and row["model"] == "tiny"
    assert row["steps"] == ui_runs.run.metrics()["steps"] and row["val_loss"] == ui_runs.run.metrics()["val_loss"]
    assert any(name.startswith("qa/") for name in row["evals"])


def test_invoke_ui_prints_its_address_and_serves_there(ui_runs):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    invoke = Path(sys.executable).parent / "invoke"
    command = [str(invoke), "ui", "--port", str(port), "--runs", str(ui_runs.root)]
    server = subprocess.Popen(command, cwd=PROJECT_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        line = server.stdout.readline()
        assert line.startswith(f"onestop ui: http://127.0.0.1:{port}/"), line
        for _ in range(100):
            try:
                page = httpx.get(f"http://127.0.0.1:{port}/")
                break
            except httpx.ConnectError:
                time.sleep(0.1)
        assert page.status_code == 200 and ui_runs.ref in page.text
    finally:
        server.send_signal(signal.SIGINT)
        server.wait(timeout=30)


def test_a_run_with_a_damaged_config_is_listed_as_unreadable_with_the_reason(tmp_path):
    damaged = tmp_path / "runs" / "damaged"
    damaged.mkdir(parents=True)
    (damaged / "config.yaml").write_text("model: [unclosed\n")
    (row,) = list_runs([tmp_path / "runs"])
    assert row.status == "unreadable" and "config.yaml" in row.error and row.path == damaged
