"""`invoke bench.estimate`: the memory and time estimate (onestop.selection) against measured training runs.

invoke bench.estimate --models tiny,gemma3_270m --steps 4
"""

# Lazy imports: torch, lightning, matplotlib (inside the functions that need them).

import gc
import json
import random
import statistics
import sys
import time
from pathlib import Path

from onestop.bench.output import (
    PeakResident,
    markdown_table,
    print_table,
    resident_bytes,
    run_row_in_child,
    two_decimals,
)
from onestop.config.compose import compose
from onestop.core.errors import OnestopError
from onestop.core.files import save_figure_atomic, write_json, write_text_atomic
from onestop.selection.devices import GIB, this_machine
from onestop.selection.estimate import estimate, settings_from_config
from onestop.training.train import train

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
    write_text_atomic(out_dir / "bench.md", markdown_table(rows, two_decimals))
    _plot_estimates(out_dir / "estimate_vs_measured.png", rows)
    print_table(rows, "Estimated vs measured peak memory and step time", two_decimals)
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
    return run_row_in_child("onestop.bench.estimate:measure_estimate_row", spec, failure)


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
