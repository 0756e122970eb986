"""Many chat requests from many clients at once, some of them malformed: what a deployment answers under load;
and streamed requests timed to their first token (`stream_load`, what `invoke bench.serve` measures).

    from onestop.deploy.loadtest import run_load
    report = run_load("http://127.0.0.1:8011/v1", "deploy-doc", requests=1000, concurrency=32, pid=GATEWAY_PID)
    assert report["failed"] == 0, report["failures"]

Every request is judged on its own: a good one must answer 200 (a stream must end with [DONE] and carry
no error event), a malformed one must answer the exact 4xx its kind calls for, with an OpenAI-style error
whose message names the offending field. `failures` lists the first few that did not.
"""

# Lazy imports: httpx (inside run_load and stream_load).

import itertools
import json
import threading
import time
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Malformed:
    kind: str
    body: bytes
    status: int
    names: str
    """What the error's message (or code) must contain: the field at fault."""


def malformed_requests(model: str, long_prompt_tokens: int = 50_000, huge_body_bytes: int = 24 << 20) -> list:
    """One request of each malformed kind a gateway must refuse without forwarding it."""

    def chat(**fields) -> bytes:
        return json.dumps({"model": model, "messages": [{"role": "user", "content": "Hi"}], **fields}).encode()

    def messages(*items) -> bytes:
        return chat(messages=list(items), max_tokens=4)

    # the filler is sized so it cannot fit in the gateway's body limit however the JSON around it is counted
    huge = chat(messages=[{"role": "user", "content": "a" * huge_body_bytes}], max_tokens=4)
    return [
        Malformed("invalid_json", b'{"model": "' + model.encode() + b'", "messages": [', 400, "JSON"),
        Malformed("not_utf8", b'{"messages": [{"role": "user", "content": "\xff\xfe"}]}', 400, "UTF-8"),
        Malformed("not_an_object", b'["Hi"]', 400, "JSON object"),
        Malformed("messages_missing", json.dumps({"model": model}).encode(), 400, "`messages`"),
        Malformed("messages_not_a_list", chat(messages="Hi"), 400, "`messages`"),
        Malformed("messages_empty", chat(messages=[]), 400, "`messages`"),
        Malformed("unknown_role", messages({"role": "wizard", "content": "Hi"}), 400, "role"),
        Malformed("content_object", messages({"role": "user", "content": {"text": "Hi"}}), 400, "content"),
        Malformed(
            "content_image_part",
            messages({"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}),
            400,
            "content",
        ),
        Malformed("max_tokens_zero", chat(max_tokens=0), 400, "`max_tokens`"),
        Malformed("max_tokens_negative", chat(max_tokens=-5), 400, "`max_tokens`"),
        Malformed("max_tokens_huge", chat(max_tokens=1_000_000_000), 400, "`max_tokens`"),
        Malformed("max_completion_tokens_huge", chat(max_completion_tokens=10**12), 400, "`max_completion_tokens`"),
        Malformed("max_tokens_string", chat(max_tokens="8"), 400, "`max_tokens`"),
        Malformed("temperature_string", chat(temperature="hot", max_tokens=4), 400, "`temperature`"),
        Malformed("top_p_out_of_range", chat(top_p=7, max_tokens=4), 400, "`top_p`"),
        Malformed("n_not_an_integer", chat(n="two", max_tokens=4), 400, "`n`"),
        Malformed("stop_a_number", chat(stop=5, max_tokens=4), 400, "`stop`"),
        Malformed("unknown_model", chat(model="gpt-nope", max_tokens=4), 404, "model"),
        Malformed("prompt_too_long", messages({"role": "user", "content": "hi " * long_prompt_tokens}), 400, "context"),
        Malformed("body_too_large", huge, 413, "max_request_bytes"),
    ]


def good_request(model: str, index: int, max_tokens: int) -> tuple[bytes, bool]:
    """A valid chat request (body, streamed): plain, with a system message, or with content parts."""
    question = f"Question {index}: what is {index} plus {index % 7}?"
    variants = [
        [{"role": "user", "content": question}],
        [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": question}],
        [{"role": "user", "content": [{"type": "text", "text": question}]}],
    ]
    stream = index % 3 == 0
    body = {"model": model, "messages": variants[index % 3], "max_tokens": max_tokens, "temperature": 0}
    return json.dumps({**body, "stream": stream}).encode(), stream


def run_load(
    base_url: str,
    model: str,
    requests: int = 200,
    concurrency: int = 32,
    malformed_every: int = 10,
    max_tokens: int = 8,
    pid: int | None = None,
    api_key: str | None = None,
    timeout_s: float = 600.0,
    long_prompt_tokens: int = 50_000,
    huge_body_bytes: int = 24 << 20,
) -> dict:
    """`requests` chat completions from `concurrency` clients at once; every `malformed_every`-th is malformed.

    Args:
        base_url: the API root, http://HOST:PORT/v1.
        model: the served model name.
        pid: the gateway's process id; its resident memory is reported before and after.
        long_prompt_tokens: words in the too-long prompt; must exceed the model's context.
        huge_body_bytes: size of the oversized body; must exceed the gateway's max_request_bytes.

    Returns:
        counts by status and by kind, `failed` and the first `failures`, latency p50/p99/max (seconds, good
        requests), wall time, and `rss_mb` {before, after} when `pid` is given.
    """
    import httpx

    bad = malformed_requests(model, long_prompt_tokens, huge_body_bytes)
    kinds = itertools.cycle(bad)
    malformed = [bool(malformed_every) and i % malformed_every == malformed_every - 1 for i in range(requests)]
    plan = [next(kinds) if bad_one else i for i, bad_one in enumerate(malformed)]
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {api_key or '-'}"}
    url = base_url.rstrip("/") + "/chat/completions"
    local, clients, lock = threading.local(), [], threading.Lock()

    def client() -> httpx.Client:
        if not hasattr(local, "client"):
            local.client = httpx.Client(timeout=timeout_s, headers=headers)
            with lock:
                clients.append(local.client)
        return local.client

    def one(item) -> dict:
        if isinstance(item, Malformed):
            kind, body, stream = item.kind, item.body, False
        else:
            kind, (body, stream) = "good", good_request(model, item, max_tokens)
        started = time.perf_counter()
        try:
            if stream:
                with client().stream("POST", url, content=body) as reply:
                    status, text = reply.status_code, reply.read().decode("utf-8", errors="replace")
            else:
                reply = client().post(url, content=body)
                status, text = reply.status_code, reply.text
        except httpx.HTTPError as err:
            return {"kind": kind, "status": type(err).__name__, "ok": False, "detail": str(err)[:200]}
        latency = time.perf_counter() - started
        if isinstance(item, Malformed):
            ok, detail = _refused_as_expected(item, status, text)
        else:
            ok, detail = _answered(status, text, stream)
        return {"kind": kind, "status": str(status), "ok": ok, "detail": detail, "latency": latency}

    rss_before = resident_mib(pid)
    started = time.perf_counter()
    try:
        with ThreadPoolExecutor(max_workers=concurrency) as pool:
            results = list(pool.map(one, plan))
    finally:
        for each in clients:
            each.close()
    wall = time.perf_counter() - started
    by_kind: dict[str, Counter] = defaultdict(Counter)
    for result in results:
        by_kind[result["kind"]][result["status"]] += 1
    failures = [{k: r[k] for k in ("kind", "status", "detail")} for r in results if not r["ok"]]
    latencies = sorted(r["latency"] for r in results if r["kind"] == "good" and r["ok"])
    report = {
        "requests": requests,
        "concurrency": concurrency,
        "wall_s": round(wall, 2),
        "by_status": dict(Counter(r["status"] for r in results)),
        "by_kind": {kind: dict(counts) for kind, counts in by_kind.items()},
        "failed": len(failures),
        "failures": failures[:20],
        "latency_s": {
            "p50": _quantile(latencies, 0.50),
            "p99": _quantile(latencies, 0.99),
            "max": latencies[-1] if latencies else None,
        },
    }
    if pid:
        report["rss_mb"] = {"before": rss_before, "after": resident_mib(pid)}
    return report


def stream_load(
    base_url: str,
    model: str,
    prompts: list[str],
    concurrency: int,
    max_tokens: int,
    api_key: str | None = None,
    timeout_s: float = 600.0,
) -> dict:
    """Every prompt as one streamed, greedy chat request, `concurrency` at a time: throughput and the time to
    the first token.

    Output tokens are the backend's own count: the stream asks for its `usage` chunk (OpenAI's
    `stream_options.include_usage`, which transformers serve honours and, from 5.25, needs); a backend that
    sends none is counted one token per content chunk.

    Returns:
        requests, concurrency, wall_s, requests_per_s, output_tokens, output_tokens_per_s, ttft_s and
        latency_s {p50, p99} (seconds, answered requests), failed and the first `failures`.
    """
    import httpx

    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {api_key or '-'}"}
    url = base_url.rstrip("/") + "/chat/completions"
    local, clients, lock = threading.local(), [], threading.Lock()

    def client() -> httpx.Client:
        if not hasattr(local, "client"):
            local.client = httpx.Client(timeout=timeout_s, headers=headers)
            with lock:
                clients.append(local.client)
        return local.client

    def one(prompt: str) -> dict:
        body = {
            "model": model,
            "messages": [{"role": "user", "content": prompt}],
            "max_tokens": max_tokens,
            "temperature": 0,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        started = time.perf_counter()
        first, chunks, usage = None, 0, None
        try:
            with client().stream("POST", url, json=body) as reply:
                if reply.status_code != 200:
                    refused = reply.read().decode(errors="replace")[:200]
                    return {"ok": False, "detail": f"{reply.status_code}: {refused}"}
                for line in reply.iter_lines():
                    if not line.startswith("data:") or line[5:].strip() == "[DONE]":
                        continue
                    event = json.loads(line[5:])
                    if "error" in event:
                        return {"ok": False, "detail": f"error event: {line[:200]}"}
                    usage = event.get("usage") or usage
                    for choice in event.get("choices") or []:
                        if (choice.get("delta") or {}).get("content"):
                            first = first or time.perf_counter()
                            chunks += 1
        except (httpx.HTTPError, ValueError) as err:
            return {"ok": False, "detail": f"{type(err).__name__}: {str(err)[:200]}"}
        done = time.perf_counter()
        tokens = usage["completion_tokens"] if usage and usage.get("completion_tokens") is not None else chunks
        ttft = (first or done) - started
        return {"ok": True, "ttft": ttft, "latency": done - started, "tokens": tokens}

    started = time.perf_counter()
    try:
        with ThreadPoolExecutor(max_workers=concurrency) as pool:
            results = list(pool.map(one, prompts))
    finally:
        for each in clients:
            each.close()
    wall = time.perf_counter() - started
    answered = [r for r in results if r["ok"]]
    tokens = sum(r["tokens"] for r in answered)
    return {
        "requests": len(prompts),
        "concurrency": concurrency,
        "wall_s": round(wall, 3),
        "requests_per_s": len(answered) / wall,
        "output_tokens": tokens,
        "output_tokens_per_s": tokens / wall,
        "ttft_s": _p50_p99([r["ttft"] for r in answered]),
        "latency_s": _p50_p99([r["latency"] for r in answered]),
        "failed": len(results) - len(answered),
        "failures": [r["detail"] for r in results if not r["ok"]][:10],
    }


def _refused_as_expected(case: Malformed, status: int, text: str) -> tuple[bool, str]:
    try:
        error = json.loads(text)["error"]
        said = f"{error['message']} ({error['code']})"
    except (ValueError, KeyError, TypeError):
        return False, f"{status}, not an OpenAI error body: {text[:200]}"
    if status != case.status:
        return False, f"{status} instead of {case.status}: {said[:200]}"
    if case.names not in said:
        return False, f"the error does not name {case.names}: {said[:200]}"
    return True, ""


def _answered(status: int, text: str, stream: bool) -> tuple[bool, str]:
    if status != 200:
        return False, text[:300]
    if not stream:
        try:
            return bool(json.loads(text)["choices"]), ""
        except (ValueError, KeyError, TypeError):
            return False, f"not a chat completion: {text[:200]}"
    events = [line[len("data:") :].strip() for line in text.splitlines() if line.startswith("data:")]
    if not events or events[-1] != "[DONE]":
        return False, f"the stream did not end with [DONE]: {text[-200:]}"
    errors = [e for e in events if e != "[DONE]" and "error" in json.loads(e)]
    return (False, f"error event: {errors[0][:200]}") if errors else (True, "")


def _p50_p99(values: list[float]) -> dict:
    ordered = sorted(values)
    return {"p50": _quantile(ordered, 0.50), "p99": _quantile(ordered, 0.99)}


def _quantile(sorted_values: list[float], q: float) -> float | None:
    if not sorted_values:
        return None
    return round(sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))], 3)


def resident_mib(pid: int | None) -> float | None:
    """Resident memory of a process in MiB (Linux), None when it cannot be read (or it has ended)."""
    if not pid:
        return None
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        return None
    return None
