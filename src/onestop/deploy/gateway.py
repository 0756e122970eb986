"""onestop's OpenAI-compatible front door: validates requests, then forwards them to the backend server.

    python -m onestop.deploy.gateway STATE.json

The backend (`transformers serve` on CPU, LMDeploy's `api_server` on GPU) listens on an internal port;
this process binds the public one. It exists because backends answer malformed requests with 500 and a
stack trace (a chat without `messages`, `max_tokens: 0`, `"stop": []`, `content` an object), or run out
of memory on them (a prompt far beyond the context, `max_tokens: 1000000000`), and because clients
should call the model by the short name onestop printed, not by a backend's file path. Bad requests get
a 4xx with an OpenAI-style error body naming the field (onestop.deploy.requests), are never forwarded,
and the server keeps serving. With `transformers serve` it also reads the model's tool calls and
thinking out of each reply, the family's way (onestop.deploy.replies).

Under load it is the gateway that queues: `max_concurrent_requests` at the backend, `max_queued_requests`
waiting, 429 with Retry-After beyond. No request outlives `request_timeout_s`, and a request that ends
early (timed out, or its client gone) closes its backend request: a stream then stops generating, while
transformers serve finishes a non-streamed one regardless (max_tokens_limit bounds it).

The app is three routers (health, models, generation) over one `Gateway`, which holds what they share:
the deployment's `GatewayState` (typed, read from the state file), the admission queue, the backend
client (closed by the app's lifespan), and the checks loaded beside the backend.
"""

# Lazy imports: uvicorn (inside main).

import hmac
import json
import os
import signal
import subprocess
import sys
import threading
from contextlib import asynccontextmanager
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Annotated

import anyio
import httpx
from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse

from onestop.deploy.admission import Admission, Busy
from onestop.deploy.backends import transformers_request_fields
from onestop.deploy.conversations import ConversationLog, log_safely
from onestop.deploy.prompts import PromptMeter
from onestop.deploy.relay import EventRelay, first_tool_call_only
from onestop.deploy.replies import StreamReading, read_completion
from onestop.deploy.requests import (
    ClientGone,
    GenerationRequest,
    Policy,
    RequestError,
    ToolSupport,
    fit_context,
    one_prompt,
    parse_body,
    read_body,
)
from onestop.models.tool_formats import ToolFormat, tool_format

GENERATION_ROUTES = {"/v1/chat/completions": "chat", "/v1/completions": "completion"}
GENERATION_PATHS = {kind: path for path, kind in GENERATION_ROUTES.items()}
# the engines that honour tool_choice and parallel_tool_calls themselves (transformers serve ignores both)
CHOOSING_BACKENDS = ("lmdeploy", "vllm")


@dataclass(frozen=True)
class Limits:
    """The deployment's limits (`invoke deploy` checked them: onestop.deploy.service.gateway_limits)."""

    max_request_bytes: int
    max_tokens_limit: int
    max_concurrent_requests: int
    max_queued_requests: int
    request_timeout_s: float
    max_images_per_request: int = 4


@dataclass(frozen=True)
class GatewayState:
    """The deployment the gateway fronts, as `invoke deploy` wrote it in its state file (the fields the
    gateway reads; the file also holds what starts and stops the backend)."""

    model: str
    """The name clients call the model by."""
    backend: str
    """transformers, lmdeploy or vllm"""
    backend_model: str
    """The name the backend knows the model by."""
    backend_port: int
    limits: Limits
    started: float
    tool_calls: bool = False
    """Whether the deployment returns tool calls (otherwise `tools` are refused)."""
    reads_images: bool = False
    """Whether the served model reads image parts (otherwise they are refused with a 400, never dropped)."""
    tool_format: str | None = None
    """The family whose replies the gateway reads (with transformers serve, which hands them back whole)."""
    tokenizer_dir: str | None = None
    context_length: int | None = None
    conversations_log: str | None = None

    @classmethod
    def from_record(cls, record: dict) -> "GatewayState":
        known = {f.name for f in fields(cls)}
        return cls(**{key: value for key, value in record.items() if key in known and key != "limits"},
                   limits=Limits(**record["limits"]))  # fmt: skip


class Prepared:
    """What the gateway loads beside the backend, on a thread so that both load at once: the prompt meter
    (the served tokenizer) and the fields transformers serve accepts. Either may be missing (a model
    without a known context, an older transformers); its check is then skipped."""

    def __init__(self, state: GatewayState):
        self.meter: PromptMeter | None = None
        self.fields: dict[str, frozenset] = {}
        self.ready = threading.Event()
        threading.Thread(target=self._load, args=(state,), daemon=True).start()

    def _load(self, state: GatewayState) -> None:
        # the gateway serves without a check rather than not at all
        try:
            if state.context_length:
                self.meter = PromptMeter.load(state.tokenizer_dir, state.context_length)
        except Exception as err:  # noqa: BLE001
            print(f"onestop gateway: no prompt-length check: {err}", file=sys.stderr, flush=True)
        try:
            if state.backend == "transformers":
                self.fields = transformers_request_fields()
        except Exception as err:  # noqa: BLE001
            print(f"onestop gateway: no check of field names: {err}", file=sys.stderr, flush=True)
        self.ready.set()


class Gateway:
    """What the routes share for one deployment."""

    def __init__(self, state: GatewayState, api_key: str | None):
        self.state, self.api_key = state, api_key
        self.timeout_s = state.limits.request_timeout_s
        self.admission = Admission(state.limits.max_concurrent_requests, state.limits.max_queued_requests)
        self.log = ConversationLog(state.conversations_log, api_key) if state.conversations_log else None
        self.tools = ToolSupport(tool_calls=state.tool_calls, tool_choice=state.backend in CHOOSING_BACKENDS)
        self.reply_format: ToolFormat | None = (
            tool_format(state.tool_format) if state.backend == "transformers" else None
        )
        self.client = httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{state.backend_port}",
            timeout=httpx.Timeout(self.timeout_s + 30, connect=10.0),  # the request deadline ends requests first
            # a backend (uvicorn) drops idle connections after 5 s; reusing one just then fails the request
            limits=httpx.Limits(max_connections=self.admission.slots + 8, keepalive_expiry=2.0),
        )
        self.prepared = Prepared(state)

    def policy(self, kind: str) -> Policy:
        limits = self.state.limits
        return Policy(self.state.model, self.tools, limits.max_tokens_limit, self.prepared.fields.get(kind),
                      self.state.reads_images, limits.max_images_per_request)  # fmt: skip

    def authorised(self, request: Request) -> bool:
        # Constant-time: how long a wrong key takes to refuse must not tell how much of it was right.
        given = request.headers.get("authorization", "").encode()
        return self.api_key is None or hmac.compare_digest(given, f"Bearer {self.api_key}".encode())

    def malformed_call(self) -> None:
        self.admission.counts["malformed_tool_calls"] += 1

    async def send(self, path: str, body: dict):
        """The backend's reply (streamed when asked). A pooled connection the backend closed after an error
        fails before any answer arrives; the request is then sent once more on a fresh connection."""
        for attempt in (1, 2):
            try:
                request = self.client.build_request("POST", path, json=body)
                return await self.client.send(request, stream=bool(body.get("stream")))
            except (httpx.RemoteProtocolError, httpx.ConnectError, httpx.WriteError):
                if attempt == 2:
                    raise


def current(request: Request) -> Gateway:
    return request.app.state.gateway


Current = Annotated[Gateway, Depends(current)]


def error(status: int, message: str, code: str = "invalid_request_error", headers=None) -> JSONResponse:
    payload = {"error": {"message": message, "type": code, "code": code}}
    return JSONResponse(payload, status_code=status, headers=headers)


def unauthorised() -> JSONResponse:
    return error(401, "missing or wrong API key", "invalid_api_key")


health = APIRouter()


@health.get("/health")
async def health_check(gateway: Current):
    load, name = gateway.admission.snapshot(), gateway.state.model
    try:
        reply = await gateway.client.get("/health", timeout=5)
    except httpx.HTTPError:
        return JSONResponse({"status": "backend not answering", "model": name, "load": load}, status_code=503)
    up = reply.status_code == 200 and gateway.prepared.ready.is_set()
    return JSONResponse({"status": "ok" if up else "starting", "model": name, "load": load})


models = APIRouter()


@models.get("/v1/models")
async def list_models(request: Request, gateway: Current):
    if not gateway.authorised(request):
        return unauthorised()
    entry = {"id": gateway.state.model, "object": "model", "created": int(gateway.state.started), "owned_by": "onestop"}
    return {"object": "list", "data": [entry]}


generation = APIRouter()


@generation.post("/v1/chat/completions")
async def chat(request: Request, gateway: Current):
    return await generate(gateway, request, "chat")


@generation.post("/v1/completions")
async def completions(request: Request, gateway: Current):
    return await generate(gateway, request, "completion")


async def generate(gateway: Gateway, request: Request, kind: str):
    """One generation request: checked, admitted, sized to the context, forwarded, its reply read and relayed."""
    deadline = anyio.current_time() + gateway.timeout_s
    if not gateway.authorised(request):
        return unauthorised()
    try:
        asked = await checked(gateway, request, kind)
    except RequestError as err:
        return error(err.status, err.message, err.code)
    except ClientGone:
        return error(400, "the client went away while sending its request")
    admission = gateway.admission
    try:
        with anyio.fail_after(max(0.0, deadline - anyio.current_time())):
            slot = await admission.enter()
    except Busy as busy:
        message = f"busy: {admission.slots} requests running and {admission.queue} waiting; retry later"
        return error(429, message, "rate_limit_exceeded", {"Retry-After": str(busy.retry_after)})
    except TimeoutError:
        admission.counts["timed_out"] += 1
        return error(504, f"no free slot within request_timeout_s={gateway.timeout_s:g} s", "timeout")
    streaming = False
    try:
        with anyio.fail_after(max(0.0, deadline - anyio.current_time())):
            meter, limit = gateway.prepared.meter, gateway.state.limits.max_tokens_limit
            forwarded = await anyio.to_thread.run_sync(fit_context, meter, kind, asked.forwarded, limit)
            forwarded["model"] = gateway.state.backend_model
            reply = await gateway.send(GENERATION_PATHS[kind], forwarded)
            if reply.status_code != 200:
                text = (await reply.aread()).decode(errors="replace")
                await reply.aclose()
                return backend_failed(reply.status_code, text)
        single_tool_call = asked.body.get("parallel_tool_calls") is False and not gateway.tools.tool_choice
        reads = gateway.reply_format is not None and kind == "chat"
        if asked.stream:
            streaming = True
            reading = None
            if reads:
                reading = StreamReading(gateway.reply_format, asked.tools_offered, gateway.malformed_call)
            relay = EventRelay(gateway.state.model, single_tool_call, reading)
            return Relayed(gateway, relay, reply, slot, deadline, asked.body if kind == "chat" else None)
        try:
            payload = reply.json()
        except ValueError:
            return error(502, "the backend's answer was not JSON", "backend_error")
        payload["model"] = gateway.state.model
        if reads:
            payload = read_completion(payload, gateway.reply_format, asked.tools_offered, gateway.malformed_call)
        payload = first_tool_call_only(payload) if single_tool_call else payload
        answered = (payload.get("choices") or [{}])[0].get("message")
        if gateway.log and kind == "chat" and answered:
            await anyio.to_thread.run_sync(log_safely, gateway.log, asked.body, answered)
        return JSONResponse(payload)
    except RequestError as err:
        return error(err.status, err.message, err.code)
    except TimeoutError:
        admission.counts["timed_out"] += 1
        return error(504, f"the request ran past request_timeout_s={gateway.timeout_s:g} s", "timeout")
    except httpx.TransportError as err:
        return error(502, f"backend connection failed: {type(err).__name__}", "backend_unavailable")
    finally:
        if not streaming:
            slot.release()


async def checked(gateway: Gateway, request: Request, kind: str) -> GenerationRequest:
    """The request read (no further than max_request_bytes) and checked against this deployment's policy."""
    body = parse_body(await read_body(request, gateway.state.limits.max_request_bytes))
    if not gateway.prepared.ready.is_set():
        await anyio.to_thread.run_sync(gateway.prepared.ready.wait)
    asked = GenerationRequest.parse(kind, body, gateway.policy(kind))
    if kind == "completion" and gateway.state.backend == "transformers":
        asked.forwarded["prompt"] = one_prompt(asked.forwarded["prompt"])
    return asked


def backend_failed(status: int, text: str) -> JSONResponse:
    if status in (400, 413, 422):  # what the gateway's checks missed is still the client's to fix
        return error(400, f"the backend refused the request: {text[:300]}")
    return error(502, f"backend answered {status}: {text[:300]}", "backend_error")


class Relayed(StreamingResponse):
    """An event stream that, however it ends (finished, timed out, client gone), closes the backend's
    stream (transformers serve then stops generating) and frees the request's slot."""

    def __init__(self, gateway: Gateway, events: EventRelay, reply, slot, deadline: float, request_body: dict | None):
        super().__init__(self.relay(gateway, events, reply, deadline, request_body), media_type="text/event-stream")
        self.gateway, self.reply, self.slot, self.events = gateway, reply, slot, events

    async def __call__(self, scope, receive, send):
        try:
            await super().__call__(scope, receive, send)
        finally:
            with anyio.CancelScope(shield=True):
                await self.reply.aclose()
            if not (self.events.done or self.events.failed):
                self.gateway.admission.counts["disconnected"] += 1
            self.slot.release()

    @staticmethod
    async def relay(gateway: Gateway, events: EventRelay, reply, deadline: float, request_body: dict | None):
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
                gateway.admission.counts["timed_out"] += 1
                failure = (f"the request ran past request_timeout_s={gateway.timeout_s:g} s", "timeout")
            if failure:
                yield events.error(*failure)
                return
            if whole := events.feed(chunk):
                yield whole
        ending = events.finish()
        if gateway.log and request_body and not events.failed:
            # written before the client reads [DONE]: whoever got the whole answer finds it logged
            await anyio.to_thread.run_sync(log_safely, gateway.log, request_body, events.reply.message())
        yield ending


def build_app(state: dict | GatewayState) -> FastAPI:
    """The gateway's app for one deployment (its state file's record, or the typed state)."""
    typed = state if isinstance(state, GatewayState) else GatewayState.from_record(state)
    gateway = Gateway(typed, os.environ.get("ONESTOP_DEPLOY_API_KEY") or None)

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        try:
            yield
        finally:
            await gateway.client.aclose()

    app = FastAPI(title="onestop", lifespan=lifespan)
    app.state.gateway = gateway
    for router in (health, models, generation):
        app.include_router(router)
    return app


def main(state_file: str) -> None:
    import uvicorn

    state = json.loads(Path(state_file).read_text())
    log = open(state["backend_log"], "ab")  # noqa: SIM115 - open for the backend's whole life
    backend = subprocess.Popen(state["backend_command"], stdout=log, stderr=subprocess.STDOUT, env=backend_env(state))

    stopping = threading.Event()

    def stop_backend(*_):
        stopping.set()
        if backend.poll() is None:
            backend.terminate()
            try:
                backend.wait(timeout=15)
            except subprocess.TimeoutExpired:
                backend.kill()
        sys.exit(0)

    signal.signal(signal.SIGTERM, stop_backend)
    threading.Thread(target=exit_with_backend, args=(backend, state["backend_log"], stopping), daemon=True).start()
    try:
        # clients drop idle connections after about 5 s (httpx, the openai SDK); the server waiting longer
        # spares them reusing a connection the moment it closes, which fails the request
        app = build_app(state)
        uvicorn.run(app, host=state["host"], port=state["port"], log_level="warning", timeout_keep_alive=75)
    finally:
        stop_backend()


def exit_with_backend(backend: subprocess.Popen, backend_log: str, stopping: threading.Event) -> None:
    """End the gateway when its backend ends unasked (a failed start, a crash): `invoke deploy` then reports the
    backend's last lines at once instead of waiting out startup_timeout, and the status shows it stopped."""
    status = backend.wait()
    if stopping.is_set():
        return
    tail = " ".join(Path(backend_log).read_text(errors="replace")[-1000:].split())
    print(f"the backend exited with status {status}: {tail}", file=sys.stderr, flush=True)
    os._exit(3)


def backend_env(state: dict) -> dict:
    env = {**os.environ, **state.get("backend_env", {})}
    env.pop("ONESTOP_DEPLOY_API_KEY", None)  # the backend is internal; only the front door checks keys
    return env


if __name__ == "__main__":
    main(sys.argv[1])
