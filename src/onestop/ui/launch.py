"""New run (`/new`): a form generated from the config schemas, and starting, following, stopping and resuming runs.

The form holds no settings of its own: its groups are the options in conf/<group>/, its fields the schema
dataclasses' fields with their docstrings, its values what the config composes to. What it starts is the
`invoke train ...` command it shows, run as a normal process in the project folder, its output in RUN/train.log.
"""

import os
import re
import shlex
import signal
import subprocess
import threading
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse
from omegaconf import DictConfig, OmegaConf

from onestop.config.compose import CHOICES as CONFIG_CHOICES
from onestop.config.compose import compose
from onestop.config.fields import field_docs
from onestop.config.groups import list_group_options
from onestop.core.errors import OnestopError
from onestop.core.paths import RECIPES_DIR
from onestop.core.rundir import RunDir
from onestop.evaluation.runs import csv_losses, list_runs, run_status
from onestop.selection.devices import GIB, this_machine
from onestop.selection.estimate import estimate_devices
from onestop.selection.report import duration, planned_steps
from onestop.training.stages import STAGES
from onestop.ui.pages import COMPOSE_LOCK, inside, render, run_path, run_ref, run_roots, start_invoke
from onestop.ui.runs import launch_words, resume_command

router = APIRouter()

GROUPS = ("model", "data", "method", "hardware", "logger")
# Config nodes whose scalar fields the form lists, in this order; "" is the top level (seed, stage).
NODES = ("", "data", "method", "trainer", "optim", "scheduler", "checkpoint")
OPEN_NODES = ("", "data", "trainer", "optim")
# Identities of an option, and what the form sets itself (it starts every run in a new folder).
SKIPPED = {"name", "adapter", "resume", "overwrite", "provenance"}
# the stage table and the data formats composition accepts, so a new stage or format appears in the form itself
CHOICES = {"stage": tuple(STAGES), "data.format": CONFIG_CHOICES["data.format"]}
LOG_LINES = 40


@dataclass
class Field:
    key: str
    value: str
    kind: str  # text, bool, choice
    help: str
    choices: tuple[str, ...] = ()
    error: str = ""


@dataclass
class Form:
    """A filled-in form: what it starts from, its overrides, and whether they compose."""

    start: str  # "" (conf/train.yaml), "recipe:NAME" or "run:REF"
    groups: dict[str, str]  # group -> chosen option; groups a run's recipe fixes are absent
    fields: dict[str, list[Field]]  # node -> its fields
    overrides: list[str]
    run_dir: Path
    command: str
    errors: dict[str, str]  # key (or "" for the whole form) -> one-line error


@router.get("/new", response_class=HTMLResponse)
def new_run_page(request: Request) -> HTMLResponse:
    form = read_form(request, dict(request.query_params))
    return _render_form(request, form)


@router.get("/new/check")
def check_form(request: Request) -> JSONResponse:
    """The command and the composition errors for the form as it stands (the page calls it as fields change)."""
    form = read_form(request, dict(request.query_params))
    return JSONResponse({"command": form.command, "errors": form.errors})


@router.get("/new/estimate")
def estimate_form(request: Request) -> JSONResponse:
    """Peak memory and time on this machine, as `invoke estimate` computes them."""
    form = read_form(request, dict(request.query_params))
    if form.errors:
        return JSONResponse({"error": next(iter(form.errors.values()))})
    with COMPOSE_LOCK:
        cfg = compose("train", form.overrides)
    try:
        found = estimate_devices(cfg, [this_machine()], run_steps=planned_steps(cfg))[0]
    except OnestopError as error:
        return JSONResponse({"error": str(error)})
    return JSONResponse(
        {
            "device": found.device.name,
            "memory_gib": round(found.memory.total / GIB, 2),
            "device_gib": round(found.device.memory_gib, 1),
            "fits": found.fits,
            "step": duration(found.step_seconds),
            "run": duration(found.run_seconds) if found.run_seconds else None,
            "fix": found.fix,
            "command": "invoke estimate " + shlex.join(form.overrides),
        }
    )


@router.post("/new/start")
async def start_run(request: Request):
    values = {k: v for k, v in (await request.form()).items() if isinstance(v, str)}
    form = read_form(request, values)
    if form.errors:
        return _render_form(request, form, status_code=422)
    launch(request, form.run_dir, ["invoke", "train", *form.overrides, f"hydra.run.dir={form.run_dir}"])
    return RedirectResponse(f"/run/{run_ref(request, form.run_dir)}", status_code=303)


@router.get("/launch/progress")
def progress(request: Request, run: str) -> JSONResponse:
    """Where a run stands, for the page to poll: status, steps so far and the tail of its output."""
    path = run_path(request, run, started=True)
    rundir = RunDir(path)
    process = _processes(request).get(path)
    alive = process is not None and process.poll() is None  # poll() also reaps an ended run
    status = "running" if alive else run_status(rundir) if rundir.config_file.is_file() else "failed"
    return JSONResponse(
        {
            "status": status,
            "running": status == "running",
            "returncode": None if process is None else process.returncode,
            "steps": _steps_so_far(rundir),
            "log": log_tail(rundir),
        }
    )


@router.post("/launch/stop")
def stop_run(request: Request, run: str):
    """SIGINT, as Ctrl-C: training saves checkpoints/sigint.ckpt at the next step and exits."""
    path = run_path(request, run, started=True)
    pid = _pid(request, path)
    if pid is None:
        raise HTTPException(status_code=409, detail=f"{run}: not running")
    os.kill(pid, signal.SIGINT)
    return RedirectResponse(f"/run/{run}", status_code=303)


@router.post("/launch/resume")
def resume_run(request: Request, run: str):
    """`invoke train SAME OVERRIDES resume=auto hydra.run.dir=RUN`, from the newest checkpoint."""
    path = run_path(request, run, started=True)
    rundir = RunDir(path)
    if _pid(request, path) is not None:
        raise HTTPException(status_code=409, detail=f"{run}: already running")
    if not rundir.checkpoints():
        raise HTTPException(status_code=409, detail=f"{run}: no checkpoint to resume from")
    if launch_words(rundir) is None and not rundir.recipe_file.is_file():
        raise HTTPException(status_code=409, detail=f"{run}: started outside the UI; resume it with its own command")
    launch(request, path, shlex.split(resume_command(rundir)))
    return RedirectResponse(f"/run/{run}", status_code=303)


def launch(request: Request, run_dir: Path, words: list[str]) -> subprocess.Popen:
    """Start `invoke train ...` (`words`), its output appended to RUN/train.log (onestop.ui.pages.start_invoke)."""
    run = RunDir(run_dir)
    process = start_invoke(request, words, run.log_file)
    _processes(request)[run.path] = process
    return process


def read_form(request: Request, values: dict[str, str]) -> Form:
    """The form for `values` (query or posted fields): its overrides, command and errors."""
    start = values.get("start", "")
    base = _start_overrides(request, start)
    errors: dict[str, str] = {}
    with COMPOSE_LOCK:
        try:
            plain = compose("train", base, allow_missing=True)
        except OnestopError as error:
            plain, errors[""] = compose("train", [], allow_missing=True), str(error)
            start, base = "", []
        choices = dict(plain.hydra.runtime.choices)
        groups = {g: values.get(g) or str(choices[g]) for g in GROUPS if g in choices}
        chosen = [f"{g}={option}" for g, option in groups.items() if option != str(choices[g])]
        try:
            composed = compose("train", [*base, *chosen], allow_missing=True)
        except OnestopError as error:
            errors[_error_key(str(error))] = str(error)
            composed, chosen = plain, []
        fields = _fields(composed, values)
        defaults = {f.key: f.value for node in _fields(composed, {}).values() for f in node}
        overrides = [*base, *chosen]
        for node in fields.values():
            for field in node:
                if field.value != defaults[field.key]:
                    overrides.append(f"{field.key}={_override_value(field.value)}")
        if not errors:
            try:
                compose("train", overrides)
            except OnestopError as error:
                errors[_error_key(str(error))] = str(error)
    for node in fields.values():
        for field in node:
            field.error = errors.get(field.key, "")
    run_dir, problem = _run_dir(request, values.get("run_dir", ""))
    if problem:
        errors["run_dir"] = problem
    command = shlex.join(["invoke", "train", *overrides, f"hydra.run.dir={run_dir}"])
    return Form(start, groups, fields, overrides, run_dir, command, errors)


def _start_overrides(request: Request, start: str) -> list[str]:
    kind, _, name = start.partition(":")
    if kind == "recipe" and name in _recipes():
        return [f"recipe={name}"]
    if kind == "run":
        run = RunDir(run_path(request, name))
        if not run.recipe_file.is_file():
            raise HTTPException(status_code=404, detail=f"{name}: this run has no recipe.yaml to start from")
        return [f"recipe={run.recipe_file}"]
    return []


def _fields(cfg: DictConfig, values: dict[str, str]) -> dict[str, list[Field]]:
    fields: dict[str, list[Field]] = {}
    for node in NODES:
        section = cfg[node] if node else cfg
        schema = OmegaConf.get_type(section)
        docs = field_docs(schema) if isinstance(schema, type) else {}
        raw = OmegaConf.to_container(section, resolve=False, throw_on_missing=False)
        listed = []
        for name, default in raw.items():
            key = f"{node}.{name}" if node else name
            if name.startswith("_") or name in SKIPPED or isinstance(default, dict | list):
                continue
            if not node and name not in docs:
                continue
            kind = "bool" if isinstance(default, bool) else "choice" if key in CHOICES else "text"
            value = values.get(key, _text(default))
            listed.append(Field(key, value, kind, docs.get(name, ""), CHOICES.get(key, ("true", "false"))))
        fields[node] = listed
    return fields


def _text(value) -> str:
    """A config value as the form shows it: null as an empty box, ??? as itself, booleans in lower case."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


def _override_value(text: str) -> str:
    return "null" if text == "" else text


def _error_key(message: str) -> str:
    """The form field a composition error names: `config key 'data.path'`, or `method=...` for a group."""
    match = re.search(r"config key '([^']+)'", message) or re.match(r"^(\w+)=", message)
    return match.group(1) if match else ""


def _run_dir(request: Request, text: str) -> tuple[Path, str]:
    root = run_roots(request)[0]
    default = root / "train" / datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
    if not text.strip():
        return default, ""
    candidate = Path(text.strip()).expanduser()
    candidate = candidate if candidate.is_absolute() else root / candidate
    if not inside(candidate, run_roots(request)):
        return default, f"run_dir={text}: expected a folder under {', '.join(map(str, run_roots(request)))}"
    if RunDir(candidate).config_file.is_file() or RunDir(candidate).log_file.is_file():
        return candidate.resolve(), f"run_dir={text}: already a run; choose a new folder (or resume that run)"
    return candidate.resolve(), ""


def _recipes() -> list[str]:
    return sorted(p.stem for p in RECIPES_DIR.glob("*.yaml"))


def _render_form(request: Request, form: Form, status_code: int = 200) -> HTMLResponse:
    finished = [r for r in list_runs(run_roots(request)) if RunDir(r.path).recipe_file.is_file()]
    return render(
        request,
        "new.html",
        status_code=status_code,
        title="New run",
        active="new",
        form=form,
        group_options={g: list_group_options(g) for g in form.groups},
        recipes=_recipes(),
        past_runs=[(run_ref(request, r.path), r) for r in finished],
        open_nodes=OPEN_NODES,
        relative_run_dir=_relative(form.run_dir, run_roots(request)[0]),
        commands=[form.command],
    )


def _relative(path: Path, root: Path) -> str:
    return str(path.relative_to(root)) if path.is_relative_to(root) else str(path)


_PROCESSES_LOCK = threading.Lock()


def _processes(request: Request) -> dict[Path, subprocess.Popen]:
    """Runs this app started; kept to reap them when they end and to know their pid before run.lock exists."""
    with _PROCESSES_LOCK:
        if not hasattr(request.app.state, "processes"):
            request.app.state.processes = {}
        return request.app.state.processes


def _pid(request: Request, path: Path) -> int | None:
    process = _processes(request).get(path)
    if process is not None and process.poll() is None:
        return process.pid
    writer = RunDir(path).writer()
    if writer is not None and writer[1] == os.uname().nodename:
        return writer[0]
    return None


def log_tail(run: RunDir, lines: int = LOG_LINES) -> str:
    """The end of train.log as a terminal would show it: a progress bar redrawn with \\r keeps its last state."""
    try:
        with run.log_file.open("rb") as handle:
            handle.seek(max(0, run.log_file.stat().st_size - 64_000))
            text = handle.read().decode("utf-8", errors="replace")
    except OSError:
        return ""
    shown = [line.rsplit("\r", 1)[-1] if line.rstrip("\r") else line for line in text.split("\n")]
    shown = [re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "", line) for line in shown]
    return "\n".join(shown[-lines:])


def _steps_so_far(run: RunDir) -> int | None:
    metrics = run.metrics()
    if metrics and metrics.get("steps") is not None:
        return metrics["steps"]
    train, _ = csv_losses(run)
    return train[-1][0] if train else None
