"""Evaluate (`/evaluate`): pick runs and a suite, run `invoke eval run_dir=A,B eval=SUITE ...`, compare the scores.

The evaluation is the `invoke eval` command the page shows, run as a process in the project folder with its
output in OUT/eval.log. OUT is RUN/eval/ui-TIME for one run (the run's page lists it), and
ROOT/eval/ui-TIME for several (one folder per run, as `invoke eval run_dir=A,B` writes them). The table
and chart are `invoke eval.compare`'s (`onestop.evaluation.report`).
"""

import json
import subprocess
from datetime import datetime
from pathlib import Path

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, RedirectResponse

from onestop.config.groups import list_group_options
from onestop.core.errors import OnestopError
from onestop.core.rundir import RESULTS_FILE, RunDir
from onestop.evaluation.report import COUNTS, LOWER_IS_BETTER, compare, plot_bars
from onestop.evaluation.runs import list_runs
from onestop.ui.pages import inside, render, run_path, run_ref, run_roots, start_invoke
from onestop.ui.serving import overrides

router = APIRouter()

LOG_LINES = 60
EVAL_LOG = "eval.log"


@router.get("/evaluate", response_class=HTMLResponse)
def evaluate_page(request: Request) -> HTMLResponse:
    runs = [{"ref": run_ref(request, row.path), "path": str(row.path)} for row in list_runs(run_roots(request))]
    suites = [name for name in list_group_options("eval") if name != "agent"]
    return render(
        request,
        "evaluate.html",
        title="Evaluate",
        active="evaluate",
        runs=runs,
        suites=suites,
        jobs=[_job_view(request, out) for out in reversed(list(_jobs(request)))],
        commands=["invoke eval run_dir=RUN_A,RUN_B eval=qa eval.path=FILE", "invoke eval.compare RUN_A RUN_B"],
    )


@router.post("/evaluate/start")
async def start_evaluation(request: Request):
    form = await request.form()
    refs = [str(ref) for ref in form.getlist("run")]
    if not refs:
        raise HTTPException(status_code=400, detail="run: tick at least one run to evaluate")
    paths = [run_path(request, ref) for ref in refs]
    suite = str(form.get("suite", ""))
    if suite not in list_group_options("eval"):
        raise HTTPException(status_code=400, detail=f"eval={suite}: no such suite")
    stamp = datetime.now().strftime("ui-%Y-%m-%d_%H-%M-%S")
    out = (paths[0] / "eval" / stamp) if len(paths) == 1 else (run_roots(request)[0] / "eval" / stamp)
    words = ["invoke", "eval", "run_dir=" + ",".join(str(p) for p in paths), f"eval={suite}"]
    if str(form.get("path", "")).strip():
        words.append(f"eval.path={form['path'].strip()}")
    if str(form.get("limit", "")).strip():
        words.append(f"eval.limit={form['limit'].strip()}")
    words += overrides(str(form.get("extra", "")))
    words.append(f"hydra.run.dir={out}")
    launch_eval(request, out, words)
    return RedirectResponse(f"/evaluate/result?out={run_ref(request, out)}", status_code=303)


def launch_eval(request: Request, out: Path, words: list[str]) -> subprocess.Popen:
    """`invoke eval ...` in the project folder, its output in OUT/eval.log after a "$ COMMAND" line."""
    process = start_invoke(request, words, out / EVAL_LOG)
    _jobs(request)[out] = process
    return process


@router.get("/evaluate/result", response_class=HTMLResponse)
def result_page(request: Request, out: str) -> HTMLResponse:
    folder = _out_path(request, out)
    view = _job_view(request, folder)
    return render(
        request,
        "evaluate_result.html",
        title=f"Evaluation {folder.name}",
        active="evaluate",
        job=view,
        comparison=comparison(folder) if view["status"] != "running" else None,
        commands=[view["command"]] if view["command"] else [],
    )


@router.get("/evaluate/progress")
def progress(request: Request, out: str) -> JSONResponse:
    return JSONResponse(_job_view(request, _out_path(request, out)))


@router.get("/evaluate/chart.png")
def chart(request: Request, out: str) -> FileResponse:
    png = _out_path(request, out) / "compare.png"
    if not png.is_file():
        raise HTTPException(status_code=404, detail=f"{out}: no chart yet")
    return FileResponse(png, media_type="image/png", headers={"Cache-Control": "no-store"})


def comparison(folder: Path) -> dict | None:
    """The scores of each evaluated run side by side (best first by the first shared metric), and the chart:
    `eval.compare`'s for several runs, the same bars for one."""
    files = sorted(folder.glob(RESULTS_FILE)) or sorted(folder.glob(f"*/{RESULTS_FILE}"))
    if not files:
        return None
    loaded = [json.loads(f.read_text()) for f in files]
    labels = [(RunDir.owning(f).name if RunDir.owning(f) else f.parent.name) for f in files]
    shared = [(t, m) for t, ms in loaded[0]["metrics"].items() for m in ms]
    shared = [(t, m) for t, m in shared if all(m in r["metrics"].get(t, {}) for r in loaded)]
    if not shared:
        return {"error": "the results share no task and metric", "labels": labels, "rows": []}
    task, metric = shared[0]
    order = sorted(
        range(len(loaded)),
        key=lambda i: loaded[i]["metrics"][task][metric]["value"],
        reverse=metric not in LOWER_IS_BETTER,
    )
    labels, loaded = [labels[i] for i in order], [loaded[i] for i in order]
    png = folder / "compare.png"
    try:
        if not png.is_file() and len(files) > 1:
            compare([str(f) for f in files], str(png))
        elif not png.is_file():
            plot_bars(png, labels, [k for k in shared if k[1] not in COUNTS], loaded, "one run")
    except OnestopError as error:
        return {"error": str(error), "labels": labels, "rows": []}
    rows = [
        {"name": f"{t} / {m}", "scores": [r["metrics"][t][m]["value"] for r in loaded], "count": m in COUNTS}
        for t, m in shared
    ]
    better = "lower" if metric in LOWER_IS_BETTER else "higher"
    return {"labels": labels, "rows": rows, "ranked_by": f"{task} / {metric} ({better} is better)", "error": None}


def _jobs(request: Request) -> dict:
    if not hasattr(request.app.state, "eval_jobs"):
        request.app.state.eval_jobs = {}
    return request.app.state.eval_jobs


def _out_path(request: Request, out: str) -> Path:
    """An evaluation folder from its id in URLs (as a run's: ROOT_INDEX/PATH), inside the run roots only."""
    index, _, rest = out.partition("/")
    roots = run_roots(request)
    if not index.isdigit() or int(index) >= len(roots) or not rest:
        raise HTTPException(status_code=404, detail=f"{out}: no such evaluation")
    folder = roots[int(index)] / rest
    if not inside(folder, [roots[int(index)]]) or not (folder / EVAL_LOG).is_file():
        raise HTTPException(status_code=404, detail=f"{out}: no such evaluation")
    return folder.resolve()


def _job_view(request: Request, out: Path) -> dict:
    process = _jobs(request).get(out)
    code = None if process is None else process.poll()
    log = out / EVAL_LOG
    text = log.read_text(errors="replace") if log.is_file() else ""
    first = text.splitlines()[0] if text else ""
    if process is not None and code is None:
        status = "running"
    elif code not in (None, 0):
        status = "failed"
    else:
        status = "finished" if (list(out.glob(RESULTS_FILE)) or list(out.glob(f"*/{RESULTS_FILE}"))) else "failed"
    return {
        "out": run_ref(request, out),
        "path": str(out),
        "status": status,
        "command": first.removeprefix("$ "),
        "log": "\n".join(text.splitlines()[-LOG_LINES:]),
    }
