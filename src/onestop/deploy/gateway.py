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


def validate(kind: str, body, served_name: str, tool_support: dict | None = None) -> dict:
    """A request body checked as the OpenAI API documents it; raises RequestError with the reason.

    `tool_support` says what the backend does with tools: {"tool_calls": bool (it returns parsed calls),
    "tool_choice": bool (it honours tool_choice and parallel_tool_calls itself)}. Returns the body to forward.
    """
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
            for call_index, call in enumerate(message.get("tool_calls") or []):
                _check_tool_call(call, f"messages[{index}].tool_calls[{call_index}]")
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
    if kind == "chat":
        forwarded = _tools_forwarded(forwarded, tool_support or {"tool_calls": False, "tool_choice": False})
    if stop in ([], "", None):
        forwarded.pop("stop", None)  # OpenAI accepts an empty stop list; transformers serve fails on it
    elif isinstance(stop, str):
        forwarded["stop"] = [stop]
    return forwarded


def _check_tool_call(call, where: str) -> None:
    function = call.get("function") if isinstance(call, dict) else None
    if not isinstance(function, dict) or not isinstance(function.get("name"), str):
        raise RequestError(400, f"{where}: expected {{type: function, function: {{name, arguments}}}}")
    arguments = function.get("arguments", "{}")
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments or "{}")
        except json.JSONDecodeError:
            raise RequestError(400, f"{where}.function.arguments: not valid JSON") from None
    if not isinstance(arguments, dict):
        raise RequestError(400, f"{where}.function.arguments: expected a JSON object")


def _tools_forwarded(body: dict, support: dict) -> dict:
    """`tools`, `tool_choice` and `parallel_tool_calls` checked, and made into what the backend understands.

    transformers serve ignores tool_choice and parallel_tool_calls without a word, so the gateway does what
    it can itself (auto: nothing to do; none: the tools are not offered; parallel_tool_calls=false: only
    the first call is returned) and refuses what it cannot (required, a named function) with a 400.
    """
    tools = body.get("tools")
    if tools is not None:
        if not isinstance(tools, list):
            raise RequestError(400, "`tools` must be a list of {type: function, function: {name, parameters}}")
        for index, tool in enumerate(tools):
            if not isinstance(tool, dict) or tool.get("type", "function") != "function":
                raise RequestError(400, f"tools[{index}]: expected an object of type 'function'")
            function = tool.get("function")
            if not isinstance(function, dict) or not isinstance(function.get("name"), str) or not function["name"]:
                raise RequestError(400, f"tools[{index}]: expected {{type: function, function: {{name, parameters}}}}")
            if not isinstance(function.get("parameters", {}), dict):
                raise RequestError(400, f"tools[{index}].function.parameters: expected a JSON schema object")
        if tools and not support["tool_calls"]:
            raise RequestError(
                400,
                "`tools`: this deployment cannot return tool calls (its model has no tool-call parser; set "
                "model.tool_format, or serve with deploy=lmdeploy)",
            )
    names = [t["function"]["name"] for t in tools or []]
    choice = body.get("tool_choice")
    parallel = body.get("parallel_tool_calls")
    if parallel is not None and not isinstance(parallel, bool):
        raise RequestError(400, f"`parallel_tool_calls` must be true or false, got {parallel!r}")
    if isinstance(choice, dict):
        name = (choice.get("function") or {}).get("name") if choice.get("type") == "function" else None
        if not isinstance(name, str):
            raise RequestError(
                400, "`tool_choice`: expected auto, none, required or {type: function, function: {name}}"
            )
        if name not in names:
            offered = ", ".join(names) or "none"
            raise RequestError(400, f"`tool_choice`: function {name!r} is not in `tools` ({offered})")
    elif choice not in (None, "auto", "none", "required"):
        raise RequestError(400, f"`tool_choice` must be auto, none, required or a named function, got {choice!r}")
    if choice is not None and not names:
        raise RequestError(400, "`tool_choice` is set but `tools` is empty")
    if support["tool_choice"]:
        return body
    forwarded = {k: v for k, v in body.items() if k not in ("tool_choice", "parallel_tool_calls")}
    if tools:
        forwarded["tools"] = [_as_rendered(tool, index) for index, tool in enumerate(tools)]
    if choice == "none":
        forwarded.pop("tools", None)
    elif choice == "required" or isinstance(choice, dict):
        raise RequestError(
            400,
            "`tool_choice`: this backend (transformers serve) cannot force a tool call; use auto or none, "
            "or serve with deploy=lmdeploy",
        )
    return forwarded


def _as_rendered(tool: dict, index: int) -> dict:
    """A tool as the chat template should see it: the template prints what it is given, so a `strict: false`
    flag (the OpenAI Agents SDK sends one) would put words in the prompt that training never had."""
    function = dict(tool["function"])
    strict = function.pop("strict", None)
    if strict:
        raise RequestError(
            400,
            f"tools[{index}].function.strict: this backend (transformers serve) cannot enforce a strict schema; "
            "send strict: false (onestop checks arguments when it runs a tool)",
        )
    return {**tool, "function": function}


def first_tool_call_only(payload: dict) -> dict:
    """A chat completion keeping one tool call per choice (`parallel_tool_calls: false`)."""
    for choice in payload.get("choices") or []:
        calls = (choice.get("message") or {}).get("tool_calls")
        if calls:
            choice["message"]["tool_calls"] = calls[:1]
        delta_calls = (choice.get("delta") or {}).get("tool_calls")
        if delta_calls:
            kept = [c for c in delta_calls if c.get("index", 0) == 0]
            choice["delta"]["tool_calls"] = kept or None
    return payload


class EventRelay:
    """Server-sent events from the backend, re-emitted whole with the served model name (and one tool call
    per choice when parallel calls are off); events split across network chunks are joined first."""

    def __init__(self, served_name: str, single_tool_call: bool):
        self.served_name, self.single_tool_call = served_name, single_tool_call
        self.pending = b""

    def feed(self, chunk: bytes) -> bytes:
        self.pending += chunk
        *events, self.pending = self.pending.split(b"\n\n")
        return b"".join(self._event(e) for e in events)

    def flush(self) -> bytes:
        rest, self.pending = self.pending, b""
        return self._event(rest) if rest.strip() else b""

    def _event(self, event: bytes) -> bytes:
        text = event.decode("utf-8", errors="replace").strip()
        if not text.startswith("data:") or text == "data: [DONE]":
            return event + b"\n\n"
        try:
            payload = json.loads(text[len("data:") :])
        except json.JSONDecodeError:
            # transformers serve writes its stream errors (e.g. a tool call whose JSON the model garbled) into
            # a hand-made `{"error": "..."}` that breaks on any quote in the message; clients then fail to
            # decode the stream instead of seeing the error
            message = text[len("data:") :].strip().removeprefix('{"error": "').removesuffix('"}')
            payload = {"error": {"message": message, "type": "backend_error", "code": "backend_error"}}
        if isinstance(payload, dict):
            if "model" in payload:
                payload["model"] = self.served_name
            if self.single_tool_call:
                payload = first_tool_call_only(payload)
        return b"data: " + json.dumps(payload, ensure_ascii=False).encode() + b"\n\n"


def build_app(state: dict):
    import httpx
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse, StreamingResponse

    served_name, backend_name = state["model"], state["backend_model"]
    tool_support = {"tool_calls": state.get("tool_calls", False), "tool_choice": state["backend"] == "lmdeploy"}
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

    async def send_to_backend(path: str, body: dict):
        """The backend's reply (streamed when asked). A pooled connection the backend closed after an error
        fails before any answer arrives; the request is then sent once more on a fresh connection."""
        for attempt in (1, 2):
            try:
                request = client.build_request("POST", path, json=body)
                reply = await client.send(request, stream=bool(body.get("stream")))
                if not body.get("stream"):
                    await reply.aread()
                return reply
            except (httpx.RemoteProtocolError, httpx.ConnectError):
                if attempt == 2:
                    raise

    async def generate(request: Request, kind: str):
        if not authorised(request):
            return error(401, "missing or wrong API key", "invalid_api_key")
        try:
            body = json.loads(await request.body())
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            return error(400, f"request body is not valid JSON: {err}")
        try:
            forwarded = validate(kind, body, served_name, tool_support)
        except RequestError as err:
            return error(err.status, err.message, err.code)
        forwarded["model"] = backend_name
        single_tool_call = body.get("parallel_tool_calls") is False and not tool_support["tool_choice"]
        path = "/v1/chat/completions" if kind == "chat" else "/v1/completions"
        try:
            reply = await send_to_backend(path, forwarded)
        except httpx.TransportError as err:
            return error(502, f"backend connection failed: {type(err).__name__}", "backend_unavailable")
        if forwarded.get("stream"):
            if reply.status_code != 200:
                text = (await reply.aread()).decode(errors="replace")
                await reply.aclose()
                return error(502, f"backend answered {reply.status_code}: {text[:300]}", "backend_error")

            async def relay():
                events = EventRelay(served_name, single_tool_call)
                try:
                    async for chunk in reply.aiter_bytes():
                        if whole := events.feed(chunk):
                            yield whole
                    yield events.flush()
                finally:
                    await reply.aclose()

            return StreamingResponse(relay(), media_type="text/event-stream")
        if reply.status_code != 200:
            return error(502, f"backend answered {reply.status_code}: {reply.text[:300]}", "backend_error")
        payload = reply.json()
        payload["model"] = served_name
        return JSONResponse(first_tool_call_only(payload) if single_tool_call else payload)

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
