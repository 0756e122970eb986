"""The tools and agent suites: their files checked row by row, their scores, and the tiny tool model scored
in-process, as served, and through the agent loop (tests/conftest.py: `tool_run`, `tool_deployment`)."""

import json
from pathlib import Path

import pytest
from conftest import DOCS, run_invoke, tiny_tools, tool_conversations

from onestop.agents.evaluate import read_agent_tasks
from onestop.config.compose import compose as compose_config
from onestop.core.errors import OnestopError
from onestop.evaluation.run import evaluate
from onestop.evaluation.tool_calls import Reply, read_tool_rows, same_value, score_replies

SCHEMAS = [tool.openai_schema() for tool in tiny_tools()]
QUESTION = [{"role": "user", "content": "What is 17 times 23?"}]
GOOD_ROW = {
    "messages": QUESTION,
    "tools": SCHEMAS,
    "expected": {"name": "calculator", "arguments": {"expression": "1"}},
}


def write_rows(path: Path, *rows) -> Path:
    path.write_text("".join((row if isinstance(row, str) else json.dumps(row)) + "\n" for row in rows))
    return path


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ("[1, 2]", "expected an object with messages, tools and expected"),
        ({"tools": SCHEMAS, "expected": None}, "expected `messages`"),
        ({"messages": [{"content": "hi"}], "tools": SCHEMAS, "expected": None}, "expected `messages`"),
        ({"messages": QUESTION, "tools": [], "expected": None}, "expected `tools`"),
        ({"messages": QUESTION, "tools": [{"type": "function"}], "expected": None}, "expected `tools`"),
        ({"messages": QUESTION, "tools": SCHEMAS}, "expected `expected`"),
        ({"messages": QUESTION, "tools": SCHEMAS, "expected": "calculator"}, "`expected` must be null or"),
        ({"messages": QUESTION, "tools": SCHEMAS, "expected": {"name": "calculator"}}, "`expected` must be null or"),
        (
            {"messages": QUESTION, "tools": SCHEMAS, "expected": {"name": "weather", "arguments": {}}},
            "expected call 'weather' is not among the row's tools (calculator, search_documents)",
        ),
        ("{not json", "not valid JSON"),
    ],
)
def test_a_bad_tool_row_fails_with_its_file_and_line(tmp_path, bad, message):
    path = write_rows(tmp_path / "tools.jsonl", GOOD_ROW, bad)
    with pytest.raises(OnestopError) as failure:
        read_tool_rows(path)
    assert str(failure.value).startswith(f"{path}:2: ") and message in str(failure.value), failure.value


def test_a_bad_agent_task_fails_with_its_file_and_line(tmp_path):
    good = {"task": "What is 17 times 23?", "answer": "391", "tools": ["calculator"]}
    for bad, message in [
        ({"task": "What is 2 + 2?"}, "expected `answer`"),
        ({"task": " ", "answer": "4"}, "expected `task`"),
        ({"task": "Weather?", "answer": "sun", "tools": "weather"}, "`tools` must be a list"),
        ({"task": "Weather?", "answer": "sun", "tools": ["weather"]}, "needs weather, which eval.tools does not"),
    ]:
        path = write_rows(tmp_path / "tasks.jsonl", good, bad)
        with pytest.raises(OnestopError) as failure:
            read_agent_tasks(path, ["calculator", "search_documents"])
        assert str(failure.value).startswith(f"{path}:2: ") and message in str(failure.value), failure.value
    assert read_agent_tasks(write_rows(tmp_path / "ok.jsonl", good), ["calculator"])[0]["answer"] == "391"


def test_invoke_eval_sends_an_agent_suite_to_the_agent_loop(tmp_path):
    tasks = write_rows(tmp_path / "tasks.jsonl", {"task": "What time is it?", "answer": "12", "tools": ["clock"]})
    result = run_invoke("eval", "eval=agent", f"eval.path={tasks}", "logger=none", f"hydra.run.dir={tmp_path / 'out'}")
    assert result.returncode == 2, result.stderr[-2000:]
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(f"onestop eval: error: {tasks}:1: the task needs clock, which eval.tools does not offer")
    assert "(calculator, current_datetime, search_documents, convert_units)" in last  # the demo's four, in order


def test_tool_call_scores():
    assert same_value(62, 62.0) and same_value(" cm ", "cm") and not same_value("62", 62) and not same_value(True, 1)
    calculator = {"name": "calculator", "arguments": {"expression": "1 + 1"}}
    rows = [
        {
            "line": 1,
            "messages": QUESTION,
            "expected": {"name": "convert_units", "arguments": {"value": 62, "to": "cm"}},
        },
        {"line": 2, "messages": QUESTION, "expected": calculator},
        {"line": 3, "messages": QUESTION, "expected": calculator},
        {"line": 4, "messages": QUESTION, "expected": None},
        {"line": 5, "messages": QUESTION, "expected": None},
        {"line": 6, "messages": QUESTION, "expected": calculator},
    ]
    replies = [
        Reply("", [{"name": "convert_units", "arguments": {"value": 62.0, "to": "cm "}}], [True]),
        Reply("", [{"name": "calculator", "arguments": {"expression": "1+1"}}], [True]),
        Reply("", [{"name": "convert_units", "arguments": {"expression": "1 + 1"}}], [False]),
        Reply("Hello!", [], []),
        Reply("", [{"name": "calculator", "arguments": {}}], [True]),
        Reply("", [], [], error="InternalServerError: Error code: 502"),  # a call the server could not read
    ]
    metrics, samples = score_replies(rows, replies)
    values = {name: score["value"] for name, score in metrics.items()}
    assert values == {
        "name_accuracy": 0.5,
        "exact_arguments": 0.25,
        "argument_accuracy": pytest.approx(2 / 5),  # the wrong tool's matching argument does not count
        "no_call_accuracy": 0.5,
        "call_accuracy": pytest.approx(2 / 6),
        "valid_shape": 0.75,
        "server_errors": pytest.approx(1 / 6),
    }
    assert metrics["call_accuracy"]["stderr"] == pytest.approx(((1 / 3) * (2 / 3) / 5) ** 0.5)  # binomial, n - 1
    assert samples[3] == {
        "line": 4,
        "prompt": QUESTION,
        "expected": None,
        "predicted": [],
        "content": "Hello!",
        "scores": {"no_call_accuracy": 1.0, "call_accuracy": 1.0},
        "valid_shape": [],
    }
    assert samples[5]["error"].startswith("InternalServerError") and samples[5]["scores"]["name_accuracy"] == 0


def memorised_suite(path: Path) -> Path:
    """The first user turn of each memorised conversation, expecting its first call (None for the greeting);
    the 'weather' conversation calls a tool it is not offered, which a suite row cannot expect."""
    rows = []
    for conversation in tool_conversations():
        messages, offered = conversation["messages"], {t["function"]["name"] for t in conversation["tools"]}
        call = next((m["tool_calls"][0]["function"] for m in messages if m.get("tool_calls")), None)
        if call is not None and call["name"] not in offered:
            continue
        expected = call and {"name": call["name"], "arguments": call["arguments"]}
        rows.append({"messages": messages[:1], "tools": conversation["tools"], "expected": expected})
    return write_rows(path, *rows)


@pytest.mark.slow  # the shared tiny tool model, trained once, and its deployment
def test_tool_calls_score_the_same_in_process_and_as_served(tool_run, tool_deployment, tmp_path):
    suite = memorised_suite(tmp_path / "memorised.jsonl")
    common = ["model=tiny", "hardware=cpu", "logger=none", "eval=tools", f"eval.path={suite}"]
    in_process = evaluate(compose_config("eval", [*common, f"run_dir={tool_run}", f"hydra.run.dir={tmp_path / 'a'}"]))
    served_at = [f"endpoint={tool_deployment.base_url}", f"endpoint_model={tool_deployment.name}", "eval.concurrency=3"]
    served = evaluate(compose_config("eval", [*common, *served_at, f"hydra.run.dir={tmp_path / 'b'}"]))

    local, remote = in_process.metrics["tools"], served.metrics["tools"]
    assert set(remote) == {*local, "valid_shape", "server_errors"} and remote["valid_shape"]["value"] == 1.0
    assert {name: score["value"] for name, score in local.items()} == {name: remote[name]["value"] for name in local}
    assert local["name_accuracy"]["value"] == 1.0 and local["no_call_accuracy"]["value"] == 1.0
    predicted = [(s["predicted"], s["content"].strip()) for s in in_process.samples["tools"]]
    assert predicted == [(s["predicted"], s["content"].strip()) for s in served.samples["tools"]]
    assert predicted[0][0] == [{"name": "calculator", "arguments": {"expression": "17 * 23"}}]

    results = json.loads((tmp_path / "a" / "results.json").read_text())
    assert results["target"]["kind"] == "run" and results["n_samples"]["tools"]["effective"] == 7
    sample = results["samples"]["tools"][0]
    assert sample["prompt"] == QUESTION and sample["expected"]["name"] == "calculator"


@pytest.mark.slow
@pytest.mark.parametrize("served", ["endpoint", "run_dir"])
def test_invoke_eval_agent_runs_tasks_through_the_agent_loop(served, tool_run, tool_deployment, tmp_path):
    tasks = write_rows(
        tmp_path / "tasks.jsonl",
        {"task": "What is 17 times 23?", "answer": "391", "tools": ["calculator"]},
        {"task": "How many vacation days do we get?", "answer": "25", "tools": ["search_documents"]},
    )
    if served == "endpoint":
        target = [f"endpoint={tool_deployment.base_url}", f"endpoint_model={tool_deployment.name}"]
    else:
        target = [f"run_dir={tool_run}", "model=tiny"]  # served for the evaluation, stopped after it
    result = run_invoke(
        "eval",
        "eval=agent",
        *target,
        f"eval.path={tasks}",
        "eval.tools=[calculator,docs_search]",  # what the tiny model was trained with
        f"eval.docs={DOCS}",
        "logger=none",
        f"hydra.run.dir={tmp_path / 'out'}",
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "answer_accuracy" in result.stdout
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    values = {name: score["value"] for name, score in results["metrics"]["agent"].items()}
    assert values == {"answer_accuracy": 1.0, "finished": 1.0, "tool_errors": 0.0, "mean_steps": 2.0}
    first = results["samples"]["agent"][0]
    assert first["answer"] == "17 * 23 = 391." and first["line"] == 1
    assert [step["kind"] for step in first["steps"]] == ["tool_call", "tool_result", "answer"]
    assert results["target"]["kind"] == served.replace("_dir", "")
