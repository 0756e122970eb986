"""`invoke agent`: one task, or an interactive session, run by the agent loop against a served model.

    invoke agent task="What is 17 * 23?"                   the running onestop deployment
    invoke agent run_dir=RUN task="..."                    serve a training run for this session
    invoke agent agent.endpoint=http://HOST:PORT/v1 task="..."
    invoke agent tools=[docs_search] agent.docs=PATH task="How many vacation days do we get?"
    invoke agent                                           interactive: /reset, /exit

Each step is printed as it happens; the transcript (task, every call, result and answer) goes to
`agent.transcript`, one JSON object a line.
"""

import json
import os
import sys
from contextlib import ExitStack
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from onestop.agents.loop import AgentRun, Endpoint, describe, run_task
from onestop.agents.tools import Tool, load_tools
from onestop.config.schema import DeployBackendConfig, ModelConfig
from onestop.core.endpoints import only_listed_model
from onestop.core.errors import OnestopError
from onestop.core.files import write_text_atomic
from onestop.core.rundir import RunDir
from onestop.deploy.service import alive, deploy_config, deployments, serving


def running_deployment(name: str | None) -> tuple[str, str]:
    """(base URL, model name) of the named, or only, running onestop deployment."""
    running = [s for s in deployments() if alive(s.get("pid")) and name in (None, s["name"])]
    if not running:
        raise OnestopError(
            "no deployment is running; start one with invoke deploy run_dir=RUN, "
            "or give run_dir=RUN or agent.endpoint=URL"
        )
    if len(running) > 1:
        names = ", ".join(s["name"] for s in running)
        raise OnestopError(f"name: several deployments are running ({names}); choose one with name=NAME")
    return running[0]["base_url"], running[0]["name"]


def open_endpoint(cfg: DictConfig, stack: ExitStack) -> Endpoint:
    """The endpoint the session talks to: agent.endpoint, a run served for the session, or a deployment."""
    settings = cfg.agent
    api_key = os.environ.get(settings.api_key_env) or "-"
    if settings.endpoint:
        if cfg.run_dir:
            raise OnestopError("agent.endpoint and run_dir both set: use one model at a time")
        return Endpoint(
            settings.endpoint,
            settings.model
            or only_listed_model(
                settings.endpoint, {"Authorization": f"Bearer {api_key}"}, "agent.endpoint", "agent.model"
            ),
            api_key,
        )
    if cfg.run_dir:
        run = RunDir.existing(cfg.run_dir)
        model_cfg = OmegaConf.merge(OmegaConf.structured(ModelConfig), run.model_config())
        backend = OmegaConf.structured(DeployBackendConfig(backend="transformers"))
        deploy = deploy_config(model=model_cfg, run_dir=str(run.path), name=f"agent-{run.name}", port=0, deploy=backend)
        print(f"Serving {run.path} for this session…", flush=True)
        deployment = stack.enter_context(serving(deploy))
        return Endpoint(deployment.base_url, deployment.name, api_key)
    base_url, name = running_deployment(cfg.name)
    return Endpoint(base_url, settings.model or name, api_key)


class Transcript:
    """Every task of the session with its steps, rewritten whole (atomically) after each task."""

    def __init__(self, path: Path, endpoint: Endpoint, tools: list[Tool]):
        self.path = path
        self.header = {"endpoint": endpoint.base_url, "model": endpoint.model, "tools": [t.name for t in tools]}
        self.lines: list[dict] = []

    def add(self, task: str, run: AgentRun) -> None:
        self.lines.append({"type": "task", "task": task, **self.header})
        self.lines += [{"type": step.kind, **step.record()} for step in run.steps]
        outcome = {"answer": run.answer} if run.answer is not None else {"stopped": run.stopped}
        self.lines.append({"type": "end", **outcome, "seconds": round(run.seconds, 2)})
        text = "".join(json.dumps(line, ensure_ascii=False) + "\n" for line in self.lines)
        write_text_atomic(self.path, text)


def run_agent(cfg: DictConfig) -> AgentRun | None:
    """The `agent` stage: one task (cfg.task) or an interactive session."""
    tools = load_tools(cfg.tools)
    if not tools:
        raise OnestopError("tools: no tools chosen; e.g. tools=[calculator,docs_search]")
    settings = cfg.agent
    with ExitStack() as stack:
        endpoint = open_endpoint(cfg, stack)
        transcript = Transcript(Path(settings.transcript), endpoint, tools)

        def ask(task: str, history: list) -> AgentRun:
            run = run_task(
                task,
                endpoint,
                tools,
                max_steps=settings.max_steps,
                temperature=settings.temperature,
                max_tokens=settings.max_tokens,
                system_prompt=settings.system_prompt,
                history=history,
                on_step=lambda step: print(describe(step), flush=True),
            )
            transcript.add(task, run)
            if run.stopped == "step limit":
                print(f"No final answer within agent.max_steps={settings.max_steps} model turns.", flush=True)
            elif run.stopped:
                print(f"No final answer: {run.stopped}", flush=True)
            return run

        print(
            f"Agent on {endpoint.model} at {endpoint.base_url}; tools: {', '.join(t.name for t in tools)}", flush=True
        )
        if cfg.task:
            run = ask(cfg.task, [])
            print(f"Transcript: {transcript.path}", flush=True)
            if run.stopped == "step limit":
                raise OnestopError(f"agent.max_steps={settings.max_steps}: no final answer; see {transcript.path}")
            if run.stopped:
                raise OnestopError(f"agent: {run.stopped}; see {transcript.path}")
            return run
        print("Ask a task; /reset forgets the conversation, /exit (or Ctrl-D) leaves.", flush=True)
        history: list = []
        while True:
            try:
                line = input("task> ").strip()
            except (EOFError, KeyboardInterrupt):
                print(file=sys.stderr)
                break
            if line in {"/exit", "/quit"}:
                break
            if line == "/reset":
                history = []
                print("(conversation reset)", flush=True)
                continue
            if line:
                history = ask(line, history).history
        print(f"Transcript: {transcript.path}", flush=True)
        return None
