"""Showing evaluation results: one run as a table, several side by side as a table and a PNG bar chart."""

# Lazy imports: matplotlib (inside the functions that need them).

import json
from pathlib import Path

from rich.console import Console
from rich.table import Table

from onestop.core.errors import OnestopError
from onestop.core.files import save_figure_atomic
from onestop.core.rundir import RunDir


def print_metrics(title: str, metrics: dict) -> None:
    table = Table(title=title)
    for column, justify in (("task", "left"), ("metric", "left"), ("value", "right"), ("± stderr", "right")):
        table.add_column(column, justify=justify)
    for task, values in metrics.items():
        for metric, score in values.items():
            stderr = score.get("stderr")
            table.add_row(task, metric, f"{score['value']:.4f}", "" if stderr is None else f"{stderr:.4f}")
    Console().print(table)


def find_results(path: str | Path) -> Path:
    """results.json itself, an eval output directory, or a run directory (its newest evaluation)."""
    path = Path(path).expanduser()
    if path.is_file():
        return path
    if (path / "results.json").is_file():
        return path / "results.json"
    found = RunDir(path).eval_results()
    if found:
        return found[-1]
    raise OnestopError(f"{path}: no results.json here or under eval/; run invoke eval first")


def compare(paths: list[str], output: str | None = None) -> Path:
    """Side-by-side table of every (task, metric) the results share; a PNG bar chart beside it."""
    if len(paths) < 2:
        raise OnestopError("eval.compare: give at least two result directories or files")
    files = [find_results(p) for p in paths]
    loaded = [json.loads(f.read_text()) for f in files]
    labels = _labels(files)
    keys = [(t, m) for t, ms in loaded[0]["metrics"].items() for m in ms]
    shared = [(t, m) for t, m in keys if all(m in r["metrics"].get(t, {}) for r in loaded)]
    if not shared:
        raise OnestopError("eval.compare: the results share no task and metric; compare runs of the same suite")

    table = Table(title="Evaluation results side by side")
    table.add_column("task / metric")
    for label in labels:
        table.add_column(label, justify="right")
    for task, metric in shared:
        table.add_row(f"{task} / {metric}", *(f"{r['metrics'][task][metric]['value']:.4f}" for r in loaded))
    Console(width=max(Console().width, 100)).print(table)

    png = Path(output) if output else files[-1].parent / "compare.png"
    plot_bars(png, labels, shared, loaded)
    print(f"Chart: {png}", flush=True)
    return png


def _labels(files: list[Path]) -> list[str]:
    """Short, distinct column names: the run or eval directory names."""
    labels = []
    for f in files:
        run = RunDir.owning(f)
        label = run.name if run else f.parent.name
        labels.append(label if label not in labels else f"{label} ({len(labels) + 1})")
    return labels


def plot_bars(png: Path, labels: list[str], shared: list[tuple[str, str]], loaded: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    width = 0.8 / len(labels)
    figure, axis = plt.subplots(figsize=(max(6, 1.2 * len(shared) * len(labels)), 4))
    for index, (label, result) in enumerate(zip(labels, loaded, strict=True)):
        values = [result["metrics"][t][m]["value"] for t, m in shared]
        errors = [result["metrics"][t][m].get("stderr") or 0 for t, m in shared]
        positions = [k + index * width for k in range(len(shared))]
        axis.bar(positions, values, width, yerr=errors, capsize=3, label=label)
    axis.set_xticks([k + width * (len(labels) - 1) / 2 for k in range(len(shared))])
    axis.set_xticklabels([f"{t}\n{m}" for t, m in shared], fontsize=8)
    axis.legend()
    axis.set_title("Evaluation results")
    figure.tight_layout()
    save_figure_atomic(figure, png)
    plt.close(figure)
