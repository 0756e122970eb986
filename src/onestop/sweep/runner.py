"""`invoke sweep`: run a Hydra multirun of training jobs, then summarise it and write the winner as a recipe.

    invoke sweep model=tiny method.r=4,8,16 optim.lr=1e-4,3e-4                 grid, one job at a time
    invoke sweep model=tiny launcher=joblib method.r=4,8                       parallel local jobs
    invoke sweep model=tiny sweeper=optuna sweeper.n_trials=10 'optim.lr=interval(1e-4,1e-3)'

The sweep directory gets summary.csv and summary.md (one row per trial: overrides, metrics, seconds),
one PNG of the objective against each swept parameter, and best_recipe.yaml, the winning run's recipe.
"""

# Lazy imports: matplotlib (inside the functions that need them).

import csv
import importlib.util
import io
import itertools
import math
import os
import subprocess
import sys
import time
from pathlib import Path

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import IntervalSweep
from hydra.errors import OverrideParseException
from omegaconf import OmegaConf
from rich.console import Console
from rich.table import Table

from onestop.config.compose import ConfigError, compose, resolve_recipe
from onestop.core.errors import OnestopError
from onestop.core.files import save_figure_atomic, write_text_atomic
from onestop.core.rundir import RunDir
from onestop.sweep.app import check_objective

# Shorthands for Hydra's own config groups, so a sweep reads like the rest of onestop's command line.
HYDRA_GROUPS = {"sweeper": "hydra/sweeper", "launcher": "hydra/launcher"}
HYDRA_NODES = {"sweeper.": "hydra.sweeper.", "launcher.": "hydra.launcher."}


def translate(overrides: list[str]) -> list[str]:
    """`sweeper=optuna` -> `hydra/sweeper=optuna`, `sweeper.n_trials=5` -> `hydra.sweeper.n_trials=5`."""
    translated = []
    for override in overrides:
        key, _, value = override.partition("=")
        if key in HYDRA_GROUPS:
            translated.append(f"{HYDRA_GROUPS[key]}={value}")
            continue
        for short, full in HYDRA_NODES.items():
            if key.startswith(short):
                override = full + override[len(short) :]
                break
        translated.append(override)
    return translated


def sweep_command(overrides: list[str], sweep_dir: Path, direction: str = "minimize") -> list[str]:
    overrides = translate(overrides)
    primary = []
    recipes = [o for o in overrides if o.startswith("recipe=")]
    if recipes:
        # A recipe is a primary config beside conf/, as in `invoke train recipe=...`: Hydra's own flags load it.
        recipe = resolve_recipe(recipes[-1].partition("=")[2])
        primary = ["--config-dir", str(recipe.parent), "--config-name", recipe.stem]
        overrides = [o for o in overrides if not o.startswith("recipe=")]
    keys = {o.partition("=")[0] for o in overrides}
    extra = [
        f"hydra.sweep.dir={sweep_dir}",
        "hydra.sweep.subdir=trial_${hydra.job.num}",
        "paths.run_dir=${hydra:runtime.output_dir}",  # each trial trains into its own sub-directory
        "hydra/job_logging=disabled",  # Lightning prints its own lines; Hydra would print them twice
    ]
    if "hydra/sweeper=optuna" in overrides:
        if "hydra.sweeper.direction" not in keys:
            extra.append(f"hydra.sweeper.direction={direction}")
        if "hydra.sweeper.study_name" not in keys:
            extra.append(f"hydra.sweeper.study_name={sweep_dir.name}")
    return [sys.executable, "-m", "onestop.sweep.app", *primary, "--multirun", *overrides, *extra]


def run_sweep(overrides: list[str]) -> Path:
    given = next((o.partition("=")[2] for o in overrides if o.startswith("hydra.sweep.dir=")), None)
    overrides = [o for o in overrides if not o.startswith("hydra.sweep.dir=")]
    if "launcher=ray" in overrides:
        _require_ray()
    # Compose the trials first: a typo or a value a trial cannot take fails here in one line, before any job.
    probes = [_compose_trial(trial) for trial in trial_overrides(translate(overrides))]
    for probe in probes:
        check_objective(probe)
    probe = probes[0]
    sweep_dir = Path(given or f"runs/sweep/{time.strftime('%Y-%m-%d_%H-%M-%S')}").absolute()
    command = sweep_command(overrides, sweep_dir, probe.sweep.direction)
    env = {**os.environ, "WANDB_RUN_GROUP": os.environ.get("WANDB_RUN_GROUP") or f"sweep-{sweep_dir.name}"}
    print(f"Sweep into {sweep_dir} (objective {probe.sweep.objective}, {probe.sweep.direction})", flush=True)
    started = time.perf_counter()
    done = subprocess.run(command, env=env)
    if done.returncode:
        raise OnestopError(f"the sweep stopped with status {done.returncode}; trials so far are in {sweep_dir}")
    summarise(sweep_dir, probe.sweep.objective, probe.sweep.direction, time.perf_counter() - started)
    return sweep_dir


# Composing every combination of a grid is cheap up to this many; beyond it each value is tried once.
MAX_COMPOSED_TRIALS = 32


def trial_overrides(overrides: list[str]) -> list[list[str]]:
    """Override lists of single trials that together take every swept value, as Hydra's parser reads them.

    A grid small enough is expanded whole (`method=lora,full method.r=4` fails for the `full` trial);
    an Optuna range is represented by its two ends.
    """
    trial_keys = [o for o in overrides if not o.startswith(("hydra/", "hydra."))]
    try:
        parsed = OverridesParser.create().parse_overrides(trial_keys)
    except OverrideParseException as err:
        raise ConfigError(f"cannot parse override {err.override!r}: expected KEY=VALUE or KEY=A,B,C") from None
    choices = [
        [f"{o.get_key_element()}={value}" for value in _swept_values(o)] if o.is_sweep_override() else [o.input_line]
        for o in parsed
    ]
    if math.prod(len(c) for c in choices) <= MAX_COMPOSED_TRIALS:
        return [list(trial) for trial in itertools.product(*choices)]
    first = [c[0] for c in choices]
    return [first[:i] + [value] + first[i + 1 :] for i, c in enumerate(choices) for value in c]


def _swept_values(override) -> list[str]:
    sweep = override.value()
    if isinstance(sweep, IntervalSweep):
        return [_number(sweep.start), _number(sweep.end)]
    return list(override.sweep_string_iterator())


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def _compose_trial(overrides: list[str]):
    return compose("train", overrides)


def _require_ray() -> None:
    if importlib.util.find_spec("hydra_plugins.hydra_ray_launcher") is None:
        raise OnestopError('launcher=ray: the Ray launcher is not installed; pip install "onestop[ray]"')


def trials(sweep_dir: Path) -> list[dict]:
    """One row per trial directory: its overrides, objective, losses, seconds and whether it finished."""
    rows = []
    for trial_dir in sorted(sweep_dir.glob("trial_*"), key=lambda p: int(p.name.split("_")[1])):
        overrides_file = trial_dir / ".hydra" / "overrides.yaml"
        if not overrides_file.is_file():
            continue
        overrides = [o for o in OmegaConf.load(overrides_file) if not o.startswith(("paths.", "hydra"))]
        row = {"trial": trial_dir.name, "overrides": overrides, "run_dir": str(trial_dir), "finished": False}
        trial = RunDir(trial_dir)
        outcome, metrics = trial.objective() or {}, trial.metrics() or {}
        row |= {
            "finished": outcome.get("value") is not None,
            "objective": outcome.get("value"),
            "train_loss": metrics.get("train_loss"),
            "val_loss": metrics.get("val_loss"),
            "seconds": outcome.get("seconds", metrics.get("wall_seconds")),
            "status": "ok" if outcome.get("value") is not None else f"failed: {outcome.get('error', 'no result')}",
        }
        rows.append(row)
    return rows


def swept_values(rows: list[dict]) -> dict[str, list]:
    """{parameter: [value per trial]} for every key whose value differs between trials."""
    values: dict[str, list] = {}
    for index, row in enumerate(rows):
        for override in row["overrides"]:
            key, _, value = override.partition("=")
            values.setdefault(key, [None] * len(rows))[index] = value
    return {k: v for k, v in values.items() if len(set(v)) > 1}


def summarise(sweep_dir: Path, objective: str, direction: str, seconds: float | None = None) -> dict:
    rows = trials(sweep_dir)
    finished = [r for r in rows if r["finished"]]
    if not finished:
        first = next((f"{r['trial']} {r['status']}" for r in rows), "no trial ran")
        raise OnestopError(f"{sweep_dir}: no trial finished; {first}")
    parameters = swept_values(rows)
    columns = ["trial", *parameters, "objective", "train_loss", "val_loss", "seconds", "status"]
    table = [
        {
            "trial": r["trial"],
            **{p: parameters[p][i] for p in parameters},
            **{c: r.get(c) for c in columns[len(parameters) + 1 :]},
        }
        for i, r in enumerate(rows)
    ]
    buffer = io.StringIO()
    # The CSV also keeps every override of a trial, the swept and the fixed, for a script to rerun it.
    writer = csv.DictWriter(buffer, fieldnames=[*columns, "overrides"], lineterminator="\n")
    writer.writeheader()
    writer.writerows(row | {"overrides": " ".join(r["overrides"])} for row, r in zip(table, rows, strict=True))
    write_text_atomic(sweep_dir / "summary.csv", buffer.getvalue())

    best = (min if direction == "minimize" else max)(finished, key=lambda r: r["objective"])
    lines = [
        f"# Sweep {sweep_dir.name}",
        "",
        f"Objective: `{objective}` ({direction}); best: **{best['trial']}** = {best['objective']:.6g}"
        + (f"; {len(rows)} trials in {seconds:.0f} s" if seconds else ""),
        "",
        "| " + " | ".join(columns) + " |",
        "|" + "---|" * len(columns),
        *("| " + " | ".join(_cell(row[c]).replace("|", "\\|") for c in columns) + " |" for row in table),
        "",
    ]
    write_text_atomic(sweep_dir / "summary.md", "\n".join(lines))
    plot(sweep_dir / "objective.png", parameters, rows, objective)
    recipe = RunDir(best["run_dir"]).recipe_file
    if recipe.is_file():
        # The trial's own first line names the trial's file; a shared recipe opens with the command that runs it.
        body = recipe.read_text().split("\n", 1)[1]
        target = sweep_dir / "best_recipe.yaml"
        score = f"{objective} {direction}: {best['objective']:.6g}"
        header = (
            f"# invoke train recipe={target}\n"
            f"# Winner of sweep {sweep_dir} ({score}); overrides: {' '.join(best['overrides'])}\n"
        )
        write_text_atomic(target, header + body)
    print_summary(table, columns, best, objective)
    print(f"Summary: {sweep_dir / 'summary.md'}  Best recipe: {sweep_dir / 'best_recipe.yaml'}", flush=True)
    return {"rows": table, "best": best}


def _cell(value) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    return "" if value is None else str(value)


def plot(path: Path, parameters: dict[str, list], rows: list[dict], objective: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(parameters) or ["trial"]
    figure, axes = plt.subplots(1, len(names), figsize=(4.5 * len(names), 3.6), squeeze=False)
    for axis, name in zip(axes[0], names, strict=True):
        values = parameters.get(name) or [r["trial"] for r in rows]
        points = [(v, r["objective"]) for v, r in zip(values, rows, strict=True) if r.get("objective") is not None]
        numbers = [_number_or_none(v) for v, _ in points]
        if points and None not in numbers:
            # Optuna samples a continuous range: its values belong on a real axis, a log one across decades.
            axis.scatter(numbers, [o for _, o in points], color="#4c72b0")
            if min(numbers) > 0 and max(numbers) / min(numbers) >= 10:
                axis.set_xscale("log")
        else:
            labels = sorted({str(v) for v, _ in points}, key=_sort_key)
            axis.scatter([labels.index(str(v)) for v, _ in points], [o for _, o in points], color="#4c72b0")
            axis.set_xticks(range(len(labels)), labels, rotation=30, fontsize=8)
        axis.set_xlabel(name)
        axis.set_ylabel(objective)
        axis.ticklabel_format(axis="y", useOffset=False)  # losses of close trials read as they are
    figure.suptitle(f"{objective} per trial")
    figure.tight_layout()
    save_figure_atomic(figure, path)
    plt.close(figure)


def _number_or_none(value) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _sort_key(text: str):
    try:
        return (0, float(text))
    except ValueError:
        return (1, text)


def print_summary(table: list[dict], columns: list[str], best: dict, objective: str) -> None:
    shown = Table(title=f"Sweep: {objective} per trial (best: {best['trial']})")
    for column in columns:
        shown.add_column(column, justify="right" if column not in {"trial"} else "left")
    for row in table:
        style = "bold green" if row["trial"] == best["trial"] else None if row["status"] == "ok" else "red"
        shown.add_row(*(_cell(row[c]) for c in columns), style=style)
    Console(width=max(Console().width, 120)).print(shown)
