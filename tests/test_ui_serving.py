"""Deploy & chat and Evaluate pages in a real Chromium: the tiny tool model served by the real gateway,
a streamed chat with a tool call, feedback written to the store, and an `invoke eval` run from the page."""

import json

import pytest
from conftest import TINY_DATA

from onestop.core.paths import PROJECT_ROOT

pytestmark = pytest.mark.slow  # the shared tool model and a real `invoke eval` process


@pytest.fixture(scope="module")
def home(tool_deployment):
    """The UI sees the tool model's deployment (its state file is in a home of its own) and keeps feedback there."""
    folder = tool_deployment.state_file.parent.parent
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("ONESTOP_HOME", str(folder))
        yield folder


def test_the_deploy_page_lists_the_running_deployment(ui_server, page, tool_deployment, home):
    page.goto(ui_server.url + "/deploy")
    row = page.locator(f'#deployments tr[data-name="{tool_deployment.name}"]')
    assert tool_deployment.base_url in row.inner_text() and row.locator(".status").inner_text() == "ok"
    assert "invoke deploy.status" in page.locator(".commands").inner_text()


def test_a_streamed_chat_with_a_tool_call_and_its_feedback(ui_server, page, tool_deployment, home):
    page.goto(ui_server.url + f"/deploy/chat?name={tool_deployment.name}")
    for tool in ("calculator", "docs_search"):  # what the tiny model was trained with, in this order
        page.check(f"input[name=tool][value={tool}]")

    page.fill("#prompt", "Hello!")
    with page.expect_response(lambda r: "/deploy/chat/completions" in r.url) as answer:
        page.click("#send")
    assert answer.value.headers["content-type"].startswith("text/event-stream")
    first = page.locator(".msg.assistant").first
    first.locator(".feedback").wait_for()
    assert first.locator(".content").inner_text() == "Hello! How can I help?"
    first.locator(".correction").fill("Hi! What can I do for you?")
    first.locator(".rate-bad").click()
    page.wait_for_function("document.querySelector('.feedback-status').textContent.startsWith('saved')")

    page.click("#reset")
    page.fill("#prompt", "What is 17 times 23?")
    page.click("#send")
    page.locator(".run-tools").click()
    page.wait_for_function("document.querySelectorAll('.msg.assistant .feedback').length === 2")
    assert page.locator(".tool-call").inner_text().endswith('calculator({"expression": "17 * 23"})')
    assert page.locator(".msg.tool .content").inner_text() == "391"
    final = page.locator(".msg.assistant").last
    assert final.locator(".content").inner_text() == "17 * 23 = 391."
    final.locator(".rate-good").click()
    page.wait_for_function("document.getElementById('feedback-sizes').textContent.startsWith('2 conversation')")
    assert "'What is 17 times 23?'" in page.locator("#snippet").inner_text()

    folder = home / "feedback" / tool_deployment.name
    rows = [json.loads(line) for line in (folder / "messages.jsonl").read_text().splitlines()]
    assert rows[0]["messages"][-1] == {"role": "assistant", "content": "Hi! What can I do for you?"}
    assert [m["role"] for m in rows[1]["messages"]] == ["user", "assistant", "tool", "assistant"]
    (pair,) = [json.loads(line) for line in (folder / "preference.jsonl").read_text().splitlines()]
    assert pair["chosen"] == "Hi! What can I do for you?" and pair["rejected"] == "Hello! How can I help?"


def test_the_evaluate_page_runs_invoke_eval_and_shows_the_scores(ui_server, ui_runs, page):
    page.goto(ui_server.url + "/evaluate")
    page.check(f"input[name=run][value='{ui_runs.ref}']")
    page.select_option("#suite", "qa")
    page.fill("#path", str(TINY_DATA.relative_to(PROJECT_ROOT)))
    page.fill("#limit", "2")
    page.fill("#extra", "eval.max_new_tokens=4 logger=none")
    command = page.locator("#eval-command").inner_text()
    assert command.startswith(f"invoke eval run_dir={ui_runs.run.path} eval=qa eval.path=")
    page.click("#evaluate")
    page.locator("#eval-table").wait_for(timeout=300_000)
    assert page.locator(".commands").inner_text().startswith("Same from a terminal")
    assert "$ invoke eval run_dir=" in page.locator("#log").inner_text()
    assert "qa / exact_match" in page.locator("#eval-table").inner_text()
    assert page.locator("#eval-chart").evaluate("image => image.complete && image.naturalWidth > 0")
