"""The eval stage: one suite, run by lm-evaluation-harness on a base model, a training run, or an endpoint.

    invoke eval model=qwen eval=mmlu
    invoke eval run_dir=runs/train/DIR eval=qa eval.path=my_questions.jsonl
    invoke eval endpoint=http://127.0.0.1:8000/v1 endpoint_model=NAME eval=qa eval.path=my_questions.jsonl
    invoke eval run_dir=runs/train/DIR eval=tools          tool calls scored without lm-eval (tool_calls.py)
    invoke eval model=qwen eval=classify eval.path=FILE    labels, scored per class without lm-eval (classify.py)
    invoke eval model=tiny,gemma3_270m eval=classify ...   several models, compared (many.py)

(eval=agent runs tasks through the agent loop, a stage above this one: onestop.agents.evaluate.)

Writes results.json (metrics with standard errors, config, model identity, samples) to the output
directory, prints a table, and logs to W&B: into the training run's own W&B run when run_dir is given.
"""

# Lazy imports: lm_eval, wandb (inside the functions that need them).

import json
import os
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from onestop import __version__
from onestop.config.schema import EvalConfig, EvalSuiteConfig
from onestop.core.errors import OnestopError
from onestop.core.hub import hub_reachable
from onestop.core.paths import CONF_DIR
from onestop.core.quiet import library_output_dropped
from onestop.core.rundir import RunDir, job_config, write_results_file
from onestop.core.wandb_mode import wandb_mode
from onestop.evaluation.classify import UNPARSED, chat_prompt, read_labelled, reply_label, resolve_labels, score_labels
from onestop.evaluation.generation import end_of_turn, generate_greedy, in_process_lm, stop_token_ids
from onestop.evaluation.report import plot_confusion, print_metrics
from onestop.evaluation.reward import load_scorer, read_pairs, score_pairs
from onestop.evaluation.suites import PUBLIC_SUITES, local_task
from onestop.evaluation.targets import (
    Target,
    auth_headers,
    check_endpoint,
    describe_target,
    device,
    load_target_model,
    load_target_tokenizer,
)
from onestop.evaluation.tool_calls import (
    progress,
    read_replies,
    read_tool_rows,
    score_replies,
    served_replies,
    tool_prompts,
    with_system_prompt,
)
from onestop.evaluation.workers import WorkerPool, pooled_lm
from onestop.selection.devices import GIB
from onestop.selection.estimate import serving_memory


@dataclass
class EvalResult:
    output_dir: Path
    metrics: dict[str, dict[str, dict[str, float | None]]]
    """{task: {metric: {"value": v, "stderr": s}}}."""
    samples: dict[str, list[dict]] = field(default_factory=dict)

    def flat(self) -> dict[str, float]:
        """{"task/metric": value}, the form W&B, sweeps and comparisons use."""
        return {f"{t}/{m}": v["value"] for t, ms in self.metrics.items() for m, v in ms.items()}

    def logged(self, suite: str) -> dict[str, float]:
        """W&B keys: eval/SUITE/METRIC for a one-task suite, eval/SUITE/TASK/METRIC otherwise."""
        return {
            f"eval/{m}" if m.startswith(f"{suite}/") else f"eval/{suite}/{m}": value for m, value in self.flat().items()
        }


def build_tasks(suite: DictConfig, mode: str, stop_strings: list[str]):
    """lm-eval tasks for the suite and the task manager to run them (checks local files and public datasets
    before any model loads)."""
    from lm_eval.tasks import TaskManager

    if suite.kind != "public":
        # lm-eval's default manager indexes its thousands of bundled task files (about 5 s); a local suite
        # needs none of them
        return [local_task(suite, mode, stop_strings)], TaskManager(include_defaults=False)

    tasks = list(suite.tasks) or PUBLIC_SUITES.get(suite.name, ([], None))[0]
    if not tasks:
        raise OnestopError(f"eval={suite.name}: a public suite needs eval.tasks (lm-eval task names)")
    manager = TaskManager()
    if not hub_reachable():
        os.environ["HF_DATASETS_OFFLINE"] = "1"  # use the datasets cache if the benchmark was downloaded before
    try:
        loaded = manager.load(tasks)
    except Exception as err:  # lm-eval raises many types for a missing dataset; all mean the same to a user
        dataset = suite.hub_dataset or "its dataset"
        layout = "a JSONL/CSV of prompt + reference" if suite.name == "gsm8k" else "the MMLU/C-Eval CSV layout"
        local = "eval=qa" if suite.name == "gsm8k" else "eval=mcq"
        raise OnestopError(
            f"eval={suite.name}: could not load {dataset} ({type(err).__name__}); offline, download it on a "
            f"machine with internet, or run your local copy with {local} eval.path=FILE ({layout})"
        ) from None
    return list(loaded["tasks"].values()), manager


def build_lm(cfg: DictConfig, target: Target, tokenizer, stop_strings: list[str]):
    """The lm-eval model: its chat-completions client, or in-process the target's model (with its peft adapter)
    stopping at the end of each answer (`in_process_lm`)."""
    suite = cfg.eval
    if target.kind == "endpoint":
        return chat_completions_client()(
            base_url=cfg.endpoint.rstrip("/") + "/chat/completions",
            model=target.identity["endpoint_model"],
            num_concurrent=suite.concurrency,
            max_retries=2,
            max_gen_toks=suite.max_new_tokens,
            seed=cfg.seed,
            header=auth_headers(cfg) or None,
        )
    return in_process_lm(load_target_model(cfg, target), tokenizer, suite.batch_size, stop_strings)


def chat_completions_client():
    """lm-eval's chat-completions model, minus an empty `stop` list (some servers, transformers serve among
    them, answer 500 to `"stop": []`, which the OpenAI API accepts)."""
    from lm_eval.models.openai_completions import LocalChatCompletion

    class ChatCompletions(LocalChatCompletion):
        def _create_payload(self, *args, **kwargs) -> dict:
            payload = super()._create_payload(*args, **kwargs)
            payload["stop"] = [s for s in payload.get("stop") or [] if s]
            if not payload["stop"]:
                del payload["stop"]
            return payload

    return ChatCompletions


def evaluate(cfg: DictConfig, lm=None, tokenizer=None, quiet: bool = False) -> EvalResult:
    """Run `cfg.eval` on the target `cfg` names (or on an already built lm-eval model `lm`)."""
    suite = cfg.eval
    if suite.kind == "agent":
        raise OnestopError(
            f"eval={suite.name}: an agent suite runs through invoke eval with endpoint= or run_dir= (the agent "
            "loop is a stage above evaluation), not from training, sweeps or benchmarks"
        )
    if suite.kind == "tools":
        return evaluate_tool_calls(cfg, lm, tokenizer, quiet)
    if suite.kind == "classify":
        return evaluate_classification(cfg, lm, tokenizer, quiet)
    if suite.kind == "rm":
        return evaluate_reward_model(cfg, quiet)
    import lm_eval
    from lm_eval import simple_evaluate

    # lm-eval bootstraps BLEU/chrF standard errors in a forked multiprocessing pool; forking a process
    # that runs torch and Lightning threads can deadlock the child (seen mid-training with periodic_eval).
    os.environ.setdefault("DISABLE_MULTIPROC", "1")

    if suite.kind in {"mcq", "qa", "ppl"} and not suite.path:
        raise OnestopError(f"eval={suite.name}: set eval.path=FILE")
    target = describe_target(cfg) if lm is None else Target("in-memory", {"model": cfg.model.name})
    if target.kind != "endpoint" and tokenizer is None:
        tokenizer = load_target_tokenizer(cfg, target)
    stop_strings = end_of_turn(tokenizer) if tokenizer is not None and suite.chat_template else []
    mode = suite.mcq_mode
    if mode == "auto":
        mode = "generate" if target.kind == "endpoint" else "loglikelihood"
    tasks, manager = build_tasks(suite, mode, stop_strings)
    workers = scale_out(cfg, target)
    check_endpoint(cfg, target)
    # Chat endpoints take messages, so the server's own template formats them, as it does for any client.
    chat = bool(suite.chat_template or target.kind == "endpoint")
    started = time.perf_counter()
    with ExitStack() as stack:
        stack.enter_context(library_output_dropped())
        model = None
        if lm is None and workers > 1:
            model = stack.enter_context(WorkerPool(cfg, target, workers, stop_strings))
            lm = pooled_lm(model, tokenizer)
        elif lm is None:
            lm = build_lm(cfg, target, tokenizer, stop_strings)
        raw = simple_evaluate(
            model=lm,
            tasks=tasks,
            task_manager=manager,
            num_fewshot=suite.num_fewshot,
            limit=suite.limit,
            apply_chat_template=chat,
            fewshot_as_multiturn=chat and bool(suite.num_fewshot),
            log_samples=suite.log_samples,
            system_instruction=suite.system_prompt,
            bootstrap_iters=suite.bootstrap_iters,
            random_seed=cfg.seed,
            numpy_random_seed=cfg.seed,
            torch_random_seed=cfg.seed,
            fewshot_random_seed=cfg.seed,
        )
    metrics = collect_metrics(raw)
    samples = {task: [compact_sample(s) for s in rows] for task, rows in (raw.get("samples") or {}).items()}
    result = EvalResult(Path(cfg.output_dir).absolute(), metrics, samples)
    if not quiet:
        versions = {"lm_eval": lm_eval.__version__, **(raw.get("versions") or {})}
        if model is None:
            model = getattr(lm, "model", None)  # the chat-completions client's `model` is the served name
            model = model if hasattr(model, "parameters") else None
        write_results(result, cfg, target, time.perf_counter() - started, raw.get("n-samples"), versions, model)
    return result


def scale_out(cfg: DictConfig, target: Target) -> int:
    """The worker processes an in-process suite runs on (`eval.workers`), after checking that the target is
    one the key applies to (`eval.concurrency` is the endpoint's)."""
    suite = cfg.eval
    for key, value in (("workers", suite.workers), ("concurrency", suite.concurrency)):
        if value < 1:
            raise OnestopError(f"eval.{key}={value}: expected 1 or more")
    if target.kind == "endpoint" and suite.workers > 1:
        raise OnestopError(
            f"eval.workers={suite.workers}: an endpoint is scaled with eval.concurrency=N (requests in flight)"
        )
    if target.kind != "endpoint" and suite.concurrency > 1:
        raise OnestopError(
            f"eval.concurrency={suite.concurrency}: requests in flight to an endpoint; in-process, use eval.workers=N"
        )
    return suite.workers if target.kind in {"model", "run"} else 1


def generate_in_process(cfg: DictConfig, target: Target, lm, tokenizer, texts: list[str], on_batch=None):
    """Greedy continuations (token ids, `generate_greedy`) of formatted prompts, and what produced them: `lm`'s
    model (mid-training), the target's model loaded here, or eval.workers processes (a `WorkerPool`)."""
    suite = cfg.eval
    options = {"max_new_tokens": suite.max_new_tokens, "batch_size": suite.batch_size}
    stops = end_of_turn(tokenizer)
    workers = scale_out(cfg, target)
    if lm is None and workers > 1:
        lengths = [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]
        with WorkerPool(cfg, target, workers, stops) as pool:
            tokens = pool.run("generate_greedy", texts, lengths, texts, **options)
        if on_batch:
            on_batch(len(texts))
        return tokens, pool
    model = lm.model if lm is not None else load_target_model(cfg, target)
    stop_ids = stop_token_ids(model, tokenizer, stops)
    return generate_greedy(model, tokenizer, texts, stop_ids=stop_ids, on_batch=on_batch, **options), model


def evaluate_tool_calls(cfg: DictConfig, lm=None, tokenizer=None, quiet: bool = False) -> EvalResult:
    """The `tools` suite (tool_calls.py): every row checked before any model loads, then the target's replies
    generated in-process (or `lm`'s model, mid-training) or asked of the endpoint, and scored."""
    suite = cfg.eval
    if not suite.path:
        raise OnestopError(f"eval={suite.name}: set eval.path=FILE")
    every_row = read_tool_rows(Path(suite.path).expanduser())
    rows = with_system_prompt(every_row[: suite.limit] if suite.limit else every_row, suite.system_prompt)
    target = describe_target(cfg) if lm is None else Target("in-memory", {"model": cfg.model.name})
    scale_out(cfg, target)  # a misplaced eval.workers / eval.concurrency fails before any model loads
    check_endpoint(cfg, target)
    started = time.perf_counter()
    model = None
    if target.kind == "endpoint":
        replies = endpoint_replies(cfg, target, suite, rows, "scored as no call")
    else:
        tokenizer = tokenizer or load_target_tokenizer(cfg, target)
        if getattr(tokenizer, "response_template", None) is None:
            model_name = target.identity.get("run_dir") or target.identity["model"]
            raise OnestopError(
                f"eval={suite.name}: {model_name}'s tokenizer cannot read tool calls back (no response template); "
                "set model.tool_format (a run keeps the tokenizer it trained with), or score a server with endpoint="
            )
        prompts = tool_prompts(tokenizer, rows)
        with progress(len(rows), "tool-call prompts") as bar:
            generated, model = generate_in_process(cfg, target, lm, tokenizer, prompts, bar.update)
        replies = read_replies(tokenizer, rows, prompts, generated)
    metrics, samples = score_replies(rows, replies)
    result = EvalResult(
        Path(cfg.output_dir).absolute(), {suite.name: metrics}, {suite.name: samples} if suite.log_samples else {}
    )
    if not quiet:
        counts = {suite.name: {"original": len(every_row), "effective": len(rows)}}
        write_results(result, cfg, target, time.perf_counter() - started, counts, {"onestop": __version__}, model)
    return result


def evaluate_classification(cfg: DictConfig, lm=None, tokenizer=None, quiet: bool = False) -> EvalResult:
    """The `classify` suite (classify.py): rows and labels checked before any model loads, greedy replies
    generated in-process (or by `lm`'s model, mid-training) or asked of the endpoint, each read as a label;
    metrics per suite and per label (task SUITE/LABEL), and confusion.png beside results.json."""
    suite = cfg.eval
    if not suite.path:
        raise OnestopError(f"eval={suite.name}: set eval.path=FILE")
    if suite.num_fewshot:
        raise OnestopError(
            f"eval.num_fewshot={suite.num_fewshot}: eval={suite.name} asks without examples; "
            "describe the labels in eval.label_prompt or eval.system_prompt instead"
        )
    path = Path(suite.path).expanduser()
    labels, every_row = resolve_labels(read_labelled(path), list(suite.labels), path)
    rows = every_row[: suite.limit] if suite.limit else every_row
    prompts = [chat_prompt(row["text"], labels, suite) for row in rows]
    target = describe_target(cfg) if lm is None else Target("in-memory", {"model": cfg.model.name})
    scale_out(cfg, target)  # a misplaced eval.workers / eval.concurrency fails before any model loads
    check_endpoint(cfg, target)
    started = time.perf_counter()
    model = None
    if target.kind == "endpoint":
        asked = [{"line": row["line"], "messages": m, "tools": []} for row, m in zip(rows, prompts, strict=True)]
        replies = endpoint_replies(cfg, target, suite, asked, f"read as {UNPARSED}")
        texts = [reply.content.strip() for reply in replies]
    else:
        tokenizer = tokenizer or load_target_tokenizer(cfg, target)
        formatted = [tokenizer.apply_chat_template(m, tokenize=False, add_generation_prompt=True) for m in prompts]
        generated, model = generate_in_process(cfg, target, lm, tokenizer, formatted)
        texts = [tokenizer.decode(tokens, skip_special_tokens=True).strip() for tokens in generated]
    questions = [messages[-1]["content"] for messages in prompts]  # a reply that repeats it is read past it
    predicted = [reply_label(text, labels, question) for text, question in zip(texts, questions, strict=True)]
    scores = score_labels([row["label"] for row in rows], predicted, labels)
    metrics = {suite.name: scores.overall} | {f"{suite.name}/{label}": v for label, v in scores.per_class.items()}
    samples = [
        {
            "line": row["line"],
            "text": row["text"],
            "expected": row["label"],
            "reply": text,
            "predicted": label,
            "correct": label == row["label"],
        }
        for row, text, label in zip(rows, texts, predicted, strict=True)
    ]
    result = EvalResult(Path(cfg.output_dir).absolute(), metrics, {suite.name: samples} if suite.log_samples else {})
    if not quiet:
        png = result.output_dir / "confusion.png"
        plot_confusion(png, labels, scores.columns, scores.confusion, f"{suite.name} on {describe(target)}")
        counts = {suite.name: {"original": len(every_row), "effective": len(rows)}}
        confusion = {"expected": labels, "predicted": scores.columns, "counts": scores.confusion}
        seconds = time.perf_counter() - started
        write_results(result, cfg, target, seconds, counts, {"onestop": __version__}, model, {"confusion": confusion})
        print(f"Confusion matrix: {png}", flush=True)
    return result


def evaluate_reward_model(cfg: DictConfig, quiet: bool = False) -> EvalResult:
    """The `rm` suite (reward.py): the pairs checked before any model loads, each side scored by the run's reward
    model (or the base's untrained head), pairwise accuracy and mean margin."""
    suite = cfg.eval
    if not suite.path:
        raise OnestopError(f"eval={suite.name}: set eval.path=FILE (preference pairs)")
    every_row = read_pairs(Path(suite.path).expanduser())
    rows = every_row[: suite.limit] if suite.limit else every_row
    target = describe_target(cfg)
    started = time.perf_counter()
    scorer = load_scorer(cfg, target, device(cfg))
    metrics, samples = score_pairs(scorer, rows)
    result = EvalResult(
        Path(cfg.output_dir).absolute(), {suite.name: metrics}, {suite.name: samples} if suite.log_samples else {}
    )
    if not quiet:
        counts = {suite.name: {"original": len(every_row), "effective": len(rows)}}
        seconds = time.perf_counter() - started
        write_results(result, cfg, target, seconds, counts, {"onestop": __version__}, scorer.model)
    return result


def collect_metrics(raw: dict) -> dict:
    """lm-eval's {"acc,none": v, "acc_stderr,none": s} per task and group, as {task: {metric: {value, stderr}}}."""
    metrics: dict[str, dict] = {}
    for table in ("results", "groups"):
        for task, values in (raw.get(table) or {}).items():
            row = {}
            for key, value in values.items():
                if "," not in key or "_stderr," in key or not isinstance(value, int | float):
                    continue
                name, filter_name = key.split(",", 1)
                stderr = values.get(f"{name}_stderr,{filter_name}")
                label = name if filter_name == "none" else f"{name}[{filter_name}]"
                row[label] = {
                    "value": float(value),
                    "stderr": float(stderr) if isinstance(stderr, int | float) else None,
                }
            if row:
                metrics[task] = row
    return metrics


def compact_sample(sample: dict) -> dict:
    """One evaluated row: the document, the target, what the model answered, and its scores."""
    responses = sample.get("filtered_resps") or sample.get("resps")
    if isinstance(responses, list) and len(responses) == 1:
        responses = responses[0]
    kept = {"doc_id": sample.get("doc_id"), "doc": sample.get("doc"), "target": sample.get("target")}
    kept["response"] = responses
    for key, value in sample.items():
        if key not in {"doc", "target", "arguments", "resps", "filtered_resps", "doc_id", "doc_hash"}:
            if key in {"prompt_hash", "target_hash", "filter"}:
                continue
            kept[key] = value
    return json.loads(json.dumps(kept, default=str))


def write_results(
    result: EvalResult,
    cfg: DictConfig,
    target: Target,
    seconds: float,
    n_samples: dict | None = None,
    versions: dict | None = None,
    model=None,
    extra: dict | None = None,
) -> None:
    """results.json in the output directory, the table on the terminal, and the scores in W&B.

    Args:
        result: The scores and samples.
        cfg: The eval config (saved whole, resolved).
        target: What was evaluated.
        seconds: How long the evaluation took.
        n_samples: {task: {"original": rows in the file, "effective": rows scored}}.
        versions: Versions of what scored it (lm-eval and its tasks, or onestop).
        model: The torch model that answered, when it ran in-process (its parameters are counted).
        extra: More top-level entries of results.json (the classify suite's confusion matrix).
    """
    payload = {
        "suite": cfg.eval.name,
        "target": target.identity | {"kind": target.kind},
        "model_facts": model_facts(cfg, target, model),
        "metrics": result.metrics,
        "n_samples": n_samples,
        "versions": versions or {},
        "seconds": seconds,
        "config": job_config(cfg),
        "samples": result.samples,
    } | (extra or {})
    saved = write_results_file(result.output_dir, payload)
    print_metrics(f"{cfg.eval.name} on {describe(target)}", result.metrics)
    log_to_wandb(cfg, target, result)
    print(f"Results: {saved}", flush=True)


def endpoint_replies(cfg: DictConfig, target: Target, suite, asked: list[dict], on_error: str) -> list:
    """The endpoint's replies to `asked` (rows with `messages` and `tools`), saying how many were errors and
    how they are scored (`on_error`)."""
    replies = served_replies(
        asked,
        base_url=cfg.endpoint,
        model=target.identity["endpoint_model"],
        api_key=os.environ.get(cfg.api_key_env) or "-",
        max_new_tokens=suite.max_new_tokens,
        num_concurrent=suite.concurrency,
    )
    failed = sum(reply.error is not None for reply in replies)
    if failed:
        print(f"{failed} of {len(asked)} rows: the endpoint answered with an error, {on_error}", flush=True)
    return replies


def model_facts(cfg: DictConfig, target: Target, model=None) -> dict:
    """What candidates are ranked by besides their scores (eval.compare shows them): the model option, where
    its weights came from, its parameter count when it ran in-process (None when served), and the memory
    it is estimated to need to serve the suite's batch at the model's full context."""
    identity = target.identity
    if target.kind == "endpoint":
        option, path = identity["endpoint_model"], identity["endpoint"]
    elif target.kind == "run":
        option, path = identity["model"], identity["run_dir"]
    else:  # the option chosen with model=, which names the file in conf/model/ (model.name usually matches)
        option = OmegaConf.select(cfg, "hydra.runtime.choices.model", default=None) or identity["model"]
        path = identity.get("model_path")
    if isinstance(model, WorkerPool):
        parameters = model.parameter_count
    else:
        parameters = sum(p.numel() for p in model.parameters()) if model is not None else None
    memory = None
    if target.kind != "endpoint":
        try:
            memory = serving_memory(cfg.model, cfg.eval.batch_size, cfg.model.max_seq_len) / GIB
        except OnestopError:  # an architecture with no config to read: ranked without the estimate
            pass
    return {"option": option, "path": path, "parameters": parameters, "serving_gib": memory}


def describe(target: Target) -> str:
    identity = target.identity
    if target.kind == "endpoint":
        return f"{identity['endpoint_model']} at {identity['endpoint']}"
    if target.kind == "run":
        return f"run {identity['run_dir']}"
    return str(identity["model"])


def log_to_wandb(cfg: DictConfig, target: Target, result: EvalResult) -> None:
    """Log the scores to W&B: into the training run's own W&B run when evaluating a run directory."""
    if not cfg.logger or cfg.logger.get("kind") != "wandb":
        return  # csv and none: results.json is the record
    import wandb

    mode = wandb_mode(cfg.logger.get("offline"))
    init = {"project": cfg.logger.get("project") or "onestop", "entity": cfg.logger.get("entity")}
    run = RunDir(target.identity["run_dir"]) if target.kind == "run" else None
    run_id = run.wandb_run_id() if run else None
    if run_id:
        init |= {"id": run_id, "resume": "allow", "dir": str(run.path)}
        if target.run_config is not None and target.run_config.get("logger"):
            init["project"] = target.run_config.logger.get("project") or init["project"]
    else:
        result.output_dir.mkdir(parents=True, exist_ok=True)
        init |= {"dir": str(result.output_dir), "name": f"eval-{cfg.eval.name}-{result.output_dir.name}"}
    logged = wandb.init(mode=mode, job_type="eval", **init)
    flat = result.logged(cfg.eval.name)
    logged.log(flat)
    logged.summary.update(flat)
    logged.finish()
    if mode == "offline":
        print(f"W&B: logged offline; upload later with: wandb sync {Path(logged.dir).parent}")


def run_eval(cfg: DictConfig) -> EvalResult:
    return evaluate(cfg)


def eval_config(suite: DictConfig, **keys) -> DictConfig:
    """A typed eval config built in code (no Hydra compose, which would replace the caller's Hydra state)."""
    config = OmegaConf.merge(OmegaConf.structured(EvalConfig), {"eval": suite})
    for key, value in keys.items():
        config[key] = value
    return config


def suite_config(name: str, setting: str = "periodic_eval.suite", **overrides) -> DictConfig:
    """An option of the eval/ group as a typed node, without composing a whole config (used mid-training).

    `setting` is the config key that named the suite, for the error message.
    """
    option = CONF_DIR / "eval" / f"{name}.yaml"
    if not option.is_file():
        names = ", ".join(sorted(p.stem for p in option.parent.glob("*.yaml")))
        raise OnestopError(f"{setting}={name}: no such suite; choose one of: {names}")
    values = OmegaConf.load(option)
    values.pop("defaults", None)
    suite = OmegaConf.merge(OmegaConf.structured(EvalSuiteConfig), values)
    for key, value in overrides.items():
        if value is not None:
            suite[key] = value
    return suite
