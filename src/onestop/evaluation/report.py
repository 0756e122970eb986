"""Showing evaluation results: one run as a table, several side by side (ranked) as a table and a PNG bar chart,
a classification's confusion matrix as a PNG."""

# Lazy imports: matplotlib (inside the functions that need them).

import json
from pathlib import Path

from rich.console import Console
from rich.table import Table

from onestop.core.errors import OnestopError
from onestop.core.files import save_figure_atomic
from onestop.core.rundir import RunDir, results_file

# Metrics where less is better; every other metric ranks higher first.
LOWER_IS_BETTER = {"word_perplexity", "byte_perplexity", "bits_per_byte", "unparsed", "server_errors", "tool_errors"}
# Counts of rows, not rates: shown as whole numbers, and kept off the bar chart where they would dwarf the rates.
COUNTS = {"support", "unparsed"}
# results.json's model_facts shown above the scores in eval.compare: (key, row title, format). Model selection's
# estimates (memory, seconds) go here as they are written.
FACT_ROWS = (
    ("option", "model", str),
    ("parameters", "parameters", lambda n: _short_count(n)),
    ("serving_gib", "memory to serve, est. (GiB)", lambda gib: f"{gib:.1f}"),
    ("seconds", "evaluation time", lambda seconds: f"{seconds:.0f} s"),
)


def print_metrics(title: str, metrics: dict) -> None:
    table = Table(title=title)
    for column, justify in (("task", "left"), ("metric", "left"), ("value", "right"), ("± stderr", "right")):
        table.add_column(column, justify=justify)
    for task, values in metrics.items():
        for metric, score in values.items():
            stderr = score.get("stderr")
            table.add_row(task, metric, _value(metric, score["value"]), "" if stderr is None else f"{stderr:.4f}")
    Console().print(table)


def _value(metric: str, value: float) -> str:
    return f"{value:.0f}" if metric in COUNTS else f"{value:.4f}"


def _short_count(number: int) -> str:
    for size, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "k")):
        if number >= size:
            return f"{number / size:.1f}{suffix}"
    return str(number)


def find_results(path: str | Path) -> Path:
    """results.json itself, an eval output directory, or a run directory (its newest evaluation)."""
    path = Path(path).expanduser()
    if path.is_file():
        return path
    if results_file(path).is_file():
        return results_file(path)
    found = RunDir(path).eval_results()
    if found:
        return found[-1]
    raise OnestopError(f"{path}: no results.json here or under eval/; run invoke eval first")


def compare(paths: list[str], output: str | None = None, rank_by: str | None = None) -> Path:
    """Side-by-side table of every (task, metric) the results share, best result first by `rank_by`
    (default: the first shared metric), with the model facts above; a PNG bar chart beside it."""
    if len(paths) < 2:
        raise OnestopError("eval.compare: give at least two result directories or files")
    files = [find_results(p) for p in paths]
    loaded = [json.loads(f.read_text()) for f in files]
    labels = _labels(files)
    keys = [(t, m) for t, ms in loaded[0]["metrics"].items() for m in ms]
    shared = [(t, m) for t, m in keys if all(m in r["metrics"].get(t, {}) for r in loaded)]
    if not shared:
        raise OnestopError("eval.compare: the results share no task and metric; compare runs of the same suite")
    task, metric = ranked_metric(rank_by, shared)
    lower = metric in LOWER_IS_BETTER
    order = sorted(range(len(loaded)), key=lambda i: loaded[i]["metrics"][task][metric]["value"], reverse=not lower)
    labels, loaded = [labels[i] for i in order], [loaded[i] for i in order]

    direction = "lower" if lower else "higher"
    table = Table(title="Evaluation results side by side")
    table.add_column("task / metric")
    for rank, label in enumerate(labels, start=1):
        table.add_column(f"{rank}. {label}", justify="right")
    for key, title, shown in FACT_ROWS:
        facts = [{**(r.get("model_facts") or {}), "seconds": r.get("seconds")}.get(key) for r in loaded]
        if any(fact is not None for fact in facts):
            table.add_row(title, *("" if fact is None else shown(fact) for fact in facts))
    table.add_section()
    for t, m in shared:
        mark = " *" if (t, m) == (task, metric) else ""
        table.add_row(f"{t} / {m}{mark}", *(_value(m, r["metrics"][t][m]["value"]) for r in loaded))
    Console(width=max(Console().width, 100)).print(table)
    print(f"Best first by {task} / {metric} (*): {direction} is better.", flush=True)  # a caption would wrap

    png = Path(output) if output else files[-1].parent / "compare.png"
    plot_bars(png, labels, [k for k in shared if k[1] not in COUNTS], loaded, f"ranked by {task}/{metric}")
    print(f"Chart: {png}", flush=True)
    return png


def ranked_metric(rank_by: str | None, shared: list[tuple[str, str]]) -> tuple[str, str]:
    """The (task, metric) `rank_by` names: TASK/METRIC as W&B and sweeps write it, or a METRIC only one task has."""
    if rank_by is None:
        return shared[0]
    matches = [(t, m) for t, m in shared if f"{t}/{m}" == rank_by] or [(t, m) for t, m in shared if m == rank_by]
    if len(matches) != 1:
        names = ", ".join(f"{t}/{m}" for t, m in shared)
        problem = "in several tasks; name one as TASK/METRIC" if matches else "not a metric the results share"
        raise OnestopError(f"eval.compare --rank-by {rank_by}: {problem}; choose one of: {names}")
    return matches[0]


def _labels(files: list[Path]) -> list[str]:
    """Short, distinct column names: the run or eval directory names."""
    labels = []
    for f in files:
        run = RunDir.owning(f)
        label = run.name if run else f.parent.name
        labels.append(label if label not in labels else f"{label} ({len(labels) + 1})")
    return labels


def plot_bars(
    png: Path, labels: list[str], shared: list[tuple[str, str]], loaded: list[dict], subtitle: str = ""
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    width = 0.8 / len(labels)
    # no wider than 16 inches: a screen would shrink the metric names out of reading
    figure, axis = plt.subplots(figsize=(min(16, max(6, 1.2 * len(shared) * len(labels))), 4))
    for index, (label, result) in enumerate(zip(labels, loaded, strict=True)):
        values = [result["metrics"][t][m]["value"] for t, m in shared]
        errors = [result["metrics"][t][m].get("stderr") or 0 for t, m in shared]
        positions = [k + index * width for k in range(len(shared))]
        axis.bar(positions, values, width, yerr=errors, capsize=3, label=label)
    axis.set_xticks([k + width * (len(labels) - 1) / 2 for k in range(len(shared))])
    axis.set_xticklabels([f"{t}\n{m}" for t, m in shared], fontsize=8)
    axis.legend()
    axis.set_title(f"Evaluation results, {subtitle}" if subtitle else "Evaluation results")
    figure.tight_layout()
    save_figure_atomic(figure, png)
    plt.close(figure)


def plot_confusion(png: Path, expected: list[str], predicted: list[str], counts: list[list[int]], title: str) -> None:
    """The confusion matrix as a PNG: expected labels down, predicted across, the count in every cell. The last
    predicted column (replies read as no label) is left out when it is empty."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not any(row[-1] for row in counts):
        predicted, counts = predicted[:-1], [row[:-1] for row in counts]
    side = 1.5 + 0.7 * max(len(expected), len(predicted))
    figure, axis = plt.subplots(figsize=(side, side))
    axis.imshow(counts, cmap="Blues", vmin=0)
    darkest = max(max(row) for row in counts) or 1
    for i, row in enumerate(counts):
        for j, count in enumerate(row):
            axis.text(j, i, str(count), ha="center", va="center", color="white" if count > darkest / 2 else "black")
    axis.set_xticks(range(len(predicted)), predicted, rotation=30, ha="right")
    axis.set_yticks(range(len(expected)), expected)
    axis.set_xlabel("predicted")
    axis.set_ylabel("expected")
    axis.set_title(title, fontsize=9)
    figure.tight_layout()
    save_figure_atomic(figure, png)
    plt.close(figure)
