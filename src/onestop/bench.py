"""Throughput benchmarks. Speed targets live here and in docs/benchmarks.md, never in unit tests.

invoke bench.train                                   # gemma3_270m LoRA on the demo data, fp32 vs bf16
invoke bench.train model=qwen hardware=gpu --steps 20 --precisions bf16-mixed
"""

import tempfile
from pathlib import Path


def bench_train(overrides: list[str], steps: int, precisions: list[str]) -> list[dict]:
    """Train `steps` optimizer steps once per precision; report tokens/s and seconds per step."""
    import torch
    from rich.console import Console
    from rich.table import Table

    from onestop.config.compose import compose
    from onestop.training.train import train

    rows = []
    with tempfile.TemporaryDirectory(prefix="onestop-bench-") as scratch:
        for precision in precisions:
            cfg = compose(
                "train",
                [
                    *overrides,
                    f"hardware.precision={precision}",
                    f"trainer.max_steps={steps}",
                    "logger=none",
                    "data.val_path=null",
                    "data.val_ratio=0",
                    f"hydra.run.dir={Path(scratch) / precision}",
                ],
            )
            if torch.cuda.is_available():
                torch.cuda.reset_peak_memory_stats()
            metrics = train(cfg).metrics
            rows.append(
                {
                    "model": cfg.model.name,
                    "method": cfg.method._target_.rsplit("_", 1)[-1],
                    "precision": precision,
                    "batch": cfg.data.batch_size,
                    "steps": metrics["steps"],
                    "tok/s": metrics["tokens_per_s"],
                    "s/step": metrics["train_seconds"] / max(metrics["steps"], 1),
                    "GPU GiB": torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None,
                }
            )
    table = Table(title=f"Training throughput, {steps} steps")
    for column, value in rows[0].items():
        table.add_column(column, justify="left" if isinstance(value, str) else "right", no_wrap=True)
    for row in rows:
        table.add_row(*(_cell(value) for value in row.values()))
    Console(width=max(Console().width, 100)).print(table)
    return rows


def _cell(value) -> str:
    if value is None:
        return "-"
    return f"{value:.2f}" if isinstance(value, float) else str(value)
