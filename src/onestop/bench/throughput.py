"""`invoke bench.train`: training throughput and peak memory, one row per precision and variant.

invoke bench.train                                                   # gemma3_270m LoRA, demo data, fp32 vs bf16
invoke bench.train model=tiny --alpaca-like 400 --precisions 32-true \
    --variants "data.padding_free=false;data.packing=true"
invoke bench.train data.batch_size=8 --variants "train.loss_chunk_size=0;train.loss_chunk_size=1024"

Each row trains in a child process of its own, so its peak memory is its own. Throughput counts real
(non-padding) tokens over the steps after the first (which pays one-time costs), so padded and packed
batches compare fairly.
"""

# Lazy imports: torch, lightning (inside the functions that need them).

import json
import random
import resource
import sys
import time
from pathlib import Path

from onestop.bench.output import PeakResident, resident_bytes, results_dir, run_row_in_child, write_results
from onestop.config.compose import compose
from onestop.core.files import write_text_atomic
from onestop.data.packing import real_token_mask
from onestop.selection.devices import GIB
from onestop.training.train import train

WORDS = (
    "the of and to in is was for on that with as by at from his her an were are which this be model data "
    "answer question write list explain give three example short story code function number water light"
).split()


def bench_train(
    overrides: list[str], steps: int, precisions: list[str], variants: list[str], alpaca_like: int, output: str | None
) -> list[dict]:
    """Train `steps` optimizer steps per precision and variant (a space-separated set of overrides, '' for
    none); report real tokens/s, seconds per step, padding, the training loss and peak memory."""
    out_dir = results_dir("train", output)
    data = []
    if alpaca_like:
        corpus = out_dir / "alpaca_like.jsonl"
        write_alpaca_like(corpus, alpaca_like, seed=0)
        data = ["data=alpaca", f"data.path={corpus}"]
    rows = []
    for precision in precisions:
        for index, variant in enumerate(variants or [""]):
            spec = {
                "overrides": [
                    *overrides, *data, *variant.split(), f"hardware.precision={precision}",
                    f"trainer.max_steps={steps}", "trainer.max_epochs=1000", "logger=none", "data.val_path=null",
                    "data.val_ratio=0", f"hydra.run.dir={out_dir / f'{precision}-{index}'}",
                    "overwrite=true",  # the benchmark's own folder: run again with the same --output, it is remade
                ],
                "variant": variant or "-",
            }  # fmt: skip
            print(f"bench.train: precision {precision}, {variant or 'no variant'}", flush=True)
            rows.append(_train_in_child(spec))
    notes = (
        "tok/s: real (non-padding) tokens per second of training step, the first step left out. "
        "peak GiB: resident memory during training above the process's once the model was loaded "
        "(GPU: torch.cuda.max_memory_allocated). first loss: the first step's loss (the same batch for variants "
        "that do not change batching)."
    )
    write_results(out_dir, "train", {"steps": steps, "overrides": overrides, "rows": rows}, rows,
                  f"Training throughput, {steps} steps", notes)  # fmt: skip
    print(f"Results: {out_dir}", flush=True)
    return rows


def write_alpaca_like(path: Path, records: int, seed: int) -> None:
    """Instruction-following records with Alpaca's shape of lengths: short prompts (median ~15 words), answers
    of a few words to a few hundred (log-normal, median ~50 words), a third with an `input` field."""
    rng = random.Random(seed)

    def words(median: float, spread: float, most: int) -> str:
        count = min(most, max(1, round(rng.lognormvariate(0, spread) * median)))
        return " ".join(rng.choice(WORDS) for _ in range(count))

    lines = []
    for _ in range(records):
        record = {"instruction": words(12, 0.5, 80), "input": words(20, 0.8, 150) if rng.random() < 0.35 else ""}
        record["output"] = words(50, 1.0, 400)
        lines.append(json.dumps(record) + "\n")
    write_text_atomic(path, "".join(lines))


def _train_in_child(spec: dict) -> dict:
    failure = f"bench.train: the row '{spec['variant']}' failed"
    return run_row_in_child("onestop.bench.throughput:measure_train_row", spec, failure)


def measure_train_row() -> None:
    """One row, in its own process: train, measure; prints `ROW {json}`."""
    import lightning as L
    import torch

    spec = json.loads(sys.stdin.read())
    cfg = compose("train", spec["overrides"])
    gpu = torch.cuda.is_available() and cfg.hardware.accelerator != "cpu"

    class Meter(L.Callback):
        def __init__(self, memory: PeakResident):
            self.memory = memory
            self.baseline = 0
            self.seconds: list[float] = []
            self.tokens: list[int] = []

        def on_train_start(self, trainer, module):
            if gpu:
                torch.cuda.reset_peak_memory_stats()
            self.baseline = self.memory.peak = resident_bytes()
            self.memory.measuring = True

        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            self._started = time.perf_counter()

        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            if gpu:
                torch.cuda.synchronize()
            self.seconds.append(time.perf_counter() - self._started)
            self.tokens.append(int(real_token_mask(batch).sum()))

        def on_train_end(self, trainer, module):
            self.memory.measuring = False

    with PeakResident() as memory:
        meter = Meter(memory)
        result = train(cfg, callbacks=[meter])
    metrics = result.metrics
    timed = slice(1, None) if len(meter.seconds) > 1 else slice(None)
    losses = metrics["train_losses"]
    row = {
        "model": cfg.model.name,
        "method": cfg.method.name,
        "precision": metrics["precision"],
        "variant": spec["variant"],
        "batch": cfg.data.batch_size,
        "steps": metrics["steps"],
        "tok/s": sum(meter.tokens[timed]) / max(sum(meter.seconds[timed]), 1e-9),
        "s/step": sum(meter.seconds[timed]) / max(len(meter.seconds[timed]), 1),
        "padding %": 100 * metrics["padding"][-1]["padding_fraction"] if metrics["padding"] else None,
        "first loss": losses[0] if losses else None,
        "mean loss": sum(losses) / len(losses) if losses else None,
        "peak GiB": (torch.cuda.max_memory_allocated() if gpu else memory.peak - meter.baseline) / GIB,
        "max RSS GiB": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GIB,
    }
    print("ROW " + json.dumps(row), flush=True)
