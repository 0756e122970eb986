"""What every page shares: the templates (all extend base.html), rendering, and staying inside allowed folders.

    from onestop.ui.pages import render, templates
    return render(request, "my_page.html", title="My page", active="runs", rows=rows)

`render` passes `request`, `title`, `active` (the nav entry to highlight: runs, new, data, evaluate,
deploy) and `commands` (the `invoke ...` lines the page's actions run, shown in a box) to the template.
"""

import os
import shlex
import subprocess
import sys
import threading
from pathlib import Path

from fastapi import HTTPException, Request
from fastapi.responses import HTMLResponse
from fastapi.templating import Jinja2Templates

from onestop.core.paths import PROJECT_ROOT
from onestop.core.rundir import RunDir

TEMPLATES_DIR = Path(__file__).parent / "templates"
templates = Jinja2Templates(directory=str(TEMPLATES_DIR))

NAV = (
    ("runs", "Runs", "/"),
    ("new", "New run", "/new"),
    ("data", "Data", "/data"),
    ("evaluate", "Evaluate", "/evaluate"),
    ("deploy", "Deploy & chat", "/deploy"),
)
templates.env.globals["nav"] = NAV


def render(request: Request, template: str, status_code: int = 200, **context) -> HTMLResponse:
    """The page `template` (which extends base.html) filled with `context`."""
    context.setdefault("title", "onestop")
    context.setdefault("active", "")
    context.setdefault("commands", [])
    return templates.TemplateResponse(request, template, context, status_code=status_code)


def run_roots(request: Request) -> list[Path]:
    return request.app.state.run_roots


def project_dir(request: Request) -> Path:
    return request.app.state.project_dir


def allowed_roots(request: Request) -> list[Path]:
    """Folders the app may read and write: the project and the run roots."""
    return [project_dir(request), *run_roots(request)]


def inside(path: Path, roots: list[Path]) -> bool:
    """Whether `path`, links resolved, lies in one of `roots`."""
    resolved = Path(path).resolve()
    return any(resolved == root or resolved.is_relative_to(root) for root in roots)


def safe_path(request: Request, text: str, roots: list[Path] | None = None) -> Path:
    """The file or folder `text` names (relative to the project, or absolute), refused with 403 outside the
    project and run roots (or `roots`) — `..`, absolute paths elsewhere and links leading out alike."""
    base = project_dir(request)
    candidate = Path(text).expanduser()
    candidate = candidate if candidate.is_absolute() else base / candidate
    if not inside(candidate, roots or allowed_roots(request)):
        raise HTTPException(status_code=403, detail=f"{text}: outside the project and the run folders")
    return candidate.resolve()


def run_ref(request: Request, path: Path) -> str:
    """The id a run has in URLs: ROOT_INDEX/PATH_UNDER_ROOT, e.g. 0/train/2026-01-01_10-00-00."""
    resolved = Path(path).resolve()
    for index, root in enumerate(run_roots(request)):
        if resolved.is_relative_to(root):
            return f"{index}/{resolved.relative_to(root).as_posix()}"
    raise HTTPException(status_code=404, detail=f"{path}: not under a run folder")


def run_path(request: Request, ref: str, started: bool = False) -> Path:
    """The run directory a URL id names; 404 for an unknown root, 403 for a path leading out of its root.
    `started` also accepts a run launched from the UI that has not written its config yet (only train.log)."""
    index, _, rest = ref.partition("/")
    roots = run_roots(request)
    if not index.isdigit() or int(index) >= len(roots) or not rest:
        raise HTTPException(status_code=404, detail=f"{ref}: no such run")
    root = roots[int(index)]
    path = root / rest
    if not inside(path, [root]):
        raise HTTPException(status_code=403, detail=f"{ref}: outside the run folders")
    run = RunDir(path)
    if not (run.config_file.is_file() or (started and run.log_file.is_file())):
        raise HTTPException(status_code=404, detail=f"{ref}: no such run")
    return path.resolve()


# Hydra composition keeps global state: requests compose one at a time.
COMPOSE_LOCK = threading.Lock()


def start_invoke(request: Request, words: list[str], log: Path) -> subprocess.Popen:
    """Run `invoke ...` (`words`, starting with "invoke") in the project folder as its own process, its output
    appended to `log` after a "$ COMMAND" line. The process has a session of its own: stopping the UI leaves
    it running, and Ctrl-C in the UI's terminal does not reach it."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("a") as handle:
        handle.write(("\n" if handle.tell() else "") + "$ " + shlex.join(words) + "\n")
    where = project_dir(request)
    invoke = [str(Path(sys.executable).parent / "invoke")]
    if not (where / "tasks.py").is_file():
        invoke.append(f"--search-root={PROJECT_ROOT}")
    with log.open("a") as handle:
        return subprocess.Popen(
            [*invoke, *words[1:]],
            cwd=where,
            stdin=subprocess.DEVNULL,
            stdout=handle,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
            start_new_session=True,
        )
