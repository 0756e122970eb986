"""The agent loop: a model behind any OpenAI-compatible endpoint, calling onestop's tools until it answers.

The loop itself is the OpenAI Agents SDK's (`Runner.run_streamed` over its chat-completions model): it
sends the conversation and the tools, runs the calls the model returns, sends the results back and stops
at the first turn without a call. onestop adds what that loop leaves to its user: tools made from typed
Python functions (`onestop.agents.tools`), every bad call (unknown tool, arguments off the schema, a tool
that raises or runs too long) answered to the model as a tool error instead of ending the run, each step
reported as it happens, a step limit, and a transcript.

docs/agents.md says why this SDK and not smolagents (measured on the same task).
"""

# Lazy imports: agents (the OpenAI Agents SDK), openai (inside the functions that need them).

import asyncio
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from onestop.agents.tools import Tool, run_tool_call
from onestop.core.errors import OnestopError


@dataclass
class Step:
    """One thing that happened in an agent run, as the transcript records it."""

    kind: str
    """`tool_call` (the model asked for a tool), `tool_result` (what the tool gave back) or `answer`."""
    turn: int
    """The model turn it belongs to, from 1."""
    name: str | None = None
    arguments: str | None = None
    content: str | None = None
    ok: bool | None = None
    call_id: str | None = None

    def record(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if v is not None}


@dataclass
class AgentRun:
    """The outcome of one task: the final answer (None when the step limit came first) and every step."""

    answer: str | None
    steps: list[Step] = field(default_factory=list)
    history: list = field(default_factory=list)
    """The conversation so far in the SDK's input form, for a follow-up task in the same session."""
    seconds: float = 0.0
    stopped: str | None = None
    """Why there is no answer (`step limit`, `endpoint error: ...`), else None."""


@dataclass
class Endpoint:
    base_url: str
    model: str
    api_key: str = "-"


def run_task(
    task: str,
    endpoint: Endpoint,
    tools: list[Tool],
    *,
    max_steps: int = 6,
    temperature: float = 0.0,
    max_tokens: int = 256,
    system_prompt: str | None = None,
    history: list | None = None,
    on_step: Callable[[Step], None] | None = None,
) -> AgentRun:
    """Run one task to its final answer through the agent loop; `on_step` sees each step as it happens.

    Raises OnestopError when the endpoint cannot be reached at all; an error later in the run ends it
    without an answer (`AgentRun.stopped` says why) and keeps the steps so far.
    """
    return asyncio.run(
        _run(task, endpoint, tools, max_steps, temperature, max_tokens, system_prompt, history or [], on_step)
    )


async def _run(task, endpoint, tools, max_steps, temperature, max_tokens, system_prompt, history, on_step) -> AgentRun:
    from agents import Agent, ModelSettings, OpenAIChatCompletionsModel, RunConfig, Runner
    from openai import AsyncOpenAI

    client = AsyncOpenAI(base_url=endpoint.base_url, api_key=endpoint.api_key, max_retries=1)
    agent = Agent(
        name="onestop",
        instructions=system_prompt,
        model=OpenAIChatCompletionsModel(model=endpoint.model, openai_client=client),
        model_settings=ModelSettings(temperature=temperature, max_tokens=max_tokens),
        tools=[_sdk_tool(tool) for tool in tools],
    )
    run_config = RunConfig(
        tracing_disabled=True,  # the SDK would otherwise upload traces to OpenAI
        tool_not_found_behavior="return_error_to_model",
        tool_error_formatter=lambda failure: _tool_error(failure, tools),
    )
    conversation = [*history, {"role": "user", "content": task}]
    steps: list[Step] = []
    started = time.monotonic()

    def note(step: Step) -> None:
        steps.append(step)
        if on_step:
            on_step(step)

    streamed = Runner.run_streamed(agent, conversation, max_turns=max_steps, run_config=run_config)
    try:
        return await _follow(streamed, steps, note, conversation, started, endpoint)
    finally:
        await client.close()  # inside this event loop: asyncio.run closes it, and a later close would fail


async def _follow(streamed, steps, note, conversation, started, endpoint) -> AgentRun:
    """Record the steps of a streamed run as they arrive; the outcome once it ends."""
    from agents import MaxTurnsExceeded
    from agents.items import MessageOutputItem, ToolCallItem, ToolCallOutputItem
    from openai import APIConnectionError, OpenAIError

    turn, names, results_seen = 1, {}, False
    try:
        async for event in streamed.stream_events():
            if event.type != "run_item_stream_event":
                continue
            item = event.item
            if isinstance(item, ToolCallItem | MessageOutputItem) and results_seen:
                turn, results_seen = turn + 1, False  # the model's next turn, after every result of the last one
            if isinstance(item, ToolCallItem):
                raw = item.raw_item
                names[raw.call_id] = raw.name
                note(Step("tool_call", turn, name=raw.name, arguments=raw.arguments, call_id=raw.call_id))
            elif isinstance(item, ToolCallOutputItem):
                call_id = _field(item.raw_item, "call_id")
                content = str(item.output)
                ok = not content.startswith("error:")
                note(Step("tool_result", turn, name=names.get(call_id), content=content, ok=ok, call_id=call_id))
                results_seen = True
            elif isinstance(item, MessageOutputItem):
                text = "".join(_field(part, "text") or "" for part in _field(item.raw_item, "content") or [])
                note(Step("answer", turn, content=text))
    except MaxTurnsExceeded:
        return AgentRun(None, steps, conversation, time.monotonic() - started, stopped="step limit")
    except OpenAIError as err:
        if not steps and isinstance(err, APIConnectionError):
            raise OnestopError(f"agent.endpoint={endpoint.base_url}: not answering ({_first_line(err)})") from None
        # e.g. a tool call the model garbled so that the server could not read it: the run ends, the steps so
        # far are kept, and an interactive session goes on
        stopped = f"endpoint error: {type(err).__name__}: {_first_line(err)}"
        return AgentRun(None, steps, conversation, time.monotonic() - started, stopped=stopped)
    answer = streamed.final_output if isinstance(streamed.final_output, str) else None
    return AgentRun(answer, steps, streamed.to_input_list(), time.monotonic() - started)


def _sdk_tool(tool: Tool):
    """The SDK's function tool, calling through `run_tool_call` so that no failure escapes as an exception."""
    from agents import FunctionTool

    async def invoke(_context, arguments: str) -> str:
        result = await asyncio.to_thread(run_tool_call, [tool], tool.name, arguments)
        return result.content

    return FunctionTool(
        name=tool.name,
        description=tool.description,
        params_json_schema=tool.parameters,
        on_invoke_tool=invoke,
        strict_json_schema=False,  # optional parameters are allowed; run_tool_call checks the arguments itself
    )


def _tool_error(failure, tools: list[Tool]) -> str:
    """The SDK's own tool errors in the words `run_tool_call` uses, so a model sees one kind of error text."""
    if failure.kind == "tool_not_found":
        return run_tool_call(tools, failure.tool_name, None).content
    return f"error: {failure.error or failure.default_message}"


def _field(item, name: str):
    return item.get(name) if isinstance(item, dict) else getattr(item, name, None)


def _first_line(err: Exception) -> str:
    return (str(err).strip().splitlines() or [type(err).__name__])[0]


def describe(step: Step) -> str:
    """One line for the terminal."""
    if step.kind == "tool_call":
        return f"[{step.turn}] model → {step.name}({_compact(step.arguments)})"
    if step.kind == "tool_result":
        mark = "" if step.ok else " (error)"
        return f"[{step.turn}] {step.name}{mark} → {_shorten(step.content or '')}"
    return f"[{step.turn}] answer: {step.content}"


def _compact(arguments: str | None) -> str:
    try:
        return json.dumps(json.loads(arguments or "{}"), ensure_ascii=False)
    except json.JSONDecodeError:
        return arguments or ""


def _shorten(text: str, limit: int = 200) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"
