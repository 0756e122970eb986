"""`invoke bench.trainers`: the same recipe trained by onestop and by transformers' Trainer + peft, scored alike.

invoke bench.trainers                                # the demo recipe: onestop vs transformers Trainer
invoke bench.trainers --variants "data.packing=true" # one more onestop row per set of overrides
"""

# Lazy imports: torch, transformers, peft, lightning, matplotlib (inside the functions that need them).

import gc
import json
import math
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from omegaconf import OmegaConf

from onestop.bench.output import PeakResident, markdown_table, print_table, run_row_in_child, two_decimals
from onestop.config.schema import TrainConfig
from onestop.core.errors import OnestopError
from onestop.core.files import save_figure_atomic, save_pretrained_atomic, write_json, write_text_atomic
from onestop.core.rundir import RunDir
from onestop.data.sft import SFTDataModule
from onestop.evaluation.generation import end_of_turn, in_process_lm
from onestop.evaluation.heldout import heldout_loss, heldout_questions
from onestop.evaluation.run import eval_config, evaluate, suite_config
from onestop.methods import method_from_config
from onestop.models import load_causal_lm, load_tokenizer, resolve_model_path
from onestop.models.precision import weights_dtype
from onestop.selection.devices import GIB, cpu_peak_tflops, this_machine
from onestop.selection.estimate import estimate
from onestop.training.hardware import trainer_hardware
from onestop.training.train import train


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
        row = run_row_in_child("onestop.bench.trainers:trainer_row", spec, f"bench.trainers: {label} failed")
        curves[label] = row.pop("train_losses")
        rows.append({"trainer": name, **row})
    for row in rows:
        row["onestop tok/s x"] = rows[0]["tok/s"] / max(row["tok/s"], 1e-9)
    flops = _add_utilisation(cfg, rows)
    write_json(out_dir / "bench.json", {"rows": rows, "train_losses": curves, "flops_per_token": flops})
    write_text_atomic(out_dir / "bench.md", markdown_table(rows, two_decimals))
    _plot_losses(out_dir / "train_loss.png", curves)
    print_table(rows, "onestop vs transformers Trainer, same recipe", two_decimals)
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
