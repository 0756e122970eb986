"""Benchmarks. Speed and quality targets live here and in docs/benchmarks.md, never in unit tests.

invoke bench.train                                   # gemma3_270m LoRA on the demo data, fp32 vs bf16 (throughput.py)
invoke bench.trainers                                # the demo recipe: onestop vs transformers Trainer
invoke bench.agents run_dir=RUN                      # agent loops compared on one served model (docs/agents.md)
"""

# Lazy imports: torch, transformers, peft, lightning, matplotlib, smolagents (inside the functions that need them).

import gc
import json
import math
import random
import statistics
import sys
import time
from collections.abc import Sequence
from contextlib import ExitStack
from pathlib import Path

from omegaconf import OmegaConf

from onestop.agents.loop import run_task
from onestop.agents.session import open_endpoint
from onestop.agents.tools import load_tools, run_tool_call
from onestop.bench.output import PeakResident, markdown_table, print_table, resident_bytes, run_row_in_child
from onestop.config.compose import compose
from onestop.config.schema import TrainConfig
from onestop.core.errors import OnestopError
from onestop.core.files import save_figure_atomic, save_pretrained_atomic, write_json, write_text_atomic
from onestop.core.rundir import RunDir
from onestop.data.sft import SFTDataModule
from onestop.deploy.loadtest import run_load
from onestop.deploy.service import health, read_state, serving
from onestop.evaluation.generation import end_of_turn, in_process_lm
from onestop.evaluation.heldout import heldout_loss, heldout_questions
from onestop.evaluation.run import eval_config, evaluate, suite_config
from onestop.methods import method_from_config
from onestop.models import load_causal_lm, load_tokenizer, resolve_model_path
from onestop.models.precision import weights_dtype
from onestop.selection.devices import GIB, cpu_peak_tflops, this_machine
from onestop.selection.estimate import estimate, settings_from_config
from onestop.training.hardware import trainer_hardware
from onestop.training.train import train


def _cell(value) -> str:
    if value is None:
        return "-"
    return f"{value:.2f}" if isinstance(value, float) else str(value)


def compare_trainers(cfg, variants: Sequence[str] = ()) -> list[dict]:
    """Train one config with onestop and with a plain transformers `Trainer` + peft, and score each.

    onestop runs with its defaults; the Trainer with the same model, tokenized examples, adapter, optimizer,
    schedule, batch, epochs, clipping and seed, once at its CPU default (fp32) and once at onestop's precision
    where that differs (bf16 on a CPU with native bf16). `variants` add onestop rows, each with more overrides
    of existing keys ("data.padding_free=false", "data.packing=true"). Every run is scored by the same eval
    suite on the held-out questions. Each run is its own process, so its peak memory is its own.
    """
    if cfg.stage != "sft" or cfg.data.packing is True or cfg.data.streaming:
        raise OnestopError(
            "bench.trainers compares supervised fine-tuning (stage=sft, no packing or streaming); a packed onestop "
            'row is a variant: --variants "data.packing=true"'
        )
    out_dir = Path(cfg.paths.run_dir).absolute()
    config = OmegaConf.to_container(OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"]), resolve=True)
    precision = str(trainer_hardware(cfg.hardware)["precision"])
    runs = [("onestop", "onestop", precision, "")]
    runs += [(f"onestop {variant}", "onestop", precision, variant) for variant in variants if variant.strip()]
    runs.append(("transformers Trainer", "transformers", "32-true", ""))
    if precision != "32-true":
        runs.append(("transformers Trainer", "transformers", precision, ""))
    rows, curves = [], {}
    for index, (name, loop, run_precision, variant) in enumerate(runs):
        label = f"{name} {run_precision}"
        print(f"Training with {label}...", flush=True)
        changed = OmegaConf.to_container(OmegaConf.merge(config, OmegaConf.from_dotlist(variant.split())))
        folder = (
            f"transformers-{run_precision}" if loop == "transformers" else f"onestop-{index}" if variant else "onestop"
        )
        spec = {"config": changed, "loop": loop, "precision": run_precision, "out_dir": str(out_dir), "name": folder}
        row = run_row_in_child("onestop.bench:trainer_row", spec, f"bench.trainers: {label} failed")
        curves[label] = row.pop("train_losses")
        rows.append({"trainer": name, **row})
    for row in rows:
        row["onestop tok/s x"] = rows[0]["tok/s"] / max(row["tok/s"], 1e-9)
    flops = _add_utilisation(cfg, rows)
    write_json(out_dir / "bench.json", {"rows": rows, "train_losses": curves, "flops_per_token": flops})
    _write_markdown(out_dir / "bench.md", rows)
    _plot_losses(out_dir / "train_loss.png", curves)
    _print_table(rows, "onestop vs transformers Trainer, same recipe")
    print(f"Results: {out_dir}", flush=True)
    return rows


def _add_utilisation(cfg, rows: list[dict]) -> float:
    """Each row's training FLOP/s (its non-padding tokens/s x FLOPs per token as `invoke estimate` counts them)
    and its share of this machine's matmul peak in the row's precision (MFU). Returns the FLOPs per token."""
    import torch

    device = this_machine(measure_speed=False)
    flops = estimate(cfg, device).flops_per_token
    gpu_peak = this_machine().peak_tflops if torch.cuda.is_available() and cfg.hardware.accelerator != "cpu" else None
    for row in rows:
        # A CPU's peak is measured again now, the machine idle between runs; the highest reading is kept.
        peak = gpu_peak or cpu_peak_tflops(bf16=row["precision"].startswith("bf16"), refresh=True)
        row["TFLOP/s"] = row["tok/s"] * flops / 1e12
        row["peak TFLOP/s"] = peak
        row["MFU %"] = 100 * row["TFLOP/s"] / peak
    return flops


def trainer_row() -> None:
    """One bench.trainers run in its own process: train with one loop, score on the held-out questions; prints
    `ROW {json}`."""
    spec = json.loads(sys.stdin.read())
    cfg = OmegaConf.merge(OmegaConf.structured(TrainConfig), spec["config"])
    name = spec["name"]
    cfg.paths.run_dir = str(Path(spec["out_dir"]) / name)
    started = time.perf_counter()
    with PeakResident() as memory:
        routine = _train_with_onestop if spec["loop"] == "onestop" else _train_with_hf_trainer
        row, losses, adapter, val_conversations = routine(cfg, spec["precision"], memory)
    if not val_conversations:
        raise OnestopError("bench.trainers scores held-out answers: set data.val_path or data.val_ratio > 0")
    questions = Path(spec["out_dir"]) / "heldout_questions.jsonl"
    system_prompt = heldout_questions(val_conversations, questions)
    suite = suite_config("demo", setting="bench.trainers", path=str(questions), system_prompt=system_prompt)
    row.update(_score_adapter(cfg, suite, adapter, Path(spec["out_dir"]) / "eval" / name))
    row["wall s"] = time.perf_counter() - started
    print("ROW " + json.dumps({**row, "train_losses": losses}), flush=True)


def _measured_while_training(memory: PeakResident):
    """A Lightning callback that turns `memory` on for the training loop only."""
    import lightning as L

    class Measure(L.Callback):
        def on_train_start(self, trainer, module):
            memory.measuring = True

        def on_train_end(self, trainer, module):
            memory.measuring = False

    return Measure()


def _train_with_onestop(cfg, precision: str, memory: PeakResident):
    """onestop with its defaults (`precision` is what hardware=auto picks here)."""
    result = train(cfg, callbacks=[_measured_while_training(memory)])
    metrics = result.metrics
    row = {
        "precision": metrics["precision"],
        "batching": batching_of(result.datamodule.cfg),
        "examples/step": cfg.data.batch_size * cfg.trainer.accumulate_grad_batches,
        "steps": metrics["steps"],
        "s/step": metrics["train_seconds"] / max(metrics["steps"], 1),
        "tok/s": metrics["tokens_per_s"],
        "peak GiB": memory.peak / GIB,
        "held-out loss": heldout_loss(result.model, result.datamodule.val_dataloader()),
    }
    return row, metrics["train_losses"], result.run.weights().path, result.datamodule.val_conversations


def batching_of(data_cfg) -> str:
    """How a run's batches were laid out, from its resolved data config."""
    if data_cfg.packing is True:
        return "packed"
    return "padding-free" if data_cfg.padding_free is True else "padded"


def _train_with_hf_trainer(cfg, precision: str, memory: PeakResident):
    """The reference loop: `transformers.Trainer` on the same model, adapter and tokenized examples, padded
    batches, at `precision` (32-true: the Trainer's CPU default; bf16-mixed: `bf16=True`)."""
    import torch
    from transformers import Trainer, TrainerCallback, TrainingArguments, set_seed

    set_seed(cfg.seed)
    hardware = trainer_hardware(cfg.hardware)
    model_path = resolve_model_path(cfg.model)
    tokenizer = load_tokenizer(cfg.model, model_path)
    datamodule = SFTDataModule(cfg.data, tokenizer, seed=cfg.seed)  # data.padding_free unresolved: padded
    datamodule.setup()
    model = load_causal_lm(cfg.model, weights_dtype(precision), model_path)
    model = method_from_config(cfg.method)(model)
    if not hasattr(model, "peft_config"):
        raise OnestopError("bench.trainers compares adapter methods (lora, dora, ptuning); got a full-weight method")
    model.train()

    class CountingTrainer(Trainer):
        """Counts the non-padding tokens of the batches it trains on (the loader runs a batch ahead)."""

        tokens_seen = 0

        def compute_loss(self, model, inputs, *args, **kwargs):
            CountingTrainer.tokens_seen += int(inputs["attention_mask"].sum())
            return super().compute_loss(model, inputs, *args, **kwargs)

    class StepTimer(TrainerCallback):
        """Seconds inside optimizer steps (forward, backward, update), as onestop's module counts them; memory
        measured over the training loop."""

        seconds = 0.0

        def on_train_begin(self, args, state, control, **kwargs):
            memory.measuring = True

        def on_train_end(self, args, state, control, **kwargs):
            memory.measuring = False

        def on_step_begin(self, args, state, control, **kwargs):
            self._started = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            StepTimer.seconds += time.perf_counter() - self._started

    accumulation = cfg.trainer.accumulate_grad_batches
    steps_per_epoch = math.ceil(math.ceil(len(datamodule.train_set) / cfg.data.batch_size) / accumulation)
    total_steps = cfg.trainer.max_steps if cfg.trainer.max_steps > 0 else steps_per_epoch * cfg.trainer.max_epochs
    warmup = cfg.scheduler.warmup_ratio
    args = TrainingArguments(
        output_dir=str(Path(cfg.paths.run_dir) / "trainer"),
        per_device_train_batch_size=cfg.data.batch_size,
        gradient_accumulation_steps=accumulation,
        num_train_epochs=cfg.trainer.max_epochs or 1,
        max_steps=cfg.trainer.max_steps,
        learning_rate=cfg.optim.lr,
        weight_decay=cfg.optim.weight_decay,
        adam_beta1=cfg.optim.betas[0],
        adam_beta2=cfg.optim.betas[1],
        lr_scheduler_type="cosine",
        warmup_steps=max(1, round(total_steps * warmup)) if warmup > 0 else 0,
        max_grad_norm=cfg.trainer.gradient_clip_val or 0.0,
        bf16=precision.startswith("bf16"),
        fp16=precision.startswith("16"),
        use_cpu=hardware["accelerator"] == "cpu" or not torch.cuda.is_available(),
        logging_steps=1,
        save_strategy="no",
        eval_strategy="no",
        report_to="none",
        seed=cfg.seed,
        data_seed=cfg.seed,
        dataloader_num_workers=cfg.data.num_workers,
        remove_unused_columns=False,
    )
    trainer = CountingTrainer(
        model=model,
        args=args,
        train_dataset=datamodule.train_set,
        data_collator=datamodule.collate,
        callbacks=[StepTimer()],
    )
    output = trainer.train()
    steps = output.global_step
    adapter = save_pretrained_atomic(model, tokenizer, RunDir(cfg.paths.run_dir).adapter_dir)
    row = {
        "precision": precision,
        "batching": "padded",
        "examples/step": cfg.data.batch_size * accumulation,
        "steps": steps,
        "s/step": StepTimer.seconds / max(steps, 1),
        "tok/s": CountingTrainer.tokens_seen / max(StepTimer.seconds, 1e-9),
        "peak GiB": memory.peak / GIB,
        "held-out loss": heldout_loss(model, datamodule.val_dataloader()),
    }
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    return row, losses, adapter, datamodule.val_conversations


def _score_adapter(cfg, suite, adapter: Path, output_dir: Path) -> dict:
    """Score a saved adapter on its base with the eval stage, exactly as `invoke eval run_dir=` would."""
    import torch
    from peft import PeftModel
    from transformers import AutoTokenizer

    gc.collect()
    device = "cuda" if torch.cuda.is_available() and cfg.hardware.accelerator != "cpu" else "cpu"
    tokenizer = AutoTokenizer.from_pretrained(adapter)
    base = load_causal_lm(cfg.model, "bfloat16" if device == "cuda" else "float32")
    model = PeftModel.from_pretrained(base, str(adapter)).to(device)
    lm = in_process_lm(model, tokenizer, suite.batch_size, end_of_turn(tokenizer))
    common = {"model": cfg.model, "hardware": cfg.hardware, "logger": cfg.logger, "seed": cfg.seed}
    result = evaluate(eval_config(suite, output_dir=str(output_dir), **common), lm=lm, tokenizer=tokenizer)
    scores = result.flat()
    return {"exact match": scores["demo/exact_match"], "token F1": scores["demo/token_f1"]}


def _print_table(rows: list[dict], title: str) -> None:
    print_table(rows, title, _cell)


def _write_markdown(path: Path, rows: list[dict]) -> None:
    write_text_atomic(path, markdown_table(rows, _cell))


def _plot_losses(path: Path, curves: dict[str, list[float]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7, 4))
    for name, losses in curves.items():
        axes.plot(range(1, len(losses) + 1), losses, label=name, linewidth=1)
    axes.set_xlabel("optimizer step")
    axes.set_ylabel("training loss (answer tokens)")
    axes.legend()
    figure.tight_layout()
    save_figure_atomic(figure, path)
    plt.close(figure)


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
    _write_markdown(out_dir / "bench.md", rows)
    _print_table(rows, f"Agent loops on {endpoint.model}: same tasks, tools and server")
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


# The grid `invoke bench.estimate` measures: model -> micro-batch, then methods x sequence lengths x checkpointing.
ESTIMATE_GRID = {"tiny": 4, "gemma3_270m": 2}
ESTIMATE_METHODS = ("lora", "full", "freeze")
ESTIMATE_SEQ_LENS = (128, 512)


def bench_estimate(models: list[str], steps: int, output: str | None) -> list[dict]:
    """Estimated vs measured peak memory and step time over the grid; each row trains in a fresh process.

    Memory: the peak resident memory during the training steps above the process's own before the model
    loads (CPU), or torch.cuda.max_memory_allocated (GPU). Rows train on generated text that fills every
    sequence, with loss on every token: the case the estimate describes.
    """
    out_dir = Path(output or f"runs/bench/estimate/{time.strftime('%Y-%m-%d_%H-%M-%S')}").absolute()
    corpus = out_dir / "corpus.jsonl"
    out_dir.mkdir(parents=True, exist_ok=True)
    words = "the of and to in is was for on that with as by at from his her an were are which this be".split()
    rng = random.Random(0)
    write_text_atomic(
        corpus,
        "".join(json.dumps({"text": " ".join(rng.choice(words) for _ in range(900))}) + "\n" for _ in range(24)),
    )
    rows, machine = [], this_machine()
    for model in models:
        if model not in ESTIMATE_GRID:
            raise OnestopError(f"bench.estimate --models {model}: choose from {', '.join(ESTIMATE_GRID)}")
        for method in ESTIMATE_METHODS:
            for seq_len in ESTIMATE_SEQ_LENS:
                for checkpointing in (False, True):
                    spec = {
                        "model": model,
                        "method": method,
                        "seq_len": seq_len,
                        "batch": ESTIMATE_GRID[model],
                        "checkpointing": checkpointing,
                        "steps": steps,
                        "corpus": str(corpus),
                        "run_dir": str(out_dir / f"{model}-{method}-{seq_len}-{int(checkpointing)}"),
                    }
                    print(f"bench.estimate: {model} {method} seq {seq_len} checkpointing {checkpointing}", flush=True)
                    measured = Path(spec["run_dir"]) / "row.json"
                    if not measured.is_file():  # rerunning with the same --output measures only what is missing
                        write_json(measured, _measure_in_child(spec))
                    rows.append(_with_time_estimate(json.loads(measured.read_text()), spec, machine))
    write_json(out_dir / "bench.json", {"rows": rows})
    _write_markdown(out_dir / "bench.md", rows)
    _plot_estimates(out_dir / "estimate_vs_measured.png", rows)
    _print_table(rows, "Estimated vs measured peak memory and step time")
    worst = max(rows, key=lambda r: abs(r["mem err %"]))
    print(
        f"Worst memory row: {worst['model']} {worst['method']} seq {worst['seq']} "
        f"checkpointing {worst['ckpt']}: {worst['mem err %']:+.1f}%. Results: {out_dir}",
        flush=True,
    )
    return rows


def _with_time_estimate(row: dict, spec: dict, device) -> dict:
    """The row's step time estimated by the present code and the device's present peak, efficiency and
    per-step overhead: rows measured before a calibration are shown against the calibrated estimate."""
    predicted = estimate(_grid_config(spec), device)
    flops = predicted.tokens_per_step * predicted.flops_per_token
    return row | {
        "est s/step": predicted.step_seconds,
        "time err %": 100 * (predicted.step_seconds / row["measured s/step"] - 1),
        "MFU %": 100 * flops / row["measured s/step"] / (device.peak_tflops * 1e12),
        "flops/step": flops,
    }


def _measure_in_child(spec: dict) -> dict:
    failure = f"bench.estimate: the row {spec['model']}/{spec['method']} failed"
    return run_row_in_child("onestop.bench:measure_estimate_row", spec, failure)


def _grid_config(spec: dict):
    """The training config of one grid row: generated text filling every sequence, loss on every token."""
    return compose(
        "train",
        [
            f"model={spec['model']}",
            f"method={spec['method']}",
            "data=text",
            f"data.path={spec['corpus']}",
            "stage=pretrain",
            f"data.max_seq_len={spec['seq_len']}",
            f"data.batch_size={spec['batch']}",
            f"hardware.gradient_checkpointing={str(spec['checkpointing']).lower()}",
            f"trainer.max_steps={spec['steps']}",
            "trainer.val_check_interval=1000",
            "logger=none",
            "data.val_ratio=0",
            "hardware.memory_check=false",
            "data.contamination.enabled=false",
            f"hydra.run.dir={spec['run_dir']}",
        ],
    )


def measure_estimate_row() -> None:
    """One grid row, in its own process (so its peak is its own): estimate, train, measure; prints `ROW {json}`."""
    import lightning as L
    import torch

    spec = json.loads(sys.stdin.read())
    cfg = _grid_config(spec)
    device = this_machine()
    predicted = estimate(cfg, device, settings_from_config(cfg, device))
    gpu = torch.cuda.is_available()

    class StepMeter(L.Callback):
        def __init__(self, memory: PeakResident):
            self.memory = memory
            self.steps: list[float] = []

        def on_train_start(self, trainer, module):
            if gpu:
                torch.cuda.reset_peak_memory_stats()
            self.memory.measuring = True

        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            self._started = time.perf_counter()

        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            self.steps.append(time.perf_counter() - self._started)

        def on_train_end(self, trainer, module):
            self.memory.measuring = False

    gc.collect()
    baseline = resident_bytes()
    with PeakResident() as memory:
        meter = StepMeter(memory)
        train(cfg, callbacks=[meter])
    measured = torch.cuda.max_memory_allocated() if gpu else memory.peak - baseline
    step = statistics.median(meter.steps[1:] or meter.steps)
    estimated_total = predicted.memory.total - (device.overhead_gib * GIB if gpu else 0)
    achieved = predicted.tokens_per_step * predicted.flops_per_token / step
    row = {
        "model": spec["model"],
        "method": spec["method"],
        "seq": spec["seq_len"],
        "batch": spec["batch"],
        "ckpt": spec["checkpointing"],
        "est GiB": estimated_total / GIB,
        "measured GiB": measured / GIB,
        "mem err %": 100 * (estimated_total / measured - 1),
        "est s/step": predicted.step_seconds,
        "measured s/step": step,
        "time err %": 100 * (predicted.step_seconds / step - 1),
        "MFU %": 100 * achieved / (device.peak_tflops * 1e12),
        "flops/step": predicted.tokens_per_step * predicted.flops_per_token,
    }
    print("ROW " + json.dumps(row), flush=True)


def _plot_estimates(path: Path, rows: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 2, figsize=(10, 4.5))
    panels = (("est GiB", "measured GiB", "peak memory (GiB)"), ("est s/step", "measured s/step", "step time (s)"))
    for axis, (est, measured, unit) in zip(axes, panels, strict=True):
        for model in sorted({r["model"] for r in rows}):
            mine = [r for r in rows if r["model"] == model]
            axis.scatter([r[measured] for r in mine], [r[est] for r in mine], label=model)
        top = max(max(r[est], r[measured]) for r in rows) * 1.1
        axis.plot([0, top], [0, top], "k--", linewidth=0.8)
        axis.fill_between([0, top], [0, top * 0.85], [0, top * 1.15], alpha=0.1, color="green", label="±15%")
        axis.set_xlabel(f"measured {unit}")
        axis.set_ylabel(f"estimated {unit}")
        axis.set_xscale("log")
        axis.set_yscale("log")
        axis.legend()
    figure.tight_layout()
    save_figure_atomic(figure, path)
    plt.close(figure)


def bench_load(overrides: list[str], requests: int, concurrency: int, output: str | None) -> dict:
    """`requests` chat requests from `concurrency` clients, one in ten malformed, against a fresh deployment of
    the composed deploy config: status counts, latency, gateway memory before and after, health afterwards."""
    out_dir = Path(output or f"runs/bench/load/{time.strftime('%Y-%m-%d_%H-%M-%S')}").absolute()
    cfg = compose("deploy", [*overrides, "port=0", "name=bench-load"])
    with serving(cfg) as deployment:
        print(f"bench.load: {requests} requests from {concurrency} clients -> {deployment.base_url}", flush=True)
        figures = run_load(deployment.base_url, deployment.name, requests, concurrency, pid=deployment.pid)
        figures["health_after"] = health(read_state(deployment.state_file))
    write_json(out_dir / "load.json", figures)
    rows = [{"status": status, "requests": count} for status, count in sorted(figures["by_status"].items())]
    _print_table(rows, f"{requests} requests, {concurrency} clients, one in ten malformed")
    print(json.dumps({k: v for k, v in figures.items() if k not in {"by_kind", "failures"}}, indent=2))
    print(f"Results: {out_dir / 'load.json'}", flush=True)
    return figures
