"""onestop's OpenAI-compatible front door: validates requests, then forwards them to the backend server.

    python -m onestop.deploy.gateway STATE.json

The backend (`transformers serve` on CPU, LMDeploy's `api_server` on GPU) listens on an internal port;
this process binds the public one. It exists because backends answer malformed requests with 500 and a
stack trace (a chat without `messages`, `max_tokens: 0`, `"stop": []`), and because clients should call
the model by the short name onestop printed, not by a backend's file path. Bad requests get a 4xx with
an OpenAI-style error body, and the server keeps serving.
"""

# Lazy imports: httpx, fastapi, uvicorn (inside the functions that need them).

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

GENERATION_ROUTES = {"/v1/chat/completions": "chat", "/v1/completions": "completion"}


class RequestError(Exception):
    def __init__(self, status: int, message: str, code: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.code = status, message, code


def validate(kind: str, body, served_name: str) -> dict:
    """A request body checked as the OpenAI API documents it; raises RequestError with the reason."""
    if not isinstance(body, dict):
        raise RequestError(400, "request body must be a JSON object")
    model = body.get("model")
    if model not in (None, served_name):
        raise RequestError(
            404, f"model {model!r} is not served here; this server serves {served_name!r}", "model_not_found"
        )
    if kind == "chat":
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise RequestError(400, "`messages` is required: a non-empty list of {role, content} objects")
        for index, message in enumerate(messages):
            if not isinstance(message, dict) or message.get("role") not in {"system", "user", "assistant", "tool"}:
                raise RequestError(400, f"messages[{index}]: expected an object with role system|user|assistant|tool")
    else:
        prompt = body.get("prompt")
        if not (isinstance(prompt, str) and prompt) and not (isinstance(prompt, list) and prompt):
            raise RequestError(400, "`prompt` is required: a non-empty string")
    for key in ("max_tokens", "max_completion_tokens"):
        if key in body and body[key] is not None:
            value = body[key]
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise RequestError(400, f"`{key}` must be a positive integer, got {value!r}")
    temperature = body.get("temperature")
    if temperature is not None and (not isinstance(temperature, int | float) or not 0 <= temperature <= 2):
        raise RequestError(400, f"`temperature` must be a number from 0 to 2, got {temperature!r}")
    stop = body.get("stop")
    forwarded = dict(body)
    if stop in ([], "", None):
        forwarded.pop("stop", None)  # OpenAI accepts an empty stop list; transformers serve fails on it
    elif isinstance(stop, str):
        forwarded["stop"] = [stop]
    return forwarded


def build_app(state: dict):
    import httpx
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse, StreamingResponse

    served_name, backend_name = state["model"], state["backend_model"]
    # transformers serve reports a local model as "PATH@main"; clients see the name they asked for
    backend_label, served_label = f"{backend_name}@main".encode(), served_name.encode()
    backend = f"http://127.0.0.1:{state['backend_port']}"
    api_key = os.environ.get("ONESTOP_DEPLOY_API_KEY") or None
    client = httpx.AsyncClient(base_url=backend, timeout=httpx.Timeout(600.0, connect=10.0))
    app = FastAPI(title="onestop")

    def error(status: int, message: str, code: str = "invalid_request_error") -> JSONResponse:
        return JSONResponse({"error": {"message": message, "type": code, "code": code}}, status_code=status)

    def authorised(request: Request) -> bool:
        return api_key is None or request.headers.get("authorization") == f"Bearer {api_key}"

    @app.get("/health")
    async def health():
        try:
            reply = await client.get("/health", timeout=5)
        except httpx.HTTPError:
            return error(503, "backend not answering", "backend_unavailable")
        return JSONResponse({"status": "ok" if reply.status_code == 200 else "starting", "model": served_name})

    @app.get("/v1/models")
    async def models(request: Request):
        if not authorised(request):
            return error(401, "missing or wrong API key", "invalid_api_key")
        entry = {"id": served_name, "object": "model", "created": int(state["started"]), "owned_by": "onestop"}
        return {"object": "list", "data": [entry]}

    async def generate(request: Request, kind: str):
        if not authorised(request):
            return error(401, "missing or wrong API key", "invalid_api_key")
        try:
            body = json.loads(await request.body())
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            return error(400, f"request body is not valid JSON: {err}")
        try:
            forwarded = validate(kind, body, served_name)
        except RequestError as err:
            return error(err.status, err.message, err.code)
        forwarded["model"] = backend_name
        path = "/v1/chat/completions" if kind == "chat" else "/v1/completions"
        if forwarded.get("stream"):
            upstream = client.build_request("POST", path, json=forwarded)
            reply = await client.send(upstream, stream=True)
            if reply.status_code != 200:
                text = (await reply.aread()).decode(errors="replace")
                await reply.aclose()
                return error(502, f"backend answered {reply.status_code}: {text[:300]}", "backend_error")

            async def relay():
                try:
                    async for chunk in reply.aiter_bytes():
                        yield chunk.replace(backend_label, served_label).replace(backend_name.encode(), served_label)
                finally:
                    await reply.aclose()

            return StreamingResponse(relay(), media_type="text/event-stream")
        reply = await client.post(path, json=forwarded)
        if reply.status_code != 200:
            return error(502, f"backend answered {reply.status_code}: {reply.text[:300]}", "backend_error")
        payload = reply.json()
        payload["model"] = served_name
        return JSONResponse(payload)

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        return await generate(request, "chat")

    @app.post("/v1/completions")
    async def completions(request: Request):
        return await generate(request, "completion")

    @app.on_event("shutdown")
    async def close_client():
        await client.aclose()

    return app


def main(state_file: str) -> None:
    import uvicorn

    state = json.loads(Path(state_file).read_text())
    log = open(state["backend_log"], "ab")  # noqa: SIM115 - open for the backend's whole life
    backend = subprocess.Popen(state["backend_command"], stdout=log, stderr=subprocess.STDOUT, env=backend_env(state))

    def stop_backend(*_):
        if backend.poll() is None:
            backend.terminate()
            try:
                backend.wait(timeout=15)
            except subprocess.TimeoutExpired:
                backend.kill()
        sys.exit(0)

    signal.signal(signal.SIGTERM, stop_backend)
    try:
        uvicorn.run(build_app(state), host=state["host"], port=state["port"], log_level="warning")
    finally:
        stop_backend()


def backend_env(state: dict) -> dict:
    env = {**os.environ, **state.get("backend_env", {})}
    env.pop("ONESTOP_DEPLOY_API_KEY", None)  # the backend is internal; only the front door checks keys
    return env


if __name__ == "__main__":
    main(sys.argv[1])
