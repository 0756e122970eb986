"""The `tools` suite: does the model call the right tool with the right arguments, or rightly call none?

    invoke eval run_dir=runs/train/DIR eval=tools
    invoke eval endpoint=http://127.0.0.1:8000/v1 endpoint_model=NAME eval=tools
    invoke eval model=qwen eval=tools eval.path=my_calls.jsonl

FILE: JSONL (or a JSON list) of {"messages": [...], "tools": [OpenAI tool schemas], "expected": {"name": ...,
"arguments": {...}} | null}; null means the model should answer without a call. A row expects one call, so only
the first call of a reply is scored. In-process, the model generates greedily with the tools in its chat
template and the reply is read with the tokenizer's response template, as `transformers serve` reads it;
through an endpoint the server's `message.tool_calls` are scored, so a deterministic model gets the same
numbers both ways. lm-eval has no tool calls, so this suite does not go through it.
"""

# Lazy imports: openai (inside the functions that need them).

import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from onestop.core.errors import OnestopError
from onestop.core.progress import progress
from onestop.evaluation.metrics import mean_with_stderr
from onestop.evaluation.suites import SuiteFileError, read_rows
from onestop.models.tool_formats import parse_tool_calls

ROLES = {"system", "user", "assistant", "tool"}
# In this order in results.json and the table; a metric whose rows are absent from the file is left out.
METRICS = ("name_accuracy", "exact_arguments", "argument_accuracy", "no_call_accuracy", "call_accuracy")


@dataclass
class Reply:
    """What the model answered to one row: its text and its calls [{"name", "arguments"}]."""

    content: str
    calls: list[dict]
    valid_shape: list[bool] | None = None
    """Per call, whether the endpoint returned it in the OpenAI shape; None in-process (nothing to check)."""
    error: str | None = None
    """The endpoint's error for this row (scored as a reply without a call), if it answered with one."""


def read_tool_rows(path: Path) -> list[dict]:
    """Rows {line, messages, tools, expected}, each checked; a bad row fails with its file and line."""
    if path.suffix not in {".jsonl", ".json"}:
        raise SuiteFileError(f"eval.path={path}: expected a .jsonl or .json file of tool-call rows")
    rows = []
    for number, record in read_rows(path):
        where = f"{path}:{number}"
        if not isinstance(record, dict):
            raise SuiteFileError(f"{where}: expected an object with messages, tools and expected")
        messages, tools = record.get("messages"), record.get("tools")
        if (
            not isinstance(messages, list)
            or not messages
            or not all(isinstance(m, dict) and m.get("role") in ROLES for m in messages)
        ):
            raise SuiteFileError(f"{where}: expected `messages`, a non-empty list of {{role, content}} objects")
        if not isinstance(tools, list) or not tools or not all(_tool_name(t) for t in tools):
            raise SuiteFileError(
                f"{where}: expected `tools`, a non-empty list of {{type: function, function: {{name, parameters}}}}"
            )
        if "expected" not in record:
            raise SuiteFileError(f"{where}: expected `expected`: the call {{name, arguments}}, or null for none")
        expected = record["expected"]
        if expected is not None:
            if (
                not isinstance(expected, dict)
                or not isinstance(expected.get("name"), str)
                or not isinstance(expected.get("arguments"), dict)
            ):
                raise SuiteFileError(
                    f"{where}: `expected` must be null or {{name: str, arguments: object}}, got {json.dumps(expected)}"
                )
            offered = [_tool_name(t) for t in tools]
            if expected["name"] not in offered:
                raise SuiteFileError(
                    f"{where}: expected call {expected['name']!r} is not among the row's tools ({', '.join(offered)})"
                )
            expected = {"name": expected["name"], "arguments": expected["arguments"]}
        rows.append({"line": number, "messages": messages, "tools": tools, "expected": expected})
    if not rows:
        raise SuiteFileError(f"{path}:1: no rows to score")
    return rows


def _tool_name(tool) -> str | None:
    function = tool.get("function") if isinstance(tool, dict) else None
    name = function.get("name") if isinstance(function, dict) else None
    return name if isinstance(name, str) and name else None


def with_system_prompt(rows: list[dict], system_prompt: str | None) -> list[dict]:
    """The rows with `eval.system_prompt` opening each conversation that has no system message of its own."""
    if not system_prompt:
        return rows
    system = {"role": "system", "content": system_prompt}
    return [
        row if row["messages"][0]["role"] == "system" else {**row, "messages": [system, *row["messages"]]}
        for row in rows
    ]


def tool_prompts(tokenizer, rows: list[dict]) -> list[str]:
    """Each row's conversation with its tools, formatted by the chat template up to the model's turn."""
    return [
        tokenizer.apply_chat_template(row["messages"], tools=row["tools"], tokenize=False, add_generation_prompt=True)
        for row in rows
    ]


def read_replies(tokenizer, rows: list[dict], prompts: list[str], generated: list[list[int]]) -> list[Reply]:
    """Generated tokens (each through its stop token, as the server's reply ends) read back with the tokenizer's
    response template (`parse_tool_calls`) from the text decoded with its special tokens."""
    replies = []
    for row, prompt, tokens in zip(rows, prompts, generated, strict=True):
        parsed = parse_tool_calls(tokenizer, tokenizer.decode(tokens, skip_special_tokens=False), prompt, row["tools"])
        replies.append(Reply(parsed["content"], parsed["tool_calls"]))
    return replies


def served_replies(
    rows: list[dict], *, base_url: str, model: str, api_key: str, max_new_tokens: int, num_concurrent: int
) -> list[Reply]:
    """Replies from an OpenAI-compatible endpoint (`tools=` when a row has tools, temperature 0), `num_concurrent`
    requests in flight.

    A row the server answers with a 5xx error (after the client's retries) is a reply without a call: `transformers
    serve` answers 500 when the model garbles a call, the same text in-process reads back as content without a
    call. Any other error ends the evaluation.
    """
    from openai import InternalServerError, OpenAI, OpenAIError

    client = OpenAI(base_url=base_url, api_key=api_key, max_retries=2)

    def ask(row: dict) -> Reply:
        try:
            reply = client.chat.completions.create(
                model=model,
                messages=_as_sent(row["messages"]),
                **({"tools": row["tools"]} if row["tools"] else {}),  # some servers refuse an empty list
                temperature=0,
                max_tokens=max_new_tokens,
            )
        except InternalServerError as err:
            return Reply("", [], [], error=f"{type(err).__name__}: {_first_line(err)}")
        except OpenAIError as err:
            raise OnestopError(
                f"endpoint={base_url}: row {row['line']}: {type(err).__name__}: {_first_line(err)}"
            ) from None
        message = reply.choices[0].message
        returned = message.tool_calls or []
        return Reply(
            message.content or "", [_read_call(call) for call in returned], [openai_shape(c) for c in returned]
        )

    with ThreadPoolExecutor(max_workers=max(1, num_concurrent)) as pool, progress(len(rows), "requests") as bar:
        replies = []
        for reply in pool.map(ask, rows):
            replies.append(reply)
            bar.update()
        return replies


def _first_line(err: Exception) -> str:
    return (str(err).strip().splitlines() or [type(err).__name__])[0]


def _as_sent(messages: list[dict]) -> list[dict]:
    """Earlier assistant calls with their arguments as JSON strings, the form the OpenAI API takes."""
    sent = []
    for message in messages:
        calls = message.get("tool_calls")
        if calls:
            calls = [_call_as_sent(call) for call in calls]
            message = {**message, "tool_calls": calls}
        sent.append(message)
    return sent


def _call_as_sent(call: dict) -> dict:
    function = call.get("function") if isinstance(call, dict) else None
    if isinstance(function, dict) and not isinstance(function.get("arguments"), str):
        return {**call, "function": {**function, "arguments": json.dumps(function.get("arguments") or {})}}
    return call


def _read_call(call) -> dict:
    function = getattr(call, "function", None)  # None for a non-function (custom) tool call
    return {"name": getattr(function, "name", None), "arguments": _decoded(getattr(function, "arguments", None))}


def _decoded(arguments: Any) -> Any:
    """The arguments object a server sent as a JSON string; the raw value when it is not JSON (scored wrong)."""
    if not isinstance(arguments, str):
        return arguments
    try:
        return json.loads(arguments)
    except json.JSONDecodeError:
        return arguments


def openai_shape(call) -> bool:
    """A call as the OpenAI API returns it: an id, type function, a name, arguments a JSON string of an object."""
    function = getattr(call, "function", None)
    name, arguments = getattr(function, "name", None), getattr(function, "arguments", None)
    decoded = _decoded(arguments) if isinstance(arguments, str) else None
    return (
        isinstance(getattr(call, "id", None), str)
        and bool(call.id)
        and getattr(call, "type", None) == "function"
        and isinstance(name, str)
        and bool(name)
        and isinstance(decoded, dict)
    )


def same_value(predicted: Any, expected: Any) -> bool:
    """Numbers compare numerically (3 == 3.0, but not "3" or True), strings exactly after stripping, lists and
    objects element by element."""
    if isinstance(expected, bool) or isinstance(predicted, bool):
        return type(predicted) is type(expected) and predicted == expected
    if isinstance(expected, int | float):
        return isinstance(predicted, int | float) and float(predicted) == float(expected)
    if isinstance(expected, str):
        return isinstance(predicted, str) and predicted.strip() == expected.strip()
    if isinstance(expected, list):
        return (
            isinstance(predicted, list)
            and len(predicted) == len(expected)
            and all(same_value(p, e) for p, e in zip(predicted, expected, strict=True))
        )
    if isinstance(expected, dict):
        return (
            isinstance(predicted, dict)
            and set(predicted) == set(expected)
            and all(same_value(predicted[k], v) for k, v in expected.items())
        )
    return predicted == expected


def score_replies(rows: list[dict], replies: list[Reply]) -> tuple[dict, list[dict]]:
    """({metric: {value, stderr}}, one sample per row). Each metric is a mean of 0/1 scores:

    - name_accuracy: rows expecting a call whose first call has the expected name;
    - exact_arguments: of those rows, first call with the expected name and equal arguments (`same_value`);
    - argument_accuracy: each expected argument (over all rows), given with an equal value in a call of the
      expected tool;
    - no_call_accuracy: rows expecting no call that got none;
    - call_accuracy: every row, the right call (exact arguments) or rightly none;
    - valid_shape (endpoints): each returned call in the OpenAI shape (`openai_shape`);
    - server_errors (endpoints): rows the server answered with an error (each also scored as no call).
    """
    scores: dict[str, list[float]] = {name: [] for name in METRICS}
    shapes: list[bool] = []
    errors: list[float] = []
    samples = []
    for row, reply in zip(rows, replies, strict=True):
        expected = row["expected"]
        first = reply.calls[0] if reply.calls else None
        if expected is None:
            row_scores = {"no_call_accuracy": float(first is None)}
            row_scores["call_accuracy"] = row_scores["no_call_accuracy"]
        else:
            right_name = first is not None and first["name"] == expected["name"]
            given = first["arguments"] if right_name and isinstance(first["arguments"], dict) else {}
            arguments = [float(k in given and same_value(given[k], v)) for k, v in expected["arguments"].items()]
            exact = right_name and same_value(first["arguments"], expected["arguments"])
            row_scores = {"name_accuracy": float(right_name), "exact_arguments": float(exact)}
            row_scores["call_accuracy"] = row_scores["exact_arguments"]
            scores["argument_accuracy"] += arguments
            if arguments:
                row_scores["argument_accuracy"] = sum(arguments) / len(arguments)
        for name, value in row_scores.items():
            if name != "argument_accuracy":
                scores[name].append(value)
        sample = {
            "line": row["line"],
            "prompt": row["messages"],
            "expected": expected,
            "predicted": reply.calls,
            "content": reply.content,
            "scores": row_scores,
        }
        if reply.valid_shape is not None:  # served
            shapes += reply.valid_shape
            errors.append(float(reply.error is not None))
            sample["valid_shape"] = reply.valid_shape
        if reply.error is not None:
            sample["error"] = reply.error
        samples.append(sample)
    metrics = {name: mean_with_stderr(values) for name, values in scores.items() if values}
    if shapes:  # no call returned: nothing whose shape to judge
        metrics["valid_shape"] = mean_with_stderr([float(ok) for ok in shapes])
    if errors:
        metrics["server_errors"] = mean_with_stderr(errors)
    return metrics, samples
