"""The tool-use demo dataset: the committed files are what the generator writes, and every tool result is real."""

import functools
import json
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from onestop.agents.builtin import calculator, convert_units, format_datetime, search_documents
from onestop.agents.dataset import DEMO_DIR, write_dataset

CONVERSATIONS = ("tools_train.jsonl", "tools_heldout.jsonl")
TOOL_NAMES = ["calculator", "current_datetime", "search_documents", "convert_units"]
JSON_TYPES = {"string": str, "integer": int, "number": int | float, "boolean": bool}


def read_jsonl(name: str) -> list[dict]:
    return [json.loads(line) for line in (DEMO_DIR / name).read_text().splitlines()]


def first_call(record: dict) -> dict | None:
    """The function of the record's tool call ({"name", "arguments"}), None for a reply without a tool."""
    calls = [message["tool_calls"] for message in record["messages"] if message.get("tool_calls")]
    return calls[0][0]["function"] if calls else None


def schema_problems(arguments: dict, parameters: dict) -> list[str]:
    """What keeps `arguments` from validating against a tool's `parameters` schema (types, required, unknown)."""
    problems = [f"missing '{key}'" for key in parameters["required"] if key not in arguments]
    for key, value in arguments.items():
        schema = parameters["properties"].get(key)
        if schema is None:
            problems.append(f"unknown argument '{key}'")
        elif isinstance(value, bool) != (schema["type"] == "boolean") or not isinstance(
            value, JSON_TYPES[schema["type"]]
        ):
            problems.append(f"'{key}' is {value!r}, not of type {schema['type']}")
    return problems


def test_the_committed_files_are_what_the_generator_writes(tmp_path):
    write_dataset(tmp_path)

    def files(root: Path) -> dict[str, bytes]:
        return {path.relative_to(root).as_posix(): path.read_bytes() for path in root.rglob("*") if path.is_file()}

    generated, committed = files(tmp_path), files(DEMO_DIR)
    assert sorted(generated) == sorted(committed)
    stale = [name for name in generated if generated[name] != committed[name]]
    assert not stale, f"stale: {stale}; run .venv/bin/python -m onestop.agents.dataset"


@pytest.mark.parametrize("name", CONVERSATIONS)
def test_every_tool_result_is_what_the_real_tool_returns(name):
    tools = {
        "calculator": calculator,
        "convert_units": convert_units,
        "search_documents": functools.partial(search_documents, folder=str(DEMO_DIR / "kb")),
    }
    for record in read_jsonl(name):
        assert [tool["function"]["name"] for tool in record["tools"]] == TOOL_NAMES
        call = first_call(record)
        if call is None:
            assert [message["role"] for message in record["messages"]] == ["user", "assistant"]
            continue
        assert [message["role"] for message in record["messages"]] == ["user", "assistant", "tool", "assistant"]
        result = record["messages"][2]
        assert result["tool_call_id"] == record["messages"][1]["tool_calls"][0]["id"]
        if call["name"] == "current_datetime":
            # the moment is fixed per record, so only the rendering can be checked: the tool's own, weekday included
            timezone = call["arguments"]["timezone"]
            shown = datetime.strptime(result["content"].split(" (")[0], "%Y-%m-%d %H:%M")
            assert format_datetime(shown.replace(tzinfo=ZoneInfo(timezone)), timezone) == result["content"]
            assert result["content"].split("(")[1].split(")")[0] in record["messages"][3]["content"]
        else:
            assert tools[call["name"]](**call["arguments"]) == result["content"], record["messages"][0]["content"]


def test_no_heldout_question_is_in_training():
    train = {record["messages"][0]["content"] for record in read_jsonl("tools_train.jsonl")}
    heldout = [record["messages"][0]["content"] for record in read_jsonl("tools_heldout.jsonl")]
    assert len(set(heldout)) == len(heldout)
    assert not train & set(heldout)


@pytest.mark.parametrize("name", CONVERSATIONS)
def test_between_10_and_30_percent_of_records_need_no_tool(name):
    records = read_jsonl(name)
    share = sum(first_call(record) is None for record in records) / len(records)
    assert 0.1 <= share <= 0.3


def test_the_eval_suite_asks_the_heldout_questions_with_valid_expected_calls():
    suite, heldout = read_jsonl("tools_eval.jsonl"), read_jsonl("tools_heldout.jsonl")
    assert [case["messages"] for case in suite] == [record["messages"][:1] for record in heldout]
    for case, record in zip(suite, heldout, strict=True):
        expected = case["expected"]
        assert expected == first_call(record)
        if expected is None:
            continue
        schemas = {tool["function"]["name"]: tool["function"]["parameters"] for tool in case["tools"]}
        assert expected["name"] in schemas
        assert not schema_problems(expected["arguments"], schemas[expected["name"]]), case["messages"][0]["content"]


def test_agent_tasks_name_known_tools_and_an_answer():
    tasks = read_jsonl("agent_tasks.jsonl")
    assert len(tasks) >= 10
    assert {name for task in tasks for name in task["tools"]} == {"calculator", "search_documents", "convert_units"}
    assert all(task["task"] and task["answer"] for task in tasks)
