"""Serving the UI: `invoke ui [--host H] [--port P] [--runs DIR ...] [--token T]`.

Loopback (the default, 127.0.0.1) needs no token; any other address serves only with one, so nobody on
the network starts runs in your name.
"""

import ipaddress
import os
from pathlib import Path

import uvicorn

from onestop.core.errors import OnestopError
from onestop.ui.app import create_app

TOKEN_VARIABLE = "ONESTOP_UI_TOKEN"


def loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def ui_token(host: str, token: str | None) -> str | None:
    """The token requests must carry: `token`, else $ONESTOP_UI_TOKEN; required beyond loopback."""
    token = token or os.environ.get(TOKEN_VARIABLE) or None
    if token is None and not loopback(host):
        raise OnestopError(
            f"--host {host}: serving beyond this machine needs a token; set {TOKEN_VARIABLE} or pass --token"
        )
    return token


def serve(host: str, port: int, runs: list[str], token: str | None, project_dir: Path | None = None) -> None:
    """Serve the UI until Ctrl-C, after printing the address to open."""
    token = ui_token(host, token)
    project = Path(project_dir or Path.cwd()).resolve()
    roots = [Path(r).expanduser().resolve() for r in runs] or [project / "runs"]
    for root in roots:
        if root.exists() and not root.is_dir():
            raise OnestopError(f"--runs {root}: expected a directory of runs")
    app = create_app(roots, project, token)
    shown = f"[{host}]" if ":" in host else host
    query = f"/?token={token}" if token else "/"
    print(
        f"onestop ui: http://{shown}:{port}{query}  (runs from {', '.join(map(str, roots))}; Ctrl-C stops)", flush=True
    )
    uvicorn.run(app, host=host, port=port, log_level="warning")
