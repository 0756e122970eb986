"""`invoke eval eval=agent`: tasks run through the agent loop on a served model, scored on the final answer.

    invoke eval eval=agent run_dir=runs/train/DIR               the run, served for the evaluation
    invoke eval eval=agent endpoint=http://127.0.0.1:8000/v1 endpoint_model=NAME
    invoke eval eval=agent endpoint=URL eval.path=tasks.jsonl eval.tools=[calculator,docs_search] eval.docs=DIR

FILE: JSONL (or a JSON list) of {"task", "answer": text the final answer must contain (any case), "tools":
[function names the task needs]}. Every task is offered the same tools, the `eval.tools` options in that order
(the demo suite offers all four demo tools, the set and order the demo model was trained with), so the model
must also choose among them; a task needing a tool that is not offered fails with its file and line.
The evaluation stage never imports the agent loop, so the command line sends eval=agent here; results go
where every suite's go (results.json with each task's steps, the table, W&B) through the same functions.
"""

import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from onestop import __version__
from onestop.agents.loop import AgentRun, run_task
from onestop.agents.session import open_endpoint
from onestop.agents.tools import Tool, load_tools
from onestop.config.schema import AgentConfig
from onestop.core.errors import OnestopError
from onestop.core.paths import CONF_DIR
from onestop.evaluation.metrics import mean_with_stderr
from onestop.evaluation.run import EvalResult, Target, describe_target, write_results
from onestop.evaluation.suites import SuiteFileError, read_rows


def run_agent_eval(cfg: DictConfig) -> EvalResult:
    """The eval stage for `eval.kind=agent`: check the tasks and tools, run each task, score, write results.

    Args:
        cfg: A composed `eval` config whose `eval` node is an agent suite, with `endpoint=` or `run_dir=`.

    Returns:
        The scores ({suite: {metric: {value, stderr}}}) and, with `eval.log_samples`, each task's transcript.

    Raises:
        OnestopError: A bad task row (file:line), an unknown tools option, no documents folder, no served
            model named, or an endpoint that fails.
    """
    suite = cfg.eval
    if not suite.path:
        raise OnestopError(f"eval={suite.name}: set eval.path=FILE")
    tools = suite_tools(suite)
    every_task = read_agent_tasks(Path(suite.path).expanduser(), [tool.name for tool in tools])
    tasks = every_task[: suite.limit] if suite.limit else every_task
    target = describe_target(cfg)
    if target.kind == "model":
        raise OnestopError(f"eval={suite.name}: the agent talks to a served model; give endpoint=URL or run_dir=RUN")
    started = time.perf_counter()
    with ExitStack() as stack:
        endpoint = open_endpoint(session_config(cfg, target), stack)
        print(f"Agent tasks on {endpoint.model}; tools: {', '.join(t.name for t in tools)}", flush=True)

        def attempt(task: dict) -> AgentRun:
            run = run_task(
                task["task"],
                endpoint,
                tools,
                max_steps=suite.max_steps,
                temperature=0.0,  # greedy, as every suite scores
                max_tokens=suite.max_new_tokens,
                system_prompt=suite.system_prompt,
            )
            if run.answer is None:
                print(f"  unfinished ({run.stopped}): {task['task']}", flush=True)
            else:
                print(f"  {'right' if is_right(task, run) else 'wrong'}: {task['task']} -> {run.answer}", flush=True)
            return run

        with ThreadPoolExecutor(max_workers=max(1, cfg.eval.concurrency)) as pool:
            runs = list(pool.map(attempt, tasks))
    metrics, samples = score_runs(tasks, runs)
    result = EvalResult(
        Path(cfg.output_dir).absolute(), {suite.name: metrics}, {suite.name: samples} if suite.log_samples else {}
    )
    counts = {suite.name: {"original": len(every_task), "effective": len(tasks)}}
    write_results(result, cfg, target, time.perf_counter() - started, counts, {"onestop": __version__})
    return result


def session_config(cfg: DictConfig, target: Target) -> DictConfig:
    """What `open_endpoint` reads from an agent config: the eval's endpoint, model and key, or its run_dir."""
    settings = {"endpoint": cfg.endpoint, "model": target.identity.get("endpoint_model")}
    if cfg.endpoint:
        settings["api_key_env"] = cfg.api_key_env
    # a run served here is an onestop deployment: it keeps the agent's own key variable
    return OmegaConf.merge(OmegaConf.structured(AgentConfig), {"agent": settings, "run_dir": cfg.run_dir})


def suite_tools(suite: DictConfig) -> list[Tool]:
    """The tools/ options `eval.tools` names, built as `invoke agent tools=[...]` builds them, the documents
    folder being `eval.docs`."""
    if not suite.tools:
        raise OnestopError("eval.tools: name the tools offered to every task, e.g. eval.tools=[calculator,docs_search]")
    options = {}
    for name in suite.tools:
        option = CONF_DIR / "tools" / f"{name}.yaml"
        if not option.is_file():
            names = ", ".join(sorted(p.stem for p in option.parent.glob("*.yaml")))
            raise OnestopError(f"eval.tools: no tools option {name!r}; choose from: {names}")
        options[name] = OmegaConf.load(option)
    docs = Path(suite.docs).expanduser().absolute() if suite.docs else None
    if "docs_search" in options and (docs is None or not docs.is_dir()):
        raise OnestopError(f"eval.docs={suite.docs}: docs_search needs the folder it searches")
    # the options read their folder from ${agent.docs}, as in the agent's own config
    holder = OmegaConf.create({"agent": {"docs": str(docs) if docs else None}, "tools": options})
    return load_tools(holder.tools)


def read_agent_tasks(path: Path, offered: list[str]) -> list[dict]:
    """Rows {line, task, answer, tools}, each checked; a bad row fails with its file and line."""
    if path.suffix not in {".jsonl", ".json"}:
        raise SuiteFileError(f"eval.path={path}: expected a .jsonl or .json file of agent tasks")
    rows = []
    for number, record in read_rows(path):
        where = f"{path}:{number}"
        if not isinstance(record, dict):
            raise SuiteFileError(f"{where}: expected an object with task and answer")
        task, answer, needs = record.get("task"), record.get("answer"), record.get("tools", [])
        if not isinstance(task, str) or not task.strip():
            raise SuiteFileError(f"{where}: expected `task`, a non-empty text")
        if not isinstance(answer, str) or not answer.strip():
            raise SuiteFileError(f"{where}: expected `answer`, the text the final answer must contain")
        if not isinstance(needs, list) or not all(isinstance(name, str) for name in needs):
            raise SuiteFileError(f'{where}: `tools` must be a list of tool function names, e.g. ["calculator"]')
        missing = [name for name in needs if name not in offered]
        if missing:
            raise SuiteFileError(
                f"{where}: the task needs {', '.join(missing)}, which eval.tools does not offer ({', '.join(offered)})"
            )
        rows.append({"line": number, "task": task, "answer": answer, "tools": needs})
    if not rows:
        raise SuiteFileError(f"{path}:1: no tasks")
    return rows


def is_right(task: dict, run: AgentRun) -> bool:
    """The final answer contains the expected text, ignoring case."""
    return run.answer is not None and task["answer"].strip().lower() in run.answer.lower()


def model_turns(run: AgentRun) -> int:
    """Model turns the task took: each turn that called tools, and the answering one."""
    return len({step.turn for step in run.steps if step.kind in {"tool_call", "answer"}})


def score_runs(tasks: list[dict], runs: list[AgentRun]) -> tuple[dict, list[dict]]:
    """({metric: {value, stderr}}, one sample per task). Means over the tasks of:

    - answer_accuracy: the final answer contains the expected text (any case);
    - finished: a final answer came within `eval.max_steps` model turns;
    - tool_errors: tool calls answered with an error (unknown tool, bad arguments, a tool that failed);
    - mean_steps: model turns taken (`model_turns`).
    """
    scores: dict[str, list[float]] = {"answer_accuracy": [], "finished": [], "tool_errors": [], "mean_steps": []}
    samples = []
    for task, run in zip(tasks, runs, strict=True):
        task_scores = {
            "answer_accuracy": float(is_right(task, run)),
            "finished": float(run.answer is not None),
            "tool_errors": float(sum(step.kind == "tool_result" and step.ok is False for step in run.steps)),
            "mean_steps": float(model_turns(run)),
        }
        for name, value in task_scores.items():
            scores[name].append(value)
        samples.append(
            {
                "line": task["line"],
                "task": task["task"],
                "expected": task["answer"],
                "answer": run.answer,
                "stopped": run.stopped,
                "scores": task_scores,
                "seconds": round(run.seconds, 2),
                "steps": [step.record() for step in run.steps],
            }
        )
    return {name: mean_with_stderr(values) for name, values in scores.items()}, samples
