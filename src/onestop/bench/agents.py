"""`invoke bench.agents`: agent loops compared on the same tasks, tools and served model (docs/agents.md).

invoke bench.agents run_dir=RUN
"""

# Lazy imports: smolagents (inside the functions that need them).

import json
import time
from contextlib import ExitStack
from pathlib import Path

from onestop.agents.loop import run_task
from onestop.agents.session import open_endpoint
from onestop.agents.tools import load_tools, run_tool_call
from onestop.bench.output import markdown_table, print_table, two_decimals
from onestop.core.errors import OnestopError
from onestop.core.files import write_json, write_text_atomic


def compare_agent_libraries(cfg) -> list[dict]:
    """The same tasks, tools and served model through two maintained agent loops: the OpenAI Agents SDK
    (what `invoke agent` uses) and smolagents' ToolCallingAgent. Scores the final answers like eval=agent.

    smolagents is not a dependency of onestop: `pip install smolagents` to include it.
    """
    rows = []
    tasks = [json.loads(line) for line in Path(cfg.bench_tasks).read_text().splitlines() if line.strip()]
    tools = load_tools(cfg.tools)
    out_dir = Path(cfg.agent.transcript).parent.absolute()
    with ExitStack() as stack:
        endpoint = open_endpoint(cfg, stack)
        for library, run_one in (("OpenAI Agents SDK", _agents_sdk_answer), ("smolagents", _smolagents_answer)):
            right, finished, seconds, calls, failures = 0, 0, 0.0, 0, []
            for task in tasks:
                started = time.perf_counter()
                try:
                    answer, made = run_one(task["task"], endpoint, tools, cfg.agent)
                except Exception as err:  # a library that cannot run the task at all is what this measures
                    answer, made = None, 0
                    failures.append(f"{type(err).__name__}: {' '.join(str(err).split())[:200]}")
                seconds += time.perf_counter() - started
                calls += made
                finished += answer is not None
                right += answer is not None and task["answer"].lower() in answer.lower()
            rows.append(
                {
                    "library": library,
                    "tasks": len(tasks),
                    "answer accuracy": right / len(tasks),
                    "finished": finished / len(tasks),
                    "tool calls/task": calls / len(tasks),
                    "s/task": seconds / len(tasks),
                    "first failure": failures[0] if failures else "",
                }
            )
    write_json(out_dir / "bench.json", {"endpoint": endpoint.base_url, "model": endpoint.model, "rows": rows})
    write_text_atomic(out_dir / "bench.md", markdown_table(rows, two_decimals))
    print_table(rows, f"Agent loops on {endpoint.model}: same tasks, tools and server", two_decimals)
    print(f"Results: {out_dir}", flush=True)
    return rows


def _agents_sdk_answer(task: str, endpoint, tools, settings) -> tuple[str | None, int]:
    run = run_task(
        task, endpoint, tools, max_steps=settings.max_steps, temperature=settings.temperature,
        max_tokens=settings.max_tokens, system_prompt=settings.system_prompt,
    )  # fmt: skip
    return run.answer, sum(step.kind == "tool_call" for step in run.steps)


def _smolagents_answer(task: str, endpoint, tools, settings) -> tuple[str | None, int]:
    try:
        from smolagents import OpenAIServerModel, ToolCallingAgent
        from smolagents import Tool as SmolTool
    except ImportError:
        raise OnestopError("bench.agents: smolagents is not installed; pip install smolagents") from None

    class AnyToolChoice(OpenAIServerModel):
        """smolagents asks for tool_choice=required; a server that cannot force a call refuses that, so
        the comparison lets the model choose, as the Agents SDK does."""

        def _prepare_completion_kwargs(self, *args, **kwargs):
            kwargs["tool_choice"] = None
            return super()._prepare_completion_kwargs(*args, **kwargs)

    made = []

    def smol_tool(tool):
        required = set(tool.parameters.get("required", []))
        inputs = {
            name: {"type": spec.get("type", "string"), "description": spec.get("description", name)}
            | ({} if name in required else {"nullable": True})
            for name, spec in tool.parameters.get("properties", {}).items()
        }

        def forward(self, **arguments):
            made.append(tool.name)
            return run_tool_call([tool], tool.name, arguments).content

        attributes = {"name": tool.name, "description": tool.description, "inputs": inputs, "output_type": "string"}
        return type(f"{tool.name}_tool", (SmolTool,), {**attributes, "forward": forward,
                                                       "skip_forward_signature_validation": True})()  # fmt: skip

    model = AnyToolChoice(
        model_id=endpoint.model, api_base=endpoint.base_url, api_key=endpoint.api_key,
        temperature=settings.temperature, max_tokens=settings.max_tokens,
    )  # fmt: skip
    agent = ToolCallingAgent(
        tools=[smol_tool(t) for t in tools], model=model, max_steps=settings.max_steps, verbosity_level=0
    )
    answer = agent.run(task)
    return (None if answer is None else str(answer)), len(made)
