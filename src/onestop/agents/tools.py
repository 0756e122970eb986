"""Tools an agent can call: a JSON schema read from a typed, documented function, and a call that never raises.

A tool is a plain Python function: its signature and Google-style docstring are what the model reads
(`tool_from_function`). The tools of a run are a config mapping built from `conf/tools/` (`load_tools`).
`run_tool_call` turns whatever the model asks for (a misspelt name, broken JSON, a wrong type, a tool that
raises or hangs) into a `ToolResult` the agent loop hands back to the model, never into an exception.
"""

import functools
import inspect
import json
import re
import threading
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from onestop.core.errors import OnestopError

MAX_RESULT_CHARS = 4000  # about 1,000 tokens: one tool result must not crowd the conversation out of the context
DEFAULT_TIMEOUT_S = 30.0
TOOL_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")  # what OpenAI-compatible servers accept as a function name
SCALAR_TYPES = {str: "string", int: "integer", float: "number", bool: "boolean"}
SUPPORTED_TYPES = "str, int, float, bool, list[X], Literal[...], X | None"
ARGS_HEADERS = {"Args:", "Arguments:", "Parameters:"}
ARGS_ENTRY = re.compile(r"^\*{0,2}(\w+)\s*(?:\([^)]*\))?\s*:\s*(.*)$")


@dataclass
class Tool:
    """A function the model may call, with the JSON schema of the arguments the model fills in."""

    name: str
    description: str
    parameters: dict
    function: Callable[..., Any]
    timeout_s: float = DEFAULT_TIMEOUT_S

    def openai_schema(self) -> dict:
        """The tool as an entry of the `tools` list of an OpenAI chat-completions request."""
        return {
            "type": "function",
            "function": {"name": self.name, "description": self.description, "parameters": self.parameters},
        }


@dataclass
class ToolResult:
    """What a tool call gives back to the model: the tool's output, or an `error: ...` line it can act on."""

    ok: bool
    content: str


def tool_from_function(function: Callable[..., Any], timeout_s: float = DEFAULT_TIMEOUT_S) -> Tool:
    """A `Tool` whose schema is derived from the function's type hints and Google-style docstring.

    The description is the docstring's first paragraph; each parameter's description comes from its `Args:`
    section. Arguments a `functools.partial` binds are configuration (a documents folder, an allow-list) and
    are left out of the schema, so the model never sees or sets them. Parameters without a default are
    required, except `X | None` ones: `run_tool_call` passes None when the model leaves those out.

    Args:
        function: A function, or a `functools.partial` of one with some arguments bound.
        timeout_s: How long `run_tool_call` waits for the function before giving up.

    Returns:
        The tool, named after the function.

    Raises:
        OnestopError: The function has no docstring, a parameter has no type hint or a type a model cannot
            fill in, or the partial binds an argument the function does not take.
    """
    target, bound_positional, bound_keywords = function, 0, {}
    if isinstance(function, functools.partial):
        target, bound_positional, bound_keywords = function.func, len(function.args), function.keywords
    name = getattr(target, "__name__", "")
    if not TOOL_NAME.match(name):
        raise OnestopError(f"{target!r} cannot be a tool: a tool is a named function (letters, digits, _ and -)")
    doc = inspect.getdoc(target)
    if not doc:
        raise OnestopError(f"tool {name} has no docstring: its first line is what the model reads")
    description, described = _parse_docstring(doc)
    try:
        hints = typing.get_type_hints(target)
    except Exception as exc:  # a hint naming something undefined: NameError, TypeError, ...
        raise OnestopError(f"tool {name}: cannot read its type hints ({exc})") from exc
    parameters = list(inspect.signature(target).parameters.values())[bound_positional:]
    takes_any_keyword = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters)
    unknown = sorted(set(bound_keywords) - {p.name for p in parameters})
    if unknown and not takes_any_keyword:
        raise OnestopError(f"tool {name} takes no parameter {', '.join(map(repr, unknown))} (set in its config)")

    properties, required = {}, []
    for parameter in parameters:
        if parameter.name in bound_keywords:
            continue
        where = f"tool {name}, parameter '{parameter.name}'"
        if parameter.kind in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD):
            raise OnestopError(f"{where}: *args and **kwargs cannot be described to a model; name each parameter")
        if parameter.kind is inspect.Parameter.POSITIONAL_ONLY:
            raise OnestopError(f"{where} is positional-only; tools are called with keyword arguments")
        if parameter.name not in hints:
            raise OnestopError(f"{where} has no type hint; give it one of {SUPPORTED_TYPES}")
        schema, nullable = _type_schema(hints[parameter.name], where)
        if parameter.name in described:
            schema["description"] = described[parameter.name]
        has_default = parameter.default is not inspect.Parameter.empty
        if has_default and isinstance(parameter.default, str | int | float | bool):
            schema["default"] = parameter.default
        properties[parameter.name] = schema
        if not has_default and not nullable:
            required.append(parameter.name)
    schema = {"type": "object", "properties": properties, "required": required, "additionalProperties": False}
    return Tool(name=name, description=description, parameters=schema, function=function, timeout_s=timeout_s)


def load_tools(tools_cfg: DictConfig | None) -> list[Tool]:
    """The tools a config selects, in config order.

    Each entry maps an option name to a node such as
    `{_target_: onestop.agents.builtin.search_documents, _partial_: true, folder: docs, timeout_s: 10}`:
    the function, the settings bound to it, and how long a call may run (`timeout_s`, default 30 s).

    Args:
        tools_cfg: The `tools` node of a composed config (option name -> node); None or empty for no tools.

    Returns:
        One `Tool` per entry.

    Raises:
        OnestopError: An entry names no function or one that cannot be imported, sets `_partial_: false`,
            binds an argument its function does not take, or two entries give tools of the same name.
    """
    if tools_cfg is None:
        return []
    if not isinstance(tools_cfg, DictConfig):
        raise OnestopError("tools must be a mapping of option name to tool node, e.g. tools=[calculator,units]")
    tools, owners = [], {}
    for key in tools_cfg:
        where = f"tools.{key}"
        try:
            settings = OmegaConf.to_container(tools_cfg[key], resolve=True)
        except OmegaConfBaseException as exc:
            raise OnestopError(f"{where}: {_first_line(exc)}") from exc
        if not isinstance(settings, dict) or "_target_" not in settings:
            raise OnestopError(f"{where} needs a _target_: the function the tool calls")
        if settings.get("_partial_", True) is not True:
            raise OnestopError(f"{where}: _partial_ must be true; the agent calls the function later, not at load")
        settings["_partial_"] = True
        timeout_s = settings.pop("timeout_s", DEFAULT_TIMEOUT_S)
        if isinstance(timeout_s, bool) or not isinstance(timeout_s, int | float) or timeout_s <= 0:
            raise OnestopError(f"{where}.timeout_s must be a positive number of seconds, not {timeout_s!r}")
        try:
            # _convert_: bound lists and dicts reach the function as plain Python values, not OmegaConf nodes
            function = instantiate(settings, _convert_="all")
        except InstantiationException as exc:
            raise OnestopError(f"{where}: cannot load {settings['_target_']!r}: {_first_line(exc)}") from exc
        try:
            tool = tool_from_function(function, timeout_s=float(timeout_s))
        except OnestopError as exc:
            raise OnestopError(f"{where}: {exc}") from exc
        if tool.name in owners:
            raise OnestopError(f"tools.{owners[tool.name]} and {where} are both a tool named '{tool.name}'")
        owners[tool.name] = key
        tools.append(tool)
    return tools


def run_tool_call(
    tools: dict[str, Tool] | list[Tool],
    name: str,
    arguments: str | dict | None,
    max_chars: int = MAX_RESULT_CHARS,
) -> ToolResult:
    """Run one tool call the model asked for; every failure becomes a result, never an exception.

    Arguments are checked against the tool's schema before the call, strictly, so the model learns what to
    fix: a numeric string such as `"3"` is refused for an integer or number parameter rather than converted
    (OpenAI-compatible servers send arguments as a JSON string, and a model that quotes numbers should be told
    so). Two leniencies: an integer is accepted for a number and an integral float (`3.0`) for an integer, and
    `null` for an optional parameter means "not given".

    The function runs in a daemon worker thread. Past the tool's `timeout_s` the call returns an error while the
    thread, which Python cannot kill, runs on in the background and its result is dropped; a daemon thread does
    not keep the process alive at exit.

    Args:
        tools: The available tools, as a list or by name.
        name: The function name the model called.
        arguments: The arguments as the server sent them: a JSON object string, a dict, or None for none.
        max_chars: Longer results are cut to this many characters, with a note saying so.

    Returns:
        `ok=True` and the return value as text (dicts and lists as JSON), or `ok=False` and `error: ...`.
    """
    try:
        by_name = tools if isinstance(tools, dict) else {tool.name: tool for tool in tools}
        return _run(by_name, name, arguments, max_chars)
    except Exception as exc:  # a bug here must not end the agent's conversation either
        return ToolResult(ok=False, content=_truncate(f"error: {type(exc).__name__}: {exc}", max_chars))


def _run(tools: dict[str, Tool], name: str, arguments: str | dict | None, max_chars: int) -> ToolResult:
    def error(message: str) -> ToolResult:
        return ToolResult(ok=False, content=_truncate(f"error: {message}", max_chars))

    tool = tools.get(name)
    if tool is None:
        return error(f"unknown tool '{name}'; available: {', '.join(sorted(tools)) or 'none'}")
    if arguments is None or (isinstance(arguments, str) and not arguments.strip()):
        arguments = {}
    elif isinstance(arguments, str):
        try:
            arguments = json.loads(arguments)
        except json.JSONDecodeError as exc:
            return error(f"the arguments for {name} are not valid JSON ({exc.msg} at character {exc.pos})")
    if not isinstance(arguments, dict):
        return error(f"the arguments for {name} must be a JSON object, got {_describe(arguments)}")
    try:
        arguments = _conform_arguments(tool, arguments)
    except _BadArgument as exc:
        return error(str(exc))

    outcome = {}

    def work():
        try:
            outcome["value"] = tool.function(**arguments)
        except BaseException as exc:  # SystemExit from a tool included: the thread reports it, the loop goes on
            outcome["error"] = exc

    worker = threading.Thread(target=work, name=f"tool-{name}", daemon=True)
    worker.start()
    worker.join(tool.timeout_s)
    if worker.is_alive():
        return error(f"tool '{name}' timed out after {tool.timeout_s:g} s")
    if "error" in outcome:
        exc = outcome["error"]
        return error(f"{name} raised {type(exc).__name__}: {exc}")
    return ToolResult(ok=True, content=_truncate(_as_text(outcome.get("value")), max_chars))


class _BadArgument(Exception):
    """The model's arguments do not fit the tool's schema; the message says what was expected."""


def _conform_arguments(tool: Tool, arguments: dict) -> dict:
    """The arguments checked against the tool's schema, with integral floats made ints and nulls made omissions."""
    properties = tool.parameters.get("properties", {})
    closed = tool.parameters.get("additionalProperties") is False
    for key in arguments:
        if key not in properties and closed:
            known = ", ".join(properties) or "none"
            raise _BadArgument(f"{tool.name} has no argument '{key}'; its arguments are: {known}")
    required = tool.parameters.get("required", [])
    conformed = {}
    for key, value in arguments.items():
        if value is None and key not in required:
            continue
        conformed[key] = _conform(value, properties.get(key, {}), f"argument '{key}'", tool.name)
    for key in required:
        if key not in conformed:
            raise _BadArgument(f"missing argument '{key}' of {tool.name} ({_expected(properties.get(key, {}))})")
    try:
        signature = inspect.signature(tool.function)
    except (TypeError, ValueError):  # a builtin without a signature: nothing to fill in
        return conformed
    for key in properties:
        parameter = signature.parameters.get(key)
        if key not in conformed and parameter is not None and parameter.default is inspect.Parameter.empty:
            conformed[key] = None  # an `X | None` parameter without a default, left out by the model
    return conformed


def _conform(value: Any, schema: dict, where: str, tool: str) -> Any:
    kind = schema.get("type")
    if kind == "integer" and isinstance(value, float) and value.is_integer():
        value = int(value)
    fits = {
        "string": lambda: isinstance(value, str),
        "integer": lambda: isinstance(value, int) and not isinstance(value, bool),
        "number": lambda: isinstance(value, int | float) and not isinstance(value, bool),
        "boolean": lambda: isinstance(value, bool),
        "array": lambda: isinstance(value, list),
        "object": lambda: isinstance(value, dict),
    }
    if kind in fits and not fits[kind]():
        raise _BadArgument(f"{where} of {tool} must be {_expected(schema)}, got {_describe(value)}")
    if kind == "array" and "items" in schema:
        value = [_conform(item, schema["items"], f"item {i} of {where}", tool) for i, item in enumerate(value)]
    if "enum" in schema and not any(_same(value, option) for option in schema["enum"]):
        raise _BadArgument(f"{where} of {tool} must be one of {json.dumps(schema['enum'])}, got {_describe(value)}")
    return value


def _same(value: Any, option: Any) -> bool:
    # True == 1 in Python, but not in JSON
    return value == option and isinstance(value, bool) == isinstance(option, bool)


def _expected(schema: dict) -> str:
    if "enum" in schema:
        return f"one of {json.dumps(schema['enum'])}"
    kind = schema.get("type")
    if kind == "array" and "items" in schema:
        items = _expected(schema["items"])
        return f"an array of {items.split(' ', 1)[1]}s" if items.startswith("a") else f"an array, each {items}"
    article = {"integer": "an integer", "array": "an array", "object": "an object"}
    return article.get(kind, f"a {kind}" if kind else "a value")


def _describe(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return json.dumps(value)
    if isinstance(value, str):
        shown = json.dumps(value, ensure_ascii=False)
        return f"the string {shown if len(shown) <= 60 else shown[:57] + '...'}"
    if isinstance(value, int | float):
        return f"the number {value!r}"
    return "an array" if isinstance(value, list) else "an object" if isinstance(value, dict) else type(value).__name__


def _as_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if value is None:
        return "(the tool returned nothing)"
    if isinstance(value, dict | list | tuple):
        return json.dumps(value, ensure_ascii=False, default=str)
    return str(value)


def _truncate(text: str, max_chars: int) -> str:
    if len(text) <= max_chars:
        return text
    return f"{text[:max_chars]}\n[cut: the first {max_chars} of {len(text)} characters]"


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def _type_schema(annotation: Any, where: str) -> tuple[dict, bool]:
    """(JSON schema, whether None is allowed) of a parameter's type hint."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        others = [arg for arg in args if arg is not type(None)]
        if len(others) == 1 and len(others) < len(args):
            return _type_schema(others[0], where)[0], True
    elif annotation in SCALAR_TYPES:
        return {"type": SCALAR_TYPES[annotation]}, False
    elif origin is list and len(args) == 1:
        items, nullable = _type_schema(args[0], where)
        if not nullable:
            return {"type": "array", "items": items}, False
    elif origin is Literal:
        kinds = {SCALAR_TYPES.get(type(arg)) for arg in args}
        if None not in kinds:
            return ({"type": kinds.pop()} if len(kinds) == 1 else {}) | {"enum": list(args)}, False
    shown = getattr(annotation, "__name__", None) if origin is None else None
    raise OnestopError(f"{where} has type {shown or annotation}, which a model cannot fill in; use {SUPPORTED_TYPES}")


def _parse_docstring(doc: str) -> tuple[str, dict[str, str]]:
    """(first paragraph as one line, {parameter: description}) of a Google-style docstring."""
    lines = doc.splitlines()
    summary = []
    for line in lines:
        if not line.strip() or line.strip() in ARGS_HEADERS:
            break
        summary.append(line.strip())
    described, current, section_indent, entry_indent = {}, None, None, None
    for line in lines:
        indent = len(line) - len(line.lstrip())
        if section_indent is None:
            if line.strip() in ARGS_HEADERS:
                section_indent = indent
            continue
        if not line.strip():
            continue
        if indent <= section_indent:
            break
        entry_indent = indent if entry_indent is None else entry_indent
        match = ARGS_ENTRY.match(line.strip()) if indent == entry_indent else None
        if match:
            current = match.group(1)
            described[current] = match.group(2).strip()
        elif current is not None:
            described[current] = f"{described[current]} {line.strip()}".strip()
    return " ".join(summary), described
