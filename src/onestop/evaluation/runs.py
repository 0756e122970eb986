"""The catalogue of runs: every training run under some folders, one row each (`invoke runs`, the UI's Runs page).

    from onestop.evaluation.runs import list_runs
    for row in list_runs([Path("runs")]):
        print(row.path, row.status, row.val_loss)

Status comes from what the run left behind: `running` while a live process holds run.lock, `finished` with
metrics.json and trained weights, `resumable` with a checkpoint to continue from (`resume=auto`), else
`failed`.
"""

import csv
import json
import os
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path

from omegaconf import OmegaConf
from rich.console import Console
from rich.table import Table

from onestop.core.errors import OnestopError
from onestop.core.rundir import RunDir

STATUSES = ("running", "finished", "failed", "resumable", "unreadable")


@dataclass
class RunRow:
    """One run as the catalogue shows it; numbers are None when the run did not record them."""

    path: Path
    model: str
    method: str
    data: str
    stage: str
    status: str
    steps: int | None
    max_steps: int | None
    train_loss: float | None
    val_loss: float | None
    wall_seconds: float | None
    started: datetime
    evals: dict[str, float] = field(default_factory=dict)
    """The newest score of each suite/metric, e.g. {"qa/exact_match": 0.4}."""
    error: str | None = None
    """Why an `unreadable` run could not be read."""

    def as_json(self) -> dict:
        return asdict(self) | {"path": str(self.path), "started": self.started.isoformat(timespec="seconds")}


def find_run_dirs(root: Path) -> list[RunDir]:
    """Runs at or under `root` (a run's own subfolders are not searched), oldest first."""
    root = Path(root).expanduser()
    if not root.is_dir():
        return []
    found = []
    for directory, subdirs, _ in os.walk(root, followlinks=False):
        run = RunDir(directory)
        if run.config_file.is_file():
            found.append(run)
            subdirs.clear()
        else:
            subdirs[:] = sorted(d for d in subdirs if not d.startswith("."))
    return sorted(found, key=lambda r: r.config_file.stat().st_mtime)


def run_status(run: RunDir, metrics: dict | None = None) -> str:
    """running, finished, resumable or failed: see the module docstring."""
    if run.writer() is not None:
        return "running"
    metrics = run.metrics() if metrics is None else metrics
    if metrics and (run.has_adapter() or run.has_model()):
        return "finished"
    if run.checkpoints():
        return "resumable"
    return "failed"


def unreadable_row(run: RunDir, error: str) -> RunRow:
    """The row of a run whose config.yaml cannot be read: listed, with the reason, rather than hidden."""
    return RunRow(
        path=run.path, model="?", method="?", data="?", stage="?", status="unreadable", steps=None, max_steps=None,
        train_loss=None, val_loss=None, wall_seconds=None,
        started=datetime.fromtimestamp(run.config_file.stat().st_mtime), error=error,
    )  # fmt: skip


def run_row(run: RunDir) -> RunRow:
    """The catalogue row of one run."""
    try:
        cfg = OmegaConf.to_container(run.config(), resolve=False)
    except Exception as error:  # a config.yaml damaged by hand: the row says so instead of hiding the run
        raise OnestopError(f"{run.config_file}: not a readable config ({error})") from None
    metrics = run.metrics() or {}
    model = cfg.get("model") or {}
    data = cfg.get("data") or {}
    trainer = cfg.get("trainer") or {}
    return RunRow(
        path=run.path,
        model=str(model.get("name") or model.get("path") or "?"),
        method=str((cfg.get("method") or {}).get("name", "?")),
        data=_data_label(data),
        stage=str(cfg.get("stage", "sft")),
        status=run_status(run, metrics),
        steps=metrics.get("steps"),
        max_steps=trainer.get("max_steps") if isinstance(trainer.get("max_steps"), int) else None,
        train_loss=metrics.get("train_loss"),
        val_loss=metrics.get("val_loss"),
        wall_seconds=metrics.get("wall_seconds"),
        started=datetime.fromtimestamp(run.config_file.stat().st_mtime),
        evals=eval_scores(run),
    )


def list_runs(roots: list[Path]) -> list[RunRow]:
    """Every run under `roots`, newest first; a run whose config cannot be read is listed as `unreadable`."""
    rows = []
    for root in roots:
        for run in find_run_dirs(root):
            try:
                rows.append(run_row(run))
            except OnestopError as error:
                rows.append(unreadable_row(run, str(error)))
    return sorted(rows, key=lambda r: r.started, reverse=True)


def eval_scores(run: RunDir) -> dict[str, float]:
    """{suite/metric: value} from the run's evaluations, the newest of each winning."""
    scores: dict[str, float] = {}
    for results in run.eval_results():
        try:
            metrics = json.loads(results.read_text()).get("metrics") or {}
        except (OSError, json.JSONDecodeError):
            continue
        for task, values in metrics.items():
            for metric, score in (values or {}).items():
                value = score.get("value") if isinstance(score, dict) else score
                if isinstance(value, int | float):
                    scores[f"{task}/{metric}"] = float(value)
    return scores


def _data_label(data: dict) -> str:
    path = data.get("path")
    name = Path(str(path)).name if path and "://" not in str(path) else (path or "")
    return " ".join(str(part) for part in (data.get("format") or data.get("name"), name) if part) or "?"


def format_seconds(seconds: float | None) -> str:
    if seconds is None:
        return ""
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def print_runs(roots: list[str], as_json: bool = False) -> list[RunRow]:
    """`invoke runs`: the catalogue of `roots` (default ./runs) as a table, or JSON."""
    folders = [Path(r) for r in roots] or [Path("runs")]
    for folder in folders:
        if folder.exists() and not folder.is_dir():
            raise OnestopError(f"--runs {folder}: expected a directory of runs")
    rows = list_runs(folders)
    if as_json:
        print(json.dumps([row.as_json() for row in rows], indent=2))
        return rows
    table = Table(title=f"Runs under {', '.join(map(str, folders))}")
    for column in ("run", "model", "method", "data", "stage", "status", "steps", "train", "val", "evals", "wall"):
        table.add_column(column, justify="right" if column in {"steps", "train", "val", "wall"} else "left")
    for row in rows:
        table.add_row(
            str(row.path),
            row.model,
            row.method,
            row.data,
            row.stage,
            row.status,
            "" if row.steps is None else str(row.steps),
            _loss(row.train_loss),
            _loss(row.val_loss),
            ", ".join(f"{k} {v:.3g}" for k, v in row.evals.items()),
            format_seconds(row.wall_seconds),
        )
    console = Console(width=200)
    console.print(table)
    for row in rows:
        if row.error:
            console.print(f"unreadable: {row.error}", markup=False)
    return rows


def _loss(value: float | None) -> str:
    return "" if value is None else f"{value:.4f}"


def csv_losses(run: RunDir) -> tuple[list[tuple[int, float]], list[tuple[int, float]]]:
    """(train, validation) [(step, loss)] from the CSV logger's metrics.csv (`logger=csv`), which grows while the
    run trains; empty lists without one."""
    files = sorted(run.path.glob("csv/**/metrics.csv"), key=lambda p: p.stat().st_mtime)
    if not files:
        return [], []
    train, val = [], []
    with files[-1].open(newline="") as handle:
        for record in csv.DictReader(handle):
            step = record.get("step")
            if not step:
                continue
            if record.get("train/loss"):
                train.append((int(step), float(record["train/loss"])))
            if record.get("val/loss"):
                val.append((int(step), float(record["val/loss"])))
    return train, val
