"""The web app behind `invoke ui`: pages as routers, one shared layout, and who may ask.

    from onestop.ui.app import create_app
    app = create_app([Path("runs")], Path("."), token=None)   # then: uvicorn.run(app, host="127.0.0.1")

Each page lives in its own module exposing `router = fastapi.APIRouter()`, named in `PAGE_MODULES`; a page
added later plugs in by creating its module and naming it there. A named module that cannot be imported is
an error at start, never a page silently missing. Settings are on `app.state` (`run_roots`,
`project_dir`, `token`), read in handlers through `request.app.state`.
"""

import hmac
import importlib
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import PlainTextResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles

STATIC_DIR = Path(__file__).parent / "static"
# Page modules, in the order their routes are matched.
PAGE_MODULES = (
    "onestop.ui.runs",
    "onestop.ui.launch",
    "onestop.ui.data_preview",
    "onestop.ui.serving",
    "onestop.ui.evaluate",
)
TOKEN_COOKIE = "onestop_ui_token"


def create_app(run_roots: list[Path], project_dir: Path, token: str | None) -> FastAPI:
    """The UI over the runs under `run_roots`, launching in `project_dir`; `token`, when set, is required of
    every request (once as `?token=`, which sets a cookie, or as `Authorization: Bearer TOKEN`)."""
    app = FastAPI(title="onestop", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.project_dir = Path(project_dir).expanduser().resolve()
    app.state.run_roots = [Path(r).expanduser().resolve() for r in run_roots] or [app.state.project_dir / "runs"]
    app.state.token = token or None
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    for name in PAGE_MODULES:
        app.include_router(importlib.import_module(name).router)

    @app.middleware("http")
    async def require_token(request: Request, call_next) -> Response:
        expected = request.app.state.token
        if expected is None:
            return await call_next(request)
        given = request.query_params.get("token")
        if given is not None and _same(given, expected):
            # The token leaves the address bar at once; the cookie carries it from then on.
            clean = request.url.remove_query_params("token")
            response = RedirectResponse(str(clean.path) + (f"?{clean.query}" if clean.query else ""), status_code=303)
            response.set_cookie(TOKEN_COOKIE, expected, httponly=True, samesite="strict")
            return response
        bearer = request.headers.get("authorization", "")
        presented = bearer[7:] if bearer.lower().startswith("bearer ") else request.cookies.get(TOKEN_COOKIE, "")
        if presented and _same(presented, expected):
            return await call_next(request)
        return PlainTextResponse(
            "onestop ui: a token is required: open the address `invoke ui` printed (…?token=TOKEN) "
            "or send Authorization: Bearer TOKEN",
            status_code=401,
        )

    return app


def _same(given: str, expected: str) -> bool:
    return hmac.compare_digest(given.encode(), expected.encode())
