"""Deploy & chat (`/deploy`): deployments with their health, starting and stopping them, and a chat playground.

Deployments are the ones `invoke deploy.status` lists (`onestop.deploy.service`); starting one runs the
`invoke deploy run_dir=RUN ...` command the page shows, stopping one is `invoke deploy.stop name=NAME`.
The playground streams from the deployment's OpenAI endpoint through this app (which adds the API key
the page never sees), runs the tool calls the model makes with onestop's tools, shows the conversation
as `openai` SDK code, and records ratings and corrections in the feedback store (`onestop.deploy.feedback`).
"""

# Lazy imports: httpx (inside chat_completions).

import os
import pprint
import re
import shlex

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, StreamingResponse

from onestop.agents.tools import load_tools, run_tool_call
from onestop.config.compose import compose
from onestop.config.groups import list_group_options
from onestop.core.errors import OnestopError
from onestop.core.rundir import RunDir
from onestop.deploy.feedback import FeedbackStore
from onestop.deploy.service import deployments, health, state_dir, stop
from onestop.evaluation.runs import list_runs
from onestop.ui.pages import COMPOSE_LOCK, render, run_path, run_ref, run_roots, start_invoke

router = APIRouter()

API_KEY_ENV = "ONESTOP_API_KEY"  # what the gateway asks for when it was started with a key
LOG_LINES = 30
SETTINGS = ("temperature", "top_p", "max_tokens")


@router.get("/deploy", response_class=HTMLResponse)
def deploy_page(request: Request) -> HTMLResponse:
    rows = [{**state, "health": health(state)} for state in deployments()]
    runs = [{"ref": run_ref(request, row.path), "path": str(row.path)} for row in list_runs(run_roots(request))]
    runs = [run for run in runs if _servable(request, run["ref"])]
    return render(
        request,
        "serving.html",
        title="Deploy & chat",
        active="deploy",
        rows=rows,
        runs=runs,
        starts=_start_jobs(request),
        commands=["invoke deploy.status", "invoke deploy run_dir=RUN port=0", "invoke deploy.stop name=NAME"],
    )


def _servable(request: Request, ref: str) -> bool:
    try:
        RunDir(run_path(request, ref)).weights()
    except (OnestopError, HTTPException):
        return False
    return True


@router.post("/deploy/start")
async def start_deployment(request: Request):
    """`invoke deploy run_dir=RUN port=0 [deploy.log_conversations=true]` as a process of its own: it returns
    once the deployment answers, leaving the deployment running after the UI stops."""
    form = await request.form()
    path = run_path(request, str(form.get("run", "")))
    words = ["invoke", "deploy", f"run_dir={path}", "port=0"]
    if form.get("log_conversations"):
        words.append("deploy.log_conversations=true")
    words += overrides(str(form.get("extra", "")))
    name = RunDir(path).name
    log = state_dir() / f"{name}.start.log"
    log.unlink(missing_ok=True)  # this start's output only
    process = start_invoke(request, words, log)
    _starts(request)[name] = (process, log, shlex.join(words))
    return RedirectResponse("/deploy", status_code=303)


@router.get("/deploy/starting")
def starting(request: Request) -> JSONResponse:
    """The deployments this UI is starting, for the page to poll until each is up (or has failed)."""
    return JSONResponse(_start_jobs(request))


@router.post("/deploy/stop")
def stop_deployment(request: Request, name: str):
    try:
        stop(name)
    except OnestopError as error:
        raise HTTPException(status_code=404, detail=str(error)) from None
    return RedirectResponse("/deploy", status_code=303)


def overrides(text: str) -> list[str]:
    """The extra `key=value` words typed in a form, split as a shell would."""
    try:
        return shlex.split(text)
    except ValueError as error:
        raise HTTPException(status_code=400, detail=f"more overrides: {error} in {text!r}") from None


def _starts(request: Request) -> dict:
    if not hasattr(request.app.state, "deploy_starts"):
        request.app.state.deploy_starts = {}
    return request.app.state.deploy_starts


def _start_jobs(request: Request) -> list[dict]:
    jobs = []
    for name, (process, log, command) in _starts(request).items():
        lines = log.read_text(errors="replace").splitlines()[-LOG_LINES:] if log.is_file() else []
        code = process.poll()
        status = "running" if code is None else "finished" if code == 0 else "failed"
        jobs.append({"name": name, "command": command, "status": status, "log": "\n".join(lines)})
    return jobs


@router.get("/deploy/chat", response_class=HTMLResponse)
def chat_page(request: Request, name: str) -> HTMLResponse:
    state = _deployment(name)
    store = _store(request, name)
    return render(
        request,
        "serving_chat.html",
        title=f"Chat with {name}",
        active="deploy",
        state=state,
        health=health(state),
        tools=list_group_options("tools"),
        feedback=_feedback_facts(store),
        commands=[f"invoke chat name={name}", 'invoke agent task="..."  # the running deployment, with tools'],
    )


@router.post("/deploy/chat/completions")
async def chat_completions(request: Request, name: str):
    """The deployment's /v1/chat/completions, relayed as it arrives (server-sent events when streamed)."""
    import httpx

    state = _deployment(name)
    body = await request.json()
    body["model"] = state["name"]
    key = os.environ.get(API_KEY_ENV)
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    client = httpx.AsyncClient(timeout=httpx.Timeout(None, connect=10.0))
    try:
        upstream = await client.send(
            client.build_request("POST", state["base_url"] + "/chat/completions", json=body, headers=headers),
            stream=True,
        )
    except httpx.TransportError as error:
        await client.aclose()
        message = f"{state['base_url']} is not answering ({type(error).__name__}); see invoke deploy.status"
        return JSONResponse({"error": {"message": message}}, status_code=502)

    async def relay():
        try:
            async for chunk in upstream.aiter_raw():
                yield chunk
        finally:
            await upstream.aclose()
            await client.aclose()

    kind = upstream.headers.get("content-type", "application/json")
    return StreamingResponse(relay(), status_code=upstream.status_code, media_type=kind)


@router.post("/deploy/tools/run")
async def run_tools(request: Request) -> JSONResponse:
    """Run the model's tool calls with the tools chosen (the `tools` group, as `invoke agent tools=[...]`)."""
    body = await request.json()
    tools = _tools(body.get("tools") or [])
    results = []
    for call in body.get("calls") or []:
        function = call.get("function") or {}
        result = run_tool_call(tools, function.get("name", ""), function.get("arguments"))
        results.append({"role": "tool", "tool_call_id": call.get("id") or "", "content": result.content})
    return JSONResponse({"results": results})


@router.get("/deploy/tools/schemas")
def tool_schemas(request: Request, tools: str = "") -> JSONResponse:
    names = [name for name in tools.split(",") if name]
    return JSONResponse({"tools": [tool.openai_schema() for tool in _tools(names)]})


@router.post("/deploy/snippet")
async def snippet(request: Request, name: str) -> JSONResponse:
    body = await request.json()
    state = _deployment(name)
    return JSONResponse({"code": openai_snippet(state, body.get("messages") or [], body.get("settings") or {}, body)})


@router.post("/deploy/feedback")
async def feedback(request: Request, name: str) -> JSONResponse:
    """Record a rating (and a corrected answer) of one reply; answers the files written and how to train on them."""
    body = await request.json()
    store = _store(request, name)
    try:
        sizes = store.rate(
            str(body.get("reply_id", "")),
            body.get("messages"),
            body.get("reply") or {},
            str(body.get("rating", "")),
            body.get("correction"),
            body.get("tools"),
        )
    except OnestopError as error:
        return JSONResponse({"error": str(error)}, status_code=400)
    return JSONResponse({**_feedback_facts(store), "sizes": sizes})


def _tools(names: list[str]) -> list:
    known = list_group_options("tools")
    unknown = [name for name in names if name not in known]
    if unknown:
        raise HTTPException(status_code=400, detail=f"tools={unknown[0]}: no such tool; choose from {', '.join(known)}")
    if not names:
        return []
    with COMPOSE_LOCK:
        cfg = compose("agent", [f"tools=[{','.join(names)}]"])
    return load_tools(cfg.tools)


def _deployment(name: str) -> dict:
    for state in deployments():
        if state["name"] == name:
            return state
    running = ", ".join(s["name"] for s in deployments()) or "none"
    raise HTTPException(status_code=404, detail=f"name={name}: no such deployment; running: {running}")


def _store(request: Request, name: str) -> FeedbackStore:
    try:
        return FeedbackStore.for_deployment(name, getattr(request.app.state, "feedback_dir", None))
    except OnestopError as error:
        raise HTTPException(status_code=400, detail=str(error)) from None


def _feedback_facts(store: FeedbackStore) -> dict:
    """Where the feedback files are and the commands that train on them."""
    paths = store.paths()
    return {
        "files": {kind: str(path) for kind, path in paths.items()},
        "train": [
            f"invoke train data=messages data.path={shlex.quote(str(paths['messages']))}",
            f"invoke train stage=dpo data=preference data.path={shlex.quote(str(paths['preference']))}",
        ],
    }


def openai_snippet(state: dict, messages: list[dict], settings: dict, body: dict) -> str:
    """The conversation as Python with the `openai` SDK: what the playground's next request sends."""
    arguments = [f"    model={state['name']!r},", f"    messages={_literal(messages, 4)},"]
    for key in SETTINGS:
        if settings.get(key) is not None:
            arguments.append(f"    {key}={settings[key]!r},")
    tool_names = [name for name in body.get("tools") or [] if re.fullmatch(r"\w+", str(name))]
    if body.get("tool_schemas"):
        arguments.append(f"    tools={_literal(body['tool_schemas'], 4)},  # tools={tool_names}")
    arguments.append("    stream=True,")
    key = "os.environ.get('ONESTOP_API_KEY', '-')"
    return "\n".join(
        [
            "import os",
            "",
            "from openai import OpenAI",
            "",
            f"client = OpenAI(base_url={state['base_url']!r}, api_key={key})",
            "stream = client.chat.completions.create(",
            *arguments,
            ")",
            "for chunk in stream:",
            "    if chunk.choices and chunk.choices[0].delta.content:",
            "        print(chunk.choices[0].delta.content, end='', flush=True)",
            "",
        ]
    )


def _literal(items: list, indent: int) -> str:
    """A list as Python source, one element per line, indented to sit inside a call."""
    pad = " " * (indent + 4)
    width = max(40, 100 - len(pad))
    lines = [
        pad + pprint.pformat(item, width=width, sort_dicts=False).replace("\n", "\n" + pad) + "," for item in items
    ]
    return "[\n" + "\n".join(lines) + "\n" + " " * indent + "]"
