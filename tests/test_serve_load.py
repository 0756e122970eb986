"""The gateway under load and abuse: malformed requests refused before the backend sees them, a bounded queue,
a time limit, slots freed when clients leave, and a load test against the shared tool deployment.

The limit tests run the real gateway in this process in front of a stand-in backend whose requests last
until the test lets them go: what they assert is ordering and slot accounting, never how fast a machine is.
"""

import json
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import httpx
import pytest
from conftest import ASSETS

from onestop.config.compose import compose as compose_config
from onestop.core.errors import OnestopError
from onestop.deploy.backends import free_port
from onestop.deploy.gateway import build_app
from onestop.deploy.loadtest import malformed_requests, run_load
from onestop.deploy.prompts import PromptMeter
from onestop.deploy.requests import RequestError, fit_context, parse_body, validate
from onestop.deploy.service import gateway_limits, start, wait_until_healthy

LIMITS = {
    "max_request_bytes": 4 << 20,
    "max_tokens_limit": 4096,
    "max_concurrent_requests": 8,
    "max_queued_requests": 64,
    "request_timeout_s": 300.0,
    "max_images_per_request": 4,
}


@pytest.mark.parametrize(
    "case",
    [m for m in malformed_requests("demo", huge_body_bytes=1) if m.kind not in ("body_too_large", "prompt_too_long")],
    ids=lambda m: m.kind,
)
def test_every_malformed_kind_is_refused_naming_its_field(case):
    with pytest.raises(RequestError) as refused:
        validate("chat", parse_body(case.body), "demo", max_tokens_limit=4096)
    assert refused.value.status == case.status and case.names in refused.value.message


@pytest.mark.parametrize(
    ("change", "names"),
    [
        ({"messages": [{"role": "assistant", "content": None}]}, "messages[0].content"),
        ({"messages": [{"role": "user", "content": "x", "tool_calls": []}]}, "messages[0].tool_calls"),
        ({"messages": [{"role": "user", "content": [{"type": "text", "text": 3}]}]}, "messages[0].content[0]"),
        ({"temperature": True}, "`temperature`"),
        ({"top_p": float("nan")}, "`top_p`"),
        ({"n": 2}, "`n`"),
        ({"stop": ["ok", ""]}, "`stop`"),
        ({"stream": "yes"}, "`stream`"),
        ({"seed": 2**70}, "`seed`"),
        ({"logit_bias": {"eos": 5}}, "`logit_bias`"),
        ({"model": 7}, "`model`"),
        ({"generation_config": "{}"}, "`generation_config`"),
        ({"colour": "blue"}, "`colour`"),
    ],
)
def test_wrong_types_and_ranges_are_refused_naming_the_field(change, names):
    body = {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4, **change}
    known = frozenset({"messages", "max_tokens", "temperature", "top_p", "n", "stop", "stream", "seed", "model"})
    with pytest.raises(RequestError, match=names.replace("[", r"\[").replace("]", r"\]")) as refused:
        validate("chat", body, "demo", max_tokens_limit=4096, known_fields=known | {"logit_bias", "generation_config"})
    assert refused.value.status == 400


def test_valid_variants_pass():
    call = {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": [{"type": "text", "text": "Hi"}, {"type": "text", "text": "there"}]},
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "c1", "content": "42"},
    ]
    body = {"messages": messages, "max_tokens": 4096, "temperature": 0, "top_p": 1, "n": 1, "stop": "END"}
    forwarded = validate("chat", {**body, "logit_bias": {"2": -100}}, "demo", max_tokens_limit=4096)
    assert forwarded["stop"] == ["END"] and forwarded["messages"] == messages
    assert forwarded["logit_bias"] == {"2": -100.0} and isinstance(forwarded["logit_bias"]["2"], float)
    assert validate("completion", {"prompt": ["a"], "max_completion_tokens": 1}, "demo", max_tokens_limit=8)


def test_limits_come_from_the_deploy_config_sized_for_the_backend():
    cfg = compose_config("deploy", ["model=tiny", "deploy=transformers"])
    assert gateway_limits(cfg, "transformers") == LIMITS
    assert gateway_limits(cfg, "lmdeploy")["max_concurrent_requests"] == 64
    with pytest.raises(OnestopError, match="request_timeout_s=0.0: must be positive"):
        gateway_limits(compose_config("deploy", ["model=tiny", "request_timeout_s=0"]), "transformers")


@pytest.fixture(scope="module")
def meter():
    return PromptMeter.load(str(ASSETS / "tiny-qwen2"), 2048)


def test_prompts_are_measured_as_the_backend_tokenizes_them(meter):
    messages = [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "Capital of France?"}]
    tokens = len(meter.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)["input_ids"])
    padded = "word " * 600  # long enough that its bytes alone cannot show it fits: it is counted
    padded_tokens = len(
        meter.tokenizer.apply_chat_template(
            [{"role": "user", "content": padded}], add_generation_prompt=True, tokenize=True
        )["input_ids"]
    )
    assert fit_context(meter, "chat", {"messages": messages}, 4096)["max_tokens"] == 2048 - tokens
    fitted = fit_context(meter, "chat", {"messages": [{"role": "user", "content": padded}]}, 4096)
    assert fitted["max_tokens"] == 2048 - padded_tokens
    assert fit_context(meter, "chat", {"messages": messages}, 64)["max_tokens"] == 64
    with pytest.raises(RequestError, match="maximum context length is 2048 tokens") as refused:
        fit_context(meter, "chat", {"messages": [{"role": "user", "content": "hi " * 100_000}]}, 4096)
    assert refused.value.code == "context_length_exceeded"
    with pytest.raises(RequestError, match="`logit_bias`: token 5000 is not in this model's"):
        fit_context(meter, "chat", {"messages": messages, "max_tokens": 4, "logit_bias": {"5000": 1}}, 4096)
    with pytest.raises(RequestError, match=f"{padded_tokens} in the prompt \\+ 2000 in max_tokens"):
        fit_context(meter, "chat", {"messages": [{"role": "user", "content": padded}], "max_tokens": 2000}, 4096)


class FakeBackend:
    """A stand-in for `transformers serve`: the user message says what a request does. `hold:ID` answers once
    released, `stream:ID` streams until released, `die:ID` drops the connection mid-stream, `fail` answers 500,
    anything else answers at once. `arrived` and `closed` (the gateway hung up first) record IDs."""

    def __init__(self):
        self.release = threading.Event()
        self.arrived, self.closed = [], []

    def app(self):
        import anyio
        from fastapi import FastAPI, Request
        from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse

        app = FastAPI()

        def event(content: str) -> bytes:
            return (
                f"data: {json.dumps({'model': 'backend', 'choices': [{'delta': {'content': content}}]})}\n\n".encode()
            )

        @app.get("/health")
        async def health():
            return {"status": "ok"}

        @app.post("/v1/chat/completions")
        async def chat(request: Request):
            body = await request.json()
            what, _, ident = body["messages"][-1]["content"].partition(":")
            self.arrived.append(ident or what)
            if what == "fail":
                return PlainTextResponse("boom", status_code=500)
            if what == "hold":
                while not self.release.is_set():
                    if await request.is_disconnected():
                        self.closed.append(ident)
                        return PlainTextResponse("gone", status_code=499)
                    await anyio.sleep(0.02)
            if what in ("stream", "die"):

                async def events():
                    try:
                        yield event("a")
                        while what == "stream" and not self.release.is_set():
                            await anyio.sleep(0.02)
                            yield event("b")
                        if what == "die":
                            raise RuntimeError("backend crashed")
                    except BaseException:
                        self.closed.append(ident)
                        raise

                return StreamingResponse(events(), media_type="text/event-stream")
            completion = {"model": "backend", "choices": [{"index": 0, "message": {"content": "ok"}}]}
            return JSONResponse(completion)

        return app


@contextmanager
def served_in_thread(app, port: int):
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_for(lambda: server.started, "the server to start")
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def wait_for(condition, what: str, timeout: float = 60.0) -> None:
    """Poll until `condition()` holds; the timeout only stops a broken test from hanging."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        time.sleep(0.02)


@pytest.fixture
def fake():
    return FakeBackend()


@contextmanager
def gateway(fake: FakeBackend, **limits):
    backend_port = free_port()
    state = {
        "model": "demo",
        "backend_model": "backend",
        "backend": "transformers",
        "backend_port": backend_port,
        "tool_calls": False,
        "started": time.time(),
        "tokenizer_dir": str(ASSETS / "tiny-qwen2"),
        "context_length": 2048,
        "limits": {**LIMITS, **limits},
    }
    with served_in_thread(fake.app(), backend_port), served_in_thread(build_app(state), free_port()) as url:
        with httpx.Client(base_url=url, timeout=120) as http:
            wait_for(lambda: http.get("/health").json()["status"] == "ok", "the gateway to be ready")
            yield http


def chat(content: str, **fields) -> dict:
    return {"model": "demo", "messages": [{"role": "user", "content": content}], "max_tokens": 4, **fields}


def load(http: httpx.Client) -> dict:
    return http.get("/health").json()["load"]


def test_beyond_the_slots_requests_queue_and_beyond_the_queue_get_429(fake):
    with gateway(fake, max_concurrent_requests=1, max_queued_requests=1) as http, ThreadPoolExecutor(2) as pool:
        first = pool.submit(http.post, "/v1/chat/completions", json=chat("hold:first"))
        wait_for(lambda: fake.arrived == ["first"], "the first request to reach the backend")
        second = pool.submit(http.post, "/v1/chat/completions", json=chat("hold:second"))
        wait_for(lambda: load(http)["queued"] == 1, "the second request to queue")
        refused = http.post("/v1/chat/completions", json=chat("third"))
        assert refused.status_code == 429 and refused.json()["error"]["code"] == "rate_limit_exceeded"
        assert int(refused.headers["Retry-After"]) >= 1
        assert fake.arrived == ["first"]  # the queued one waits in the gateway, the refused one never left it
        fake.release.set()
        assert first.result().status_code == 200 and second.result().status_code == 200
        assert fake.arrived == ["first", "second"]
        after = load(http)
        assert after["in_flight"] == 0 and after["queued"] == 0 and after["refused_busy"] == 1


def test_a_request_past_its_time_limit_gets_504_and_its_backend_request_is_closed(fake):
    with gateway(fake, request_timeout_s=1) as http:
        reply = http.post("/v1/chat/completions", json=chat("hold:slow"))
        assert reply.status_code == 504 and reply.json()["error"]["code"] == "timeout"
        assert "request_timeout_s=1" in reply.json()["error"]["message"]
        wait_for(lambda: fake.closed == ["slow"], "the backend to see its request closed")
        assert load(http)["in_flight"] == 0 and load(http)["timed_out"] == 1


def test_a_stream_past_its_time_limit_ends_with_an_error_event(fake):
    with gateway(fake, request_timeout_s=1) as http:
        reply = http.post("/v1/chat/completions", json=chat("stream:long", stream=True))
        events = [line[len("data: ") :] for line in reply.text.splitlines() if line.startswith("data: ")]
        assert reply.status_code == 200 and json.loads(events[0])["model"] == "demo"
        assert json.loads(events[-1])["error"]["code"] == "timeout" and "[DONE]" not in events
        wait_for(lambda: fake.closed == ["long"], "the backend stream to be closed")
        assert load(http)["in_flight"] == 0


def test_a_client_gone_mid_stream_frees_its_slot_and_closes_the_backend_stream(fake):
    with gateway(fake, max_concurrent_requests=1, max_queued_requests=0) as http:
        with http.stream("POST", "/v1/chat/completions", json=chat("stream:left", stream=True)) as reply:
            lines = reply.iter_lines()  # kept: a dropped iterator closes the connection
            assert next(lines).startswith("data: ")
            assert load(http)["in_flight"] == 1
        wait_for(lambda: load(http)["in_flight"] == 0, "the slot to be freed")
        assert fake.closed == ["left"] and load(http)["disconnected"] == 1
        # one slot, no queue: this is answered only because the slot came back
        assert http.post("/v1/chat/completions", json=chat("next")).status_code == 200


def test_oversized_bodies_get_413_and_are_never_forwarded(fake):
    with gateway(fake, max_request_bytes=2048) as http:
        for body in (
            json.dumps(chat("x" * 4096)).encode(),
            json.dumps(chat("x" * (8 << 20))).encode(),  # much larger than the limit: the client still hears why
            iter([b"x" * 1024] * 4),  # chunked, no Content-Length: counted as it arrives
        ):
            reply = http.post("/v1/chat/completions", content=body)
            assert reply.status_code == 413 and "max_request_bytes" in reply.json()["error"]["message"]
        assert http.post("/v1/chat/completions", json=chat("fits")).status_code == 200
        assert fake.arrived == ["fits"]


def test_backend_failures_are_502_json_and_a_dropped_stream_ends_with_an_error_event(fake):
    with gateway(fake) as http:
        failed = http.post("/v1/chat/completions", json=chat("fail"))
        assert failed.status_code == 502 and failed.json()["error"]["code"] == "backend_error"
        dropped = http.post("/v1/chat/completions", json=chat("die:x", stream=True))
        events = [line[len("data: ") :] for line in dropped.text.splitlines() if line.startswith("data: ")]
        assert dropped.status_code == 200 and json.loads(events[-1])["error"]["code"] == "backend_error"
        assert load(http)["in_flight"] == 0


@pytest.mark.slow
def test_under_load_good_requests_succeed_and_bad_ones_get_4xx_naming_the_field(tool_deployment):
    report = run_load(
        tool_deployment.base_url, tool_deployment.name, requests=210, concurrency=32, pid=tool_deployment.pid
    )
    kinds = {m.kind for m in malformed_requests(tool_deployment.name, huge_body_bytes=1)}
    assert report["failed"] == 0, report["failures"]
    assert set(report["by_kind"]) == {"good", *kinds} and report["by_kind"]["good"] == {"200": 189}
    assert not [status for status in report["by_status"] if not status.startswith("4") and status != "200"]
    assert report["rss_mb"]["after"] - report["rss_mb"]["before"] < 512, report["rss_mb"]
    health = httpx.get(tool_deployment.base_url.removesuffix("/v1") + "/health", timeout=30).json()
    assert health["status"] == "ok" and health["load"]["in_flight"] == 0


def test_a_port_already_in_use_is_refused_before_any_model_loads(tmp_path, monkeypatch):
    monkeypatch.setenv("ONESTOP_HOME", str(tmp_path))
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        cfg = compose_config("deploy", ["model=tiny", "deploy=transformers", f"port={port}", "name=busy"])
        with pytest.raises(OnestopError, match=rf"config key 'port': 127.0.0.1:{port} cannot be bound"):
            start(cfg)
    assert not (tmp_path / "deploy" / "busy.json").exists()


def test_a_backend_that_dies_while_starting_ends_the_deployment_at_once_with_its_last_lines(tmp_path):
    """Not a wait of startup_timeout: the gateway ends with its backend and `invoke deploy` shows why."""
    backend_log = tmp_path / "backend.log"
    port = free_port()
    state = {
        "model": "demo", "backend_model": "backend", "backend": "transformers", "backend_port": free_port(),
        "tool_calls": False, "started": time.time(), "tokenizer_dir": str(ASSETS / "tiny-qwen2"),
        "context_length": 2048, "limits": LIMITS, "host": "127.0.0.1", "port": port,
        "backend_log": str(backend_log),
        "backend_command": [sys.executable, "-c", "print('CUDA out of memory while loading'); raise SystemExit(7)"],
    }  # fmt: skip
    state_file = tmp_path / "state.json"
    state_file.write_text(json.dumps(state))
    log = tmp_path / "gateway.log"
    with open(log, "ab") as handle:
        gateway = subprocess.Popen(
            [sys.executable, "-m", "onestop.deploy.gateway", str(state_file)], stdout=handle, stderr=subprocess.STDOUT
        )
    started = time.monotonic()
    with pytest.raises(OnestopError) as error:
        wait_until_healthy(f"http://127.0.0.1:{port}", gateway, 600, log)
    assert time.monotonic() - started < 120  # the gateway's own start, not startup_timeout's 600 s
    assert gateway.returncode == 3
    assert "the backend exited with status 7: CUDA out of memory while loading" in str(error.value)
