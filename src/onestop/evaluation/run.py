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

# Lazy imports: lm_eval, torch, transformers, peft, wandb (inside the functions that need them).

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from onestop import __version__
from onestop.config.schema import EvalConfig, EvalSuiteConfig
from onestop.core.endpoints import only_listed_model
from onestop.core.errors import OnestopError
from onestop.core.files import write_json
from onestop.core.hub import hub_reachable
from onestop.core.paths import CONF_DIR
from onestop.core.rundir import RunDir, job_config
from onestop.core.wandb_mode import wandb_mode
from onestop.evaluation.classify import UNPARSED, chat_prompt, read_labelled, reply_label, resolve_labels, score_labels
from onestop.evaluation.heldout import generate_answers
from onestop.evaluation.report import plot_confusion, print_metrics
from onestop.evaluation.suites import PUBLIC_SUITES, local_task
from onestop.evaluation.tool_calls import (
    generate_replies,
    read_tool_rows,
    score_replies,
    served_replies,
    stop_ids,
    with_system_prompt,
)
from onestop.models.loading import load_causal_lm, load_tokenizer, resolve_model_path
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


@dataclass
class Target:
    """What is evaluated: exactly one of a run directory, a base model, or an endpoint."""

    kind: str
    identity: dict
    run_config: DictConfig | None = None


def describe_target(cfg: DictConfig) -> Target:
    if cfg.endpoint and cfg.run_dir:
        raise OnestopError("endpoint= and run_dir= both set: evaluate one target at a time")
    if cfg.endpoint:
        return Target("endpoint", {"endpoint": cfg.endpoint, "endpoint_model": endpoint_model(cfg)})
    if cfg.run_dir:
        run = RunDir.existing(cfg.run_dir)
        run_config = run.config()
        weights = run.weights()
        identity = {"run_dir": str(run.path), "model": run_config.model.name, "model_path": run_config.model.path}
        where = {"adapter": str(weights.path)} if weights.is_adapter else {"model_dir": str(weights.path)}
        return Target("run", {**identity, **where}, run_config)
    return Target("model", {"model": cfg.model.name, "model_path": cfg.model.path})


def endpoint_model(cfg: DictConfig) -> str:
    """The served model's name: `endpoint_model=`, or the only model the endpoint lists."""
    if cfg.endpoint_model:
        return cfg.endpoint_model
    return only_listed_model(cfg.endpoint, _auth_headers(cfg), "endpoint", "endpoint_model")


def _auth_headers(cfg: DictConfig) -> dict:
    key = os.environ.get(cfg.api_key_env)
    return {"Authorization": f"Bearer {key}"} if key else {}


def device(cfg: DictConfig) -> str:
    """Where an in-process evaluation runs: the GPU when there is one and hardware allows it."""
    import torch

    return "cuda" if torch.cuda.is_available() and cfg.hardware.accelerator != "cpu" else "cpu"


def end_of_turn(tokenizer) -> list[str]:
    """The text the chat template closes an assistant turn with (`<end_of_turn>`, `<|im_end|>`): a stop string."""
    probe = [{"role": "user", "content": "?"}, {"role": "assistant", "content": "ANSWER"}]
    text = tokenizer.apply_chat_template(probe, tokenize=False)
    closing = text.split("ANSWER", 1)[1].strip()
    return [closing] if closing else []


def build_tasks(suite: DictConfig, mode: str, stop_strings: list[str]):
    """lm-eval tasks for the suite (checks local files and public datasets before any model loads)."""
    if suite.kind != "public":
        return [local_task(suite, mode, stop_strings)], None
    from lm_eval.tasks import TaskManager

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


def build_lm(cfg: DictConfig, target: Target, tokenizer):
    """The lm-eval model: its in-process `hf` model (with the peft adapter) or its chat-completions client."""
    suite = cfg.eval
    if target.kind == "endpoint":
        return chat_completions_client()(
            base_url=cfg.endpoint.rstrip("/") + "/chat/completions",
            model=target.identity["endpoint_model"],
            num_concurrent=cfg.num_concurrent,
            max_retries=2,
            max_gen_toks=suite.max_new_tokens,
            seed=cfg.seed,
            header=_auth_headers(cfg) or None,
        )
    from lm_eval.models.huggingface import HFLM

    where = device(cfg)
    common = {
        "tokenizer": tokenizer,
        "device": where,
        "dtype": "bfloat16" if where == "cuda" else "float32",
        "batch_size": suite.batch_size,
        "trust_remote_code": bool((target.run_config.model if target.run_config else cfg.model).trust_remote_code),
    }
    if target.kind == "run":
        identity = target.identity
        if "adapter" in identity:
            base = resolve_model_path(target.run_config.model)
            return HFLM(pretrained=base, peft=identity["adapter"], **common)
        return HFLM(pretrained=identity["model_dir"], **common)
    return HFLM(pretrained=resolve_model_path(cfg.model), **common)


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


def load_target_tokenizer(cfg: DictConfig, target: Target):
    """The tokenizer (chat template included) the target was trained with."""
    from transformers import AutoTokenizer

    if target.kind == "run":
        saved = Path(target.identity.get("adapter") or target.identity["model_dir"])
        tokenizer = AutoTokenizer.from_pretrained(saved)
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        return tokenizer
    return load_tokenizer(cfg.model)


def load_target_model(cfg: DictConfig, target: Target):
    """The target's weights in-process: a run's base with its adapter, a run's full model, or the base model."""
    from peft import PeftModel

    where = device(cfg)
    dtype = "bfloat16" if where == "cuda" else "float32"
    if target.kind != "run":
        return load_causal_lm(cfg.model, dtype).to(where)
    if "adapter" in target.identity:
        base = load_causal_lm(target.run_config.model, dtype)
        return PeftModel.from_pretrained(base, target.identity["adapter"]).to(where)
    return load_causal_lm(target.run_config.model, dtype, path=target.identity["model_dir"]).to(where)


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
    if lm is None:
        lm = build_lm(cfg, target, tokenizer)
    # Chat endpoints take messages, so the server's own template formats them, as it does for any client.
    chat = bool(suite.chat_template or target.kind == "endpoint")
    started = time.perf_counter()
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
        model = getattr(lm, "model", None)  # the chat-completions client's `model` is the served name
        model = model if hasattr(model, "parameters") else None
        write_results(result, cfg, target, time.perf_counter() - started, raw.get("n-samples"), versions, model)
    return result


def evaluate_tool_calls(cfg: DictConfig, lm=None, tokenizer=None, quiet: bool = False) -> EvalResult:
    """The `tools` suite (tool_calls.py): every row checked before any model loads, then the target's replies
    generated in-process (or `lm`'s model, mid-training) or asked of the endpoint, and scored."""
    suite = cfg.eval
    if not suite.path:
        raise OnestopError(f"eval={suite.name}: set eval.path=FILE")
    every_row = read_tool_rows(Path(suite.path).expanduser())
    rows = with_system_prompt(every_row[: suite.limit] if suite.limit else every_row, suite.system_prompt)
    target = describe_target(cfg) if lm is None else Target("in-memory", {"model": cfg.model.name})
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
        model = lm.model if lm is not None else load_target_model(cfg, target)
        stop = stop_ids(model, tokenizer, end_of_turn(tokenizer))
        replies = generate_replies(
            model, tokenizer, rows, stop=stop, max_new_tokens=suite.max_new_tokens, batch_size=suite.batch_size
        )
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
    started = time.perf_counter()
    model = None
    if target.kind == "endpoint":
        asked = [{"line": row["line"], "messages": m, "tools": []} for row, m in zip(rows, prompts, strict=True)]
        replies = endpoint_replies(cfg, target, suite, asked, f"read as {UNPARSED}")
        texts = [reply.content.strip() for reply in replies]
    else:
        tokenizer = tokenizer or load_target_tokenizer(cfg, target)
        model = lm.model if lm is not None else load_target_model(cfg, target)
        stop = stop_ids(model, tokenizer, end_of_turn(tokenizer))
        texts = generate_answers(
            model, tokenizer, prompts, max_new_tokens=suite.max_new_tokens, batch_size=suite.batch_size, stop=stop
        )
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
    write_json(result.output_dir / "results.json", json.loads(json.dumps(payload, default=str)))
    print_metrics(f"{cfg.eval.name} on {describe(target)}", result.metrics)
    log_to_wandb(cfg, target, result)
    print(f"Results: {result.output_dir / 'results.json'}", flush=True)


def endpoint_replies(cfg: DictConfig, target: Target, suite, asked: list[dict], on_error: str) -> list:
    """The endpoint's replies to `asked` (rows with `messages` and `tools`), saying how many were errors and
    how they are scored (`on_error`)."""
    replies = served_replies(
        asked,
        base_url=cfg.endpoint,
        model=target.identity["endpoint_model"],
        api_key=os.environ.get(cfg.api_key_env) or "-",
        max_new_tokens=suite.max_new_tokens,
        num_concurrent=cfg.num_concurrent,
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
