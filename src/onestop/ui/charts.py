"""Charts as PNG bytes, drawn on the server with matplotlib (no JavaScript, no external assets)."""

# Lazy imports: matplotlib (inside loss_chart).

import io

from onestop.core.rundir import RunDir
from onestop.evaluation.runs import csv_losses


def loss_curves(run: RunDir) -> dict[str, list[tuple[int, float]]]:
    """{"train": [(step, loss)], "validation": [(step, loss)]}: from metrics.json once the run has ended, from
    its CSV log while it runs."""
    metrics = run.metrics() or {}
    train = [(step, loss) for step, loss in enumerate(metrics.get("train_losses") or [], start=1)]
    val = [(int(p["step"]), float(p["val_loss"])) for p in metrics.get("val_history") or [] if "val_loss" in p]
    if not train:
        train, csv_val = csv_losses(run)
        val = val or csv_val
    return {"train": train, "validation": val}


def loss_chart(runs: list[tuple[str, RunDir]]) -> bytes:
    """Training (solid) and validation (dashed, dots) loss of each (label, run), overlaid."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7.5, 3.6), dpi=100)
    drawn = False
    for index, (label, run) in enumerate(runs):
        color = f"C{index % 10}"
        curves = loss_curves(run)
        prefix = f"{label}: " if len(runs) > 1 else ""
        if curves["train"]:
            steps, losses = zip(*curves["train"], strict=True)
            axes.plot(steps, losses, color=color, label=f"{prefix}train")
            drawn = True
        if curves["validation"]:
            steps, losses = zip(*curves["validation"], strict=True)
            axes.plot(steps, losses, color=color, linestyle="--", marker="o", markersize=3, label=f"{prefix}validation")
            drawn = True
    if not drawn:
        axes.text(0.5, 0.5, "no losses recorded yet", ha="center", va="center", transform=axes.transAxes)
    else:
        axes.legend(fontsize=8)
    axes.set_xlabel("optimizer step")
    axes.set_ylabel("loss")
    axes.grid(alpha=0.3)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    plt.close(figure)
    return buffer.getvalue()
