"""The Runs page (`/`), a run's page (`/run/ROOT/PATH`) and Compare (`/compare?run=A&run=B`).

Everything shown is read through `RunDir` and `onestop.evaluation.runs`, the same code as `invoke runs`.
"""

import json
import shlex
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.responses import FileResponse, HTMLResponse, Response
from omegaconf import OmegaConf

from onestop.core.errors import OnestopError
from onestop.core.rundir import RunDir
from onestop.evaluation.runs import format_seconds, list_runs, run_row
from onestop.recipes import diff as recipe_diff
from onestop.ui.charts import loss_chart
from onestop.ui.pages import render, run_path, run_ref, run_roots

router = APIRouter()

# Files of a run the pages link to directly; nothing else in a run folder is served.
RUN_IMAGES = ("data_lengths.png",)
SAMPLES_SHOWN = 5


@router.get("/", response_class=HTMLResponse)
def runs_page(request: Request) -> HTMLResponse:
    rows = list_runs(run_roots(request))
    items = [{"row": row, "ref": run_ref(request, row.path), "wall": format_seconds(row.wall_seconds)} for row in rows]
    roots = " ".join(f"--runs {shlex.quote(str(r))}" for r in run_roots(request))
    return render(
        request,
        "runs.html",
        title="Runs",
        active="runs",
        items=items,
        roots=run_roots(request),
        commands=[f"invoke runs {roots}"],
    )


@router.get("/run/{ref:path}", response_class=HTMLResponse)
def run_page(request: Request, ref: str) -> HTMLResponse:
    path = run_path(request, ref, started=True)
    run = RunDir(path)
    if not run.config_file.is_file():  # launched here, still composing or preparing data: its log only
        return render(request, "run.html", title=run.name, active="runs", ref=ref, run=run, row=None, starting=True)
    row = run_row(run)
    metrics = run.metrics() or {}
    recipe = run.recipe_or_config()
    return render(
        request,
        "run.html",
        title=run.name,
        active="runs",
        ref=ref,
        run=run,
        row=row,
        starting=False,
        wall=format_seconds(row.wall_seconds),
        padding=metrics.get("padding") or [],
        facts=_facts(metrics),
        data_report=_flatten(json.loads(run.data_report_file.read_text())) if run.data_report_file.is_file() else [],
        has_lengths=run.data_lengths_file.is_file(),
        evaluations=[_evaluation(path, results) for path, results in _results(run)],
        recipe_name=recipe.name if recipe else None,
        recipe_text=recipe.read_text() if recipe else "",
        has_log=run.log_file.is_file(),
        commands=run_commands(run, row.status),
    )


@router.get("/chart/loss.png")
def loss_png(request: Request, run: Annotated[list[str], Query()]) -> Response:
    """Loss curves of one or several runs overlaid: /chart/loss.png?run=A&run=B."""
    runs = [(ref.rsplit("/", 1)[-1], RunDir(run_path(request, ref))) for ref in run]
    return Response(loss_chart(runs), media_type="image/png", headers={"Cache-Control": "no-store"})


@router.get("/run-file/{ref:path}")
def run_file(request: Request, ref: str) -> FileResponse:
    """One of RUN_IMAGES of a run: /run-file/ROOT/PATH/data_lengths.png."""
    ref, _, name = ref.rpartition("/")
    if name not in RUN_IMAGES:
        raise HTTPException(status_code=404, detail=f"{name}: not a file the UI shows")
    target = run_path(request, ref) / name
    if not target.is_file():
        raise HTTPException(status_code=404, detail=f"{name}: this run has none")
    return FileResponse(target)


@router.get("/compare", response_class=HTMLResponse)
def compare_page(request: Request, run: Annotated[list[str] | None, Query()] = None) -> HTMLResponse:
    run = run or []
    if len(run) < 2:
        raise HTTPException(status_code=400, detail="compare: choose two or more runs (?run=A&run=B)")
    runs = [RunDir(run_path(request, ref)) for ref in run]
    rows = [run_row(r) for r in runs]
    metric_names = sorted({name for row in rows for name in row.evals})
    differences = []
    for other in runs[1:]:
        try:
            found = recipe_diff(str(runs[0].path), str(other.path))
        except OnestopError as error:
            found, error_text = [], str(error)
        else:
            error_text = ""
        differences.append({"a": runs[0].name, "b": other.name, "rows": found, "error": error_text})
    query = "&".join(f"run={ref}" for ref in run)
    return render(
        request,
        "compare.html",
        title="Compare " + ", ".join(r.name for r in runs),
        active="runs",
        columns=[
            {"ref": ref, "row": row, "wall": format_seconds(row.wall_seconds)}
            for ref, row in zip(run, rows, strict=True)
        ],
        metric_names=metric_names,
        differences=differences,
        chart=f"/chart/loss.png?{query}",
        commands=[f"invoke recipe.diff {shlex.quote(str(runs[0].path))} {shlex.quote(str(b.path))}" for b in runs[1:]]
        + ["invoke eval.compare " + " ".join(shlex.quote(str(r.path)) for r in runs if r.eval_results())],
    )


def run_commands(run: RunDir, status: str) -> list[str]:
    """What a terminal runs to continue, score and serve this run."""
    where = shlex.quote(str(run.path))
    commands = []
    if status in {"resumable", "failed"} and run.checkpoints():
        commands.append(resume_command(run))
    commands.append(f"invoke eval run_dir={where} eval=qa eval.path=FILE")
    if status == "finished":
        commands.append(f"invoke deploy run_dir={where}")
    return commands


def resume_command(run: RunDir) -> str:
    """`invoke train SAME OVERRIDES resume=auto hydra.run.dir=RUN`: the launch command when the UI started it,
    else the run's recipe."""
    words = launch_words(run)
    if words is None:
        source = run.recipe_file if run.recipe_file.is_file() else None
        words = ["invoke", "train", f"recipe={source}"] if source else ["invoke", "train", "..."]
    words = [w for w in words if not w.startswith(("resume=", "hydra.run.dir="))]
    return shlex.join([*words, "resume=auto", f"hydra.run.dir={run.path}"])


def launch_words(run: RunDir) -> list[str] | None:
    """The `invoke train ...` words on train.log's first line ("$ invoke train ..."), when the UI started it."""
    try:
        with run.log_file.open() as handle:
            first = handle.readline()
    except OSError:
        return None
    return shlex.split(first[2:]) if first.startswith("$ invoke train") else None


def _results(run: RunDir) -> list[tuple[Path, dict]]:
    found = []
    for path in reversed(run.eval_results()):
        try:
            found.append((path, json.loads(path.read_text())))
        except (OSError, json.JSONDecodeError):
            continue
    return found


def _evaluation(path: Path, results: dict) -> dict:
    metrics = []
    for task, values in (results.get("metrics") or {}).items():
        for metric, score in (values or {}).items():
            value = score.get("value") if isinstance(score, dict) else score
            stderr = score.get("stderr") if isinstance(score, dict) else None
            metrics.append({"task": task, "metric": metric, "value": value, "stderr": stderr})
    samples = []
    for task, rows in (results.get("samples") or {}).items():
        for sample in rows[:SAMPLES_SHOWN]:
            samples.append({"task": task, **{k: _short(v) for k, v in sample.items()}})
    keys = []
    for sample in samples:
        keys += [k for k in sample if k not in keys]
    return {
        "name": path.parent.name,
        "suite": results.get("suite", "?"),
        "seconds": format_seconds(results.get("seconds")),
        "metrics": metrics,
        "samples": samples,
        "sample_keys": keys,
    }


def _short(value, limit: int = 300) -> str:
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)
    return text if len(text) <= limit else text[:limit] + "…"


def _facts(metrics: dict) -> list[tuple[str, str]]:
    shown = (
        ("tokens_per_s", "tokens/s", lambda v: f"{v:,.0f}"),
        ("tokens_seen", "tokens seen", lambda v: f"{v:,}"),
        ("trainable_params", "trainable parameters", lambda v: f"{v:,}"),
        ("total_params", "parameters", lambda v: f"{v:,}"),
        ("precision", "precision", str),
        ("epochs", "epochs", str),
        ("resumed_from", "resumed from", str),
    )
    return [(label, fmt(metrics[key])) for key, label, fmt in shown if metrics.get(key) is not None]


def _flatten(data, prefix: str = "") -> list[tuple[str, str]]:
    rows = []
    if isinstance(data, dict):
        for key, value in data.items():
            rows += _flatten(value, f"{prefix}.{key}" if prefix else str(key))
    elif isinstance(data, list) and data and all(isinstance(v, dict) for v in data):
        for index, value in enumerate(data):
            rows += _flatten(value, f"{prefix}[{index}]")
    else:
        rows.append((prefix, OmegaConf.to_yaml({"v": data}).strip()[3:] if isinstance(data, list) else str(data)))
    return rows
