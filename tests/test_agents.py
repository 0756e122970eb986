"""Tool calls as served and the agent loop, against the project's own tiny model that has memorised a few
tool conversations (tests/conftest.py): a real model, the real gateway and `transformers serve`."""

import json

import pytest
from conftest import DOCS, run_invoke, tiny_tools, tool_conversations
from openai import BadRequestError, OpenAI

from onestop.agents.loop import Endpoint, run_task

pytestmark = pytest.mark.slow  # one tiny training run and one server, shared by the whole module


@pytest.fixture(scope="module")
def client(tool_deployment):
    return OpenAI(base_url=tool_deployment.base_url, api_key="-", max_retries=0)


@pytest.fixture(scope="module")
def endpoint(tool_deployment):
    return Endpoint(tool_deployment.base_url, tool_deployment.name)


SCHEMAS = [tool.openai_schema() for tool in tiny_tools()]
QUESTION = [{"role": "user", "content": "What is 17 times 23?"}]


def test_a_served_tool_call_has_the_openai_shape(tool_deployment, client):
    reply = client.chat.completions.create(
        model=tool_deployment.name, messages=QUESTION, tools=SCHEMAS, max_tokens=64, temperature=0
    )
    choice = reply.choices[0]
    assert choice.finish_reason == "tool_calls"
    (call,) = choice.message.tool_calls
    assert call.type == "function" and call.id and call.function.name == "calculator"
    assert json.loads(call.function.arguments) == {"expression": "17 * 23"}


def test_streamed_tool_calls_arrive_as_deltas_the_sdk_reads(tool_deployment, client):
    stream = client.chat.completions.create(
        model=tool_deployment.name, messages=QUESTION, tools=SCHEMAS, max_tokens=64, temperature=0, stream=True
    )
    calls, finish = {}, None
    for chunk in stream:
        assert chunk.model == tool_deployment.name
        for delta in chunk.choices[0].delta.tool_calls or []:
            entry = calls.setdefault(delta.index, {"id": None, "name": "", "arguments": ""})
            entry["id"] = delta.id or entry["id"]
            entry["name"] += delta.function.name or ""
            entry["arguments"] += delta.function.arguments or ""
        finish = chunk.choices[0].finish_reason or finish
    assert finish == "tool_calls" and len(calls) == 1
    assert calls[0]["name"] == "calculator" and json.loads(calls[0]["arguments"]) == {"expression": "17 * 23"}


def test_the_answer_after_a_tool_result_is_plain_content(tool_deployment, client):
    conversation = tool_conversations()[0]["messages"]
    sent = json.loads(json.dumps(conversation[:3]))
    sent[1]["tool_calls"][0]["function"]["arguments"] = json.dumps(sent[1]["tool_calls"][0]["function"]["arguments"])
    reply = client.chat.completions.create(
        model=tool_deployment.name, messages=sent, tools=SCHEMAS, max_tokens=32, temperature=0
    )
    assert reply.choices[0].message.content.strip() == "17 * 23 = 391."
    assert reply.choices[0].finish_reason == "stop" and not reply.choices[0].message.tool_calls


def test_tool_choice_none_offers_no_tools_and_required_is_refused(tool_deployment, client):
    plain = client.chat.completions.create(
        model=tool_deployment.name, messages=QUESTION, tools=SCHEMAS, tool_choice="none", max_tokens=16
    )
    assert plain.usage.prompt_tokens < 100  # the prompt without the tools' descriptions
    with pytest.raises(BadRequestError, match="cannot force a tool call"):
        client.chat.completions.create(
            model=tool_deployment.name, messages=QUESTION, tools=SCHEMAS, tool_choice="required", max_tokens=16
        )


def test_the_agent_calls_the_calculator_and_answers(endpoint):
    seen = []
    run = run_task("What is 17 times 23?", endpoint, tiny_tools(), on_step=seen.append)
    assert [(s.kind, s.name) for s in run.steps] == [
        ("tool_call", "calculator"),
        ("tool_result", "calculator"),
        ("answer", None),
    ]
    assert run.steps[1].content == "391" and run.steps[1].ok
    assert run.answer == "17 * 23 = 391." and seen == run.steps


def test_the_agent_answers_from_the_documents_with_a_citation(endpoint):
    run = run_task("How many vacation days do we get?", endpoint, tiny_tools())
    assert run.steps[0].name == "search_documents" and json.loads(run.steps[0].arguments) == {"query": "vacation days"}
    assert run.steps[1].content.startswith("handbook.md:3:")
    assert run.answer == "25 vacation days a year (handbook.md:3)."


@pytest.mark.parametrize(
    ("task", "error", "answer"),
    [
        ("What is the weather in Oslo?", "error: unknown tool 'weather'", "I cannot check the weather."),
        ("Divide 10 by 0.", "error: calculator raised ValueError", "That cannot be computed."),
        ("Add one and one.", "error:", "Two."),
    ],
)
def test_a_bad_call_goes_back_to_the_model_as_a_tool_error(endpoint, task, error, answer):
    run = run_task(task, endpoint, tiny_tools())
    result = next(s for s in run.steps if s.kind == "tool_result")
    assert result.content.startswith(error) and result.ok is False
    assert run.answer == answer


def test_the_step_limit_stops_a_model_that_keeps_calling(endpoint):
    run = run_task("Count up from one.", endpoint, tiny_tools(), max_steps=2)
    assert run.answer is None and run.stopped == "step limit"
    assert [s.kind for s in run.steps].count("tool_call") == 2


def test_invoke_agent_prints_each_step_and_saves_the_transcript(tool_deployment, tmp_path):
    transcript = tmp_path / "transcript.jsonl"
    result = run_invoke(
        "agent",
        "task=What is 17 times 23?",
        "tools=[calculator,docs_search]",
        f"agent.docs={DOCS}",
        f"agent.endpoint={tool_deployment.base_url}",
        f"agent.transcript={transcript}",
        f"hydra.run.dir={tmp_path}",
    )
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.splitlines()
    assert any("model → calculator" in line and "17 * 23" in line for line in lines)
    assert any("calculator → 391" in line for line in lines)
    assert any(line.endswith("answer: 17 * 23 = 391.") for line in lines)
    records = [json.loads(line) for line in transcript.read_text().splitlines()]
    assert [r["type"] for r in records] == ["task", "tool_call", "tool_result", "answer", "end"]
    assert records[0]["model"] == tool_deployment.name and records[-1]["answer"] == "17 * 23 = 391."


def test_invoke_agent_is_interactive_without_a_task(tool_deployment, tmp_path):
    result = run_invoke(
        "agent",
        "tools=[calculator,docs_search]",
        f"agent.docs={DOCS}",
        f"agent.endpoint={tool_deployment.base_url}",
        f"hydra.run.dir={tmp_path}",
        input_text="What is 17 times 23?\n/reset\nHello!\n/exit\n",
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "answer: 17 * 23 = 391." in result.stdout and "(conversation reset)" in result.stdout
    assert "answer: Hello! How can I help?" in result.stdout
    assert (tmp_path / "transcript.jsonl").read_text().count('"type": "task"') == 2
