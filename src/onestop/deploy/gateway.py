"""onestop's OpenAI-compatible front door: validates requests, then forwards them to the backend server.

    python -m onestop.deploy.gateway STATE.json

The backend (`transformers serve` on CPU, LMDeploy's `api_server` on GPU) listens on an internal port;
this process binds the public one. It exists because backends answer malformed requests with 500 and a
stack trace (a chat without `messages`, `max_tokens: 0`, `"stop": []`, `content` an object), or run out
of memory on them (a prompt far beyond the context, `max_tokens: 1000000000`), and because clients
should call the model by the short name onestop printed, not by a backend's file path. Bad requests get
a 4xx with an OpenAI-style error body naming the field, are never forwarded, and the server keeps serving.

Under load it is the gateway that queues: `max_concurrent_requests` at the backend, `max_queued_requests`
waiting, 429 with Retry-After beyond. No request outlives `request_timeout_s`, and a request that ends
early (timed out, or its client gone) closes its backend request: a stream then stops generating, while
transformers serve finishes a non-streamed one regardless (max_tokens_limit bounds it).
"""

# Lazy imports: httpx, fastapi, uvicorn (inside the functions that need them).

import hmac
import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import anyio

from onestop.deploy.admission import Admission, Busy
from onestop.deploy.backends import transformers_request_fields
from onestop.deploy.conversations import ConversationLog, StreamAssembler, log_safely
from onestop.deploy.prompts import PromptMeter
from onestop.deploy.replies import StreamReading, read_completion
from onestop.models.tool_formats import tool_format

GENERATION_ROUTES = {"/v1/chat/completions": "chat", "/v1/completions": "completion"}
ROLES = ("system", "user", "assistant", "tool")
# transformers serve reads a whole GenerationConfig from this field: it would lift any max_tokens limit
REFUSED_FIELDS = {"generation_config": "it would override this deployment's generation limits"}


class RequestError(Exception):
    def __init__(self, status: int, message: str, code: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.code = status, message, code


def validate(
    kind: str,
    body,
    served_name: str,
    tool_support: dict | None = None,
    max_tokens_limit: int | None = None,
    known_fields: frozenset | None = None,
) -> dict:
    """A request body checked as the OpenAI API documents it; raises RequestError with the reason.

    `tool_support` says what the backend does with tools: {"tool_calls": bool (it returns parsed calls),
    "tool_choice": bool (it honours tool_choice and parallel_tool_calls itself)}. `max_tokens_limit` caps
    max_tokens; `known_fields`, when given, are the only top-level fields the backend accepts. Returns
    the body to forward.
    """
    if not isinstance(body, dict):
        raise RequestError(400, "request body must be a JSON object")
    if known_fields is not None and (unknown := sorted(set(body) - known_fields)):
        raise RequestError(400, f"unrecognised request field(s): {', '.join(f'`{k}`' for k in unknown)}")
    for key, why in REFUSED_FIELDS.items():
        if key in body:
            raise RequestError(400, f"`{key}` is not accepted here: {why}")
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        raise RequestError(400, f"`model` must be a string, got {_shown(model)}")
    if model not in (None, served_name):
        raise RequestError(
            404, f"model {model!r} is not served here; this server serves {served_name!r}", "model_not_found"
        )
    if kind == "chat":
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise RequestError(400, "`messages` is required: a non-empty list of {role, content} objects")
        for index, message in enumerate(messages):
            _check_message(message, f"messages[{index}]")
    else:
        prompt = body.get("prompt")
        if not (isinstance(prompt, str) and prompt) and not (
            isinstance(prompt, list) and prompt and all(isinstance(p, str) for p in prompt)
        ):
            raise RequestError(400, "`prompt` is required: a non-empty string")
    _check_generation(body, max_tokens_limit)
    stop = body.get("stop")
    forwarded = dict(body)
    if kind == "chat":
        forwarded = _tools_forwarded(forwarded, tool_support or {"tool_calls": False, "tool_choice": False})
    if stop in ([], "", None):
        forwarded.pop("stop", None)  # OpenAI accepts an empty stop list; transformers serve fails on it
    elif isinstance(stop, str):
        forwarded["stop"] = [stop]
    if body.get("logit_bias"):  # transformers serve fails mid-generation on a whole-number bias
        forwarded["logit_bias"] = {token: float(bias) for token, bias in body["logit_bias"].items()}
    return forwarded


def _check_message(message, where: str) -> None:
    if not isinstance(message, dict):
        raise RequestError(400, f"{where}: expected an object with role system|user|assistant|tool")
    role = message.get("role")
    if role not in ROLES:
        raise RequestError(400, f"{where}.role: expected system, user, assistant or tool, got {_shown(role)}")
    calls = message.get("tool_calls")
    if calls is not None:
        if role != "assistant" or not isinstance(calls, list):
            raise RequestError(400, f"{where}.tool_calls: expected a list of calls, on an assistant message")
        for call_index, call in enumerate(calls):
            _check_tool_call(call, f"{where}.tool_calls[{call_index}]")
    content = message.get("content")
    if content is None:
        if role == "assistant" and calls:
            return
        raise RequestError(400, f"{where}.content: required (null only beside an assistant's tool_calls)")
    if isinstance(content, list):
        for part_index, part in enumerate(content):
            if not (isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str)):
                raise RequestError(
                    400, f"{where}.content[{part_index}]: expected {{type: text, text: string}} (this model reads text)"
                )
    elif not isinstance(content, str):
        raise RequestError(
            400, f"{where}.content: expected a string or a list of text parts, got {type(content).__name__}"
        )


def _check_generation(body: dict, max_tokens_limit: int | None) -> None:
    """The sampling and length fields: each of the type and range the OpenAI API documents."""
    for key in ("max_tokens", "max_completion_tokens"):
        value = body.get(key)
        if value is None:
            continue
        if not _is_int(value) or value <= 0:
            raise RequestError(400, f"`{key}` must be a positive integer, got {_shown(value)}")
        if max_tokens_limit and value > max_tokens_limit:
            raise RequestError(
                400, f"`{key}` must be at most {max_tokens_limit} (this deployment's max_tokens_limit), got {value}"
            )
    for key, low, high in (
        ("temperature", 0, 2),
        ("top_p", 0, 1),
        ("presence_penalty", -2, 2),
        ("frequency_penalty", -2, 2),
    ):
        value = body.get(key)
        if value is not None and (not _is_number(value) or not low <= value <= high):
            raise RequestError(400, f"`{key}` must be a number from {low} to {high}, got {_shown(value)}")
    n = body.get("n")
    if n is not None and (not _is_int(n) or n != 1):
        raise RequestError(400, f"`n` must be 1 (this server returns one choice per request), got {_shown(n)}")
    seed = body.get("seed")
    if seed is not None and (not _is_int(seed) or not -(2**63) <= seed < 2**63):
        raise RequestError(400, f"`seed` must be a 64-bit integer, got {_shown(seed)}")
    if body.get("stream") is not None and not isinstance(body["stream"], bool):
        raise RequestError(400, f"`stream` must be true or false, got {_shown(body['stream'])}")
    for key in ("stream_options", "chat_template_kwargs", "response_format"):
        if body.get(key) is not None and not isinstance(body[key], dict):
            raise RequestError(400, f"`{key}` must be an object, got {_shown(body[key])}")
    if body.get("user") is not None and not isinstance(body["user"], str):
        raise RequestError(400, f"`user` must be a string, got {_shown(body['user'])}")
    stop = body.get("stop")
    listed = isinstance(stop, list) and all(isinstance(each, str) and each for each in stop)
    if stop is not None and not (isinstance(stop, str) or listed):
        raise RequestError(400, f"`stop` must be a string or a list of non-empty strings, got {_shown(stop)}")
    bias = body.get("logit_bias")
    if bias is not None and not (
        isinstance(bias, dict) and all(k.isdigit() and _is_number(v) and -100 <= v <= 100 for k, v in bias.items())
    ):
        raise RequestError(400, "`logit_bias` must map token ids (strings of digits) to numbers from -100 to 100")


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and value == value  # NaN is no number


def _shown(value) -> str:
    """A client's value for an error message, cut short: it may be megabytes."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


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
    per choice when parallel calls are off); events split across network chunks are joined first.

    A stream ends with `data: [DONE]` as OpenAI's do (transformers serve sends none), unless it ends with
    an error event: a client reading raw events can then tell a finished answer from a cut one.
    """

    def __init__(self, served_name: str, single_tool_call: bool, reading: StreamReading | None = None):
        self.served_name, self.single_tool_call, self.reading = served_name, single_tool_call, reading
        self.pending = b""
        self.done = self.failed = False
        self.reply = StreamAssembler()  # what the client was sent, for the conversation log

    def feed(self, chunk: bytes) -> bytes:
        self.pending += chunk
        *events, self.pending = self.pending.split(b"\n\n")
        return b"".join(self._event(e) for e in events)

    def flush(self) -> bytes:
        rest, self.pending = self.pending, b""
        return self._event(rest) if rest.strip() else b""

    def finish(self) -> bytes:
        """What is left of the stream, and its [DONE]."""
        rest = self.flush()
        if self.done or self.failed:
            return rest
        self.done = True
        return rest + b"data: [DONE]\n\n"

    def error(self, message: str, code: str) -> bytes:
        """An error event ending the stream early: what the openai SDK raises as an APIError."""
        self.failed = True
        payload = {"error": {"message": message, "type": code, "code": code}}
        return self.flush() + b"data: " + json.dumps(payload).encode() + b"\n\n"

    def _event(self, event: bytes) -> bytes:
        text = event.decode("utf-8", errors="replace").strip()
        if text == "data: [DONE]":
            self.done = True
        if not text.startswith("data:") or text == "data: [DONE]":
            return event + b"\n\n"
        try:
            payload = json.loads(text[len("data:") :])
        except json.JSONDecodeError:
            # transformers serve writes its stream errors (e.g. a tool call whose JSON the model garbled) into
            # a hand-made `{"error": "..."}` that breaks on any quote in the message; clients then fail to
            # decode the stream instead of seeing the error
            message = text[len("data:") :].strip().removeprefix('{"error": "').removesuffix('"}')
            payload = {"error": message}
        if isinstance(payload, dict):
            if isinstance(payload.get("error"), str):
                payload["error"] = {"message": payload["error"], "type": "backend_error", "code": "backend_error"}
            self.failed = self.failed or "error" in payload
            if "model" in payload:
                payload["model"] = self.served_name
            if self.reading is not None:
                payload = self.reading.rewrite(payload)
            if self.single_tool_call:
                payload = first_tool_call_only(payload)
            self.reply.feed(payload)
        return b"data: " + json.dumps(payload, ensure_ascii=False).encode() + b"\n\n"


def build_app(state: dict):
    import httpx
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse, StreamingResponse

    served_name, backend_name = state["model"], state["backend_model"]
    tool_support = {"tool_calls": state.get("tool_calls", False), "tool_choice": state["backend"] == "lmdeploy"}
    # the family whose replies the gateway reads (transformers serve hands them back whole)
    reply_format = tool_format(state.get("tool_format")) if state["backend"] == "transformers" else None
    limits = state["limits"]
    timeout_s = limits["request_timeout_s"]
    admission = Admission(limits["max_concurrent_requests"], limits["max_queued_requests"])
    api_key = os.environ.get("ONESTOP_DEPLOY_API_KEY") or None
    log = ConversationLog(state["conversations_log"], api_key) if state.get("conversations_log") else None
    client = httpx.AsyncClient(
        base_url=f"http://127.0.0.1:{state['backend_port']}",
        timeout=httpx.Timeout(timeout_s + 30, connect=10.0),  # the request deadline below ends requests first
        # a backend (uvicorn) drops idle connections after 5 s; reusing one just then fails the request
        limits=httpx.Limits(max_connections=admission.slots + 8, keepalive_expiry=2.0),
    )
    prepared = Prepared(state)
    app = FastAPI(title="onestop")

    def malformed_call() -> None:
        admission.counts["malformed_tool_calls"] += 1

    def error(status: int, message: str, code: str = "invalid_request_error", headers=None) -> JSONResponse:
        payload = {"error": {"message": message, "type": code, "code": code}}
        return JSONResponse(payload, status_code=status, headers=headers)

    def authorised(request: Request) -> bool:
        # Constant-time: how long a wrong key takes to refuse must not tell how much of it was right.
        given = request.headers.get("authorization", "").encode()
        return api_key is None or hmac.compare_digest(given, f"Bearer {api_key}".encode())

    @app.get("/health")
    async def health():
        load = admission.snapshot()
        try:
            reply = await client.get("/health", timeout=5)
        except httpx.HTTPError:
            return JSONResponse(
                {"status": "backend not answering", "model": served_name, "load": load}, status_code=503
            )
        up = reply.status_code == 200 and prepared.ready.is_set()
        return JSONResponse({"status": "ok" if up else "starting", "model": served_name, "load": load})

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
                return await client.send(request, stream=bool(body.get("stream")))
            except (httpx.RemoteProtocolError, httpx.ConnectError, httpx.WriteError):
                if attempt == 2:
                    raise

    async def sized(kind: str, forwarded: dict) -> dict:
        return await anyio.to_thread.run_sync(fit_context, prepared.meter, kind, forwarded, limits["max_tokens_limit"])

    def backend_failed(status: int, text: str) -> JSONResponse:
        if status in (400, 413, 422):  # what the gateway's checks missed is still the client's to fix
            return error(400, f"the backend refused the request: {text[:300]}")
        return error(502, f"backend answered {status}: {text[:300]}", "backend_error")

    class Relayed(StreamingResponse):
        """An event stream that, however it ends (finished, timed out, client gone), closes the backend's
        stream (transformers serve then stops generating) and frees the request's slot."""

        def __init__(self, events: EventRelay, reply, slot, deadline: float, request_body: dict | None):
            super().__init__(self.relay(events, reply, deadline, request_body), media_type="text/event-stream")
            self.reply, self.slot, self.events = reply, slot, events

        async def __call__(self, scope, receive, send):
            try:
                await super().__call__(scope, receive, send)
            finally:
                with anyio.CancelScope(shield=True):
                    await self.reply.aclose()
                if not (self.events.done or self.events.failed):
                    admission.counts["disconnected"] += 1
                self.slot.release()

        @staticmethod
        async def relay(events: EventRelay, reply, deadline: float, request_body: dict | None):
            chunks, failure = reply.aiter_bytes(), None
            while True:
                with anyio.CancelScope(deadline=deadline) as waiting:
                    try:
                        chunk = await anext(chunks)
                    except StopAsyncIteration:
                        break
                    except httpx.TransportError as err:
                        failure = (f"backend connection failed mid-stream: {type(err).__name__}", "backend_error")
                if waiting.cancelled_caught:
                    admission.counts["timed_out"] += 1
                    failure = (f"the request ran past request_timeout_s={timeout_s:g} s", "timeout")
                if failure:
                    yield events.error(*failure)
                    return
                if whole := events.feed(chunk):
                    yield whole
            ending = events.finish()
            if log and request_body and not events.failed:
                # written before the client reads [DONE]: whoever got the whole answer finds it logged
                await anyio.to_thread.run_sync(log_safely, log, request_body, events.reply.message())
            yield ending

    async def generate(request: Request, kind: str):
        deadline = anyio.current_time() + timeout_s
        if not authorised(request):
            return error(401, "missing or wrong API key", "invalid_api_key")
        try:
            body = parse_body(await read_body(request, limits["max_request_bytes"]))
            if not prepared.ready.is_set():
                await anyio.to_thread.run_sync(prepared.ready.wait)
            forwarded = validate(
                kind, body, served_name, tool_support, limits["max_tokens_limit"], prepared.fields.get(kind)
            )
            if kind == "completion" and state["backend"] == "transformers":
                forwarded["prompt"] = one_prompt(forwarded["prompt"])
        except RequestError as err:
            return error(err.status, err.message, err.code)
        except ClientGone:
            return error(400, "the client went away while sending its request")
        try:
            with anyio.fail_after(max(0.0, deadline - anyio.current_time())):
                slot = await admission.enter()
        except Busy as busy:
            message = f"busy: {admission.slots} requests running and {admission.queue} waiting; retry later"
            return error(429, message, "rate_limit_exceeded", {"Retry-After": str(busy.retry_after)})
        except TimeoutError:
            admission.counts["timed_out"] += 1
            return error(504, f"no free slot within request_timeout_s={timeout_s:g} s", "timeout")
        streaming = False
        try:
            with anyio.fail_after(max(0.0, deadline - anyio.current_time())):
                forwarded = await sized(kind, forwarded)
                forwarded["model"] = backend_name
                reply = await send_to_backend(GENERATION_PATHS[kind], forwarded)
                if reply.status_code != 200:
                    text = (await reply.aread()).decode(errors="replace")
                    await reply.aclose()
                    return backend_failed(reply.status_code, text)
            single_tool_call = body.get("parallel_tool_calls") is False and not tool_support["tool_choice"]
            reads = reply_format is not None and kind == "chat"
            offered = bool(forwarded.get("tools"))
            if forwarded.get("stream"):
                streaming = True
                reading = StreamReading(reply_format, offered, malformed_call) if reads else None
                relay = EventRelay(served_name, single_tool_call, reading)
                return Relayed(relay, reply, slot, deadline, body if kind == "chat" else None)
            try:
                payload = reply.json()
            except ValueError:
                return error(502, "the backend's answer was not JSON", "backend_error")
            payload["model"] = served_name
            payload = read_completion(payload, reply_format, offered, malformed_call) if reads else payload
            payload = first_tool_call_only(payload) if single_tool_call else payload
            answered = (payload.get("choices") or [{}])[0].get("message")
            if log and kind == "chat" and answered:
                await anyio.to_thread.run_sync(log_safely, log, body, answered)
            return JSONResponse(payload)
        except RequestError as err:
            return error(err.status, err.message, err.code)
        except TimeoutError:
            admission.counts["timed_out"] += 1
            return error(504, f"the request ran past request_timeout_s={timeout_s:g} s", "timeout")
        except httpx.TransportError as err:
            return error(502, f"backend connection failed: {type(err).__name__}", "backend_unavailable")
        finally:
            if not streaming:
                slot.release()

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


GENERATION_PATHS = {kind: path for path, kind in GENERATION_ROUTES.items()}


class Prepared:
    """What the gateway loads beside the backend, on a thread so that both load at once: the prompt meter
    (the served tokenizer) and the fields transformers serve accepts. Either may be missing (a model
    without a known context, an older transformers); its check is then skipped."""

    def __init__(self, state: dict):
        self.meter: PromptMeter | None = None
        self.fields: dict[str, frozenset] = {}
        self.ready = threading.Event()
        threading.Thread(target=self._load, args=(state,), daemon=True).start()

    def _load(self, state: dict) -> None:
        # the gateway serves without a check rather than not at all
        try:
            if state.get("context_length"):
                self.meter = PromptMeter.load(state["tokenizer_dir"], state["context_length"])
        except Exception as err:  # noqa: BLE001
            print(f"onestop gateway: no prompt-length check: {err}", file=sys.stderr, flush=True)
        try:
            if state["backend"] == "transformers":
                self.fields = transformers_request_fields()
        except Exception as err:  # noqa: BLE001
            print(f"onestop gateway: no check of field names: {err}", file=sys.stderr, flush=True)
        self.ready.set()


class ClientGone(Exception):
    """The client disconnected before its request body arrived whole."""


async def read_body(request, limit: int) -> bytes:
    """The request body, read no further than `limit` bytes (413 beyond)."""
    too_large = RequestError(
        413, f"request body is larger than {limit} bytes (this deployment's max_request_bytes)", "request_too_large"
    )
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise too_large
    received = bytearray()
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            raise ClientGone()
        received += message.get("body", b"")
        if len(received) > limit:
            raise too_large
        if not message.get("more_body"):
            return bytes(received)


def parse_body(raw: bytes):
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise RequestError(400, f"request body is not valid UTF-8 (byte {err.start}); JSON must be UTF-8") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise RequestError(400, f"request body is not valid JSON: {err}") from None
    except RecursionError:
        raise RequestError(400, "request body is not valid JSON: nested too deeply") from None


def one_prompt(prompt):
    """transformers serve completes one prompt string per request."""
    if isinstance(prompt, list):
        if len(prompt) != 1:
            raise RequestError(400, f"`prompt`: this backend completes one string per request, got {len(prompt)}")
        return prompt[0]
    return prompt


def fit_context(meter: PromptMeter | None, kind: str, body: dict, max_tokens_limit: int) -> dict:
    """The body with its prompt checked against the model's context (400 `context_length_exceeded` when
    prompt + max_tokens do not fit) and its logit_bias against the vocabulary; a body without max_tokens
    gets what fits, at most max_tokens_limit."""
    asked = body.get("max_completion_tokens") or body.get("max_tokens")
    vocabulary = len(meter.tokenizer) if meter else None
    if meter and (outside := [t for t in body.get("logit_bias") or {} if int(t) >= vocabulary]):
        raise RequestError(400, f"`logit_bias`: token {outside[0]} is not in this model's {vocabulary} tokens")
    if meter is None:
        return body if asked else {**body, "max_tokens": max_tokens_limit}
    context = meter.context_length
    try:
        texts = meter.prompts(kind, body)
    except Exception as err:  # noqa: BLE001 - a chat template raises whatever its author chose
        raise RequestError(400, f"`messages`: the model's chat template refused them: {err}") from None
    room = asked or max_tokens_limit
    longest = 0
    for text in texts:
        if len(text.encode()) + room < context:
            continue  # every token covers at least one byte (the sentencepiece space aside): no need to count
        tokens = meter.count(text, context, special=kind != "chat")
        if tokens + (asked or 1) > context:
            what = f"{tokens} in the prompt" + (f" + {asked} in max_tokens" if asked else "")
            raise RequestError(
                400,
                f"this model's maximum context length is {context} tokens; the request asks for {what}",
                "context_length_exceeded",
            )
        longest = max(longest, tokens)
    return body if asked else {**body, "max_tokens": min(max_tokens_limit, context - longest)}


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
        # clients drop idle connections after about 5 s (httpx, the openai SDK); the server waiting longer
        # spares them reusing a connection the moment it closes, which fails the request
        app = build_app(state)
        uvicorn.run(app, host=state["host"], port=state["port"], log_level="warning", timeout_keep_alive=75)
    finally:
        stop_backend()


def backend_env(state: dict) -> dict:
    env = {**os.environ, **state.get("backend_env", {})}
    env.pop("ONESTOP_DEPLOY_API_KEY", None)  # the backend is internal; only the front door checks keys
    return env


if __name__ == "__main__":
    main(sys.argv[1])
