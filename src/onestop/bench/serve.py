"""`invoke bench.serve`: what serving costs and gains, at several concurrencies.

    invoke bench.serve                                   # model=tiny, concurrency 1,8,32
    invoke bench.serve model=gemma3_270m --requests 16 --max-tokens 32
    invoke bench.serve run_dir=RUN deploy.continuous_batching=true

Three ways to answer the same prompts with the same model, greedy, with the same max tokens:
(a) onestop's deployment (the gateway in front of the backend), (b) the same backend process asked
directly on its internal port (`transformers serve` on CPU, LMDeploy's api_server on a GPU), and (c) the
model's `generate` in this process, one prompt after the other. Served requests are streamed, so the time
to the first token is measured as a client sees it. One deployment runs at a time and is always stopped.
"""

# Lazy imports: torch, transformers, peft, matplotlib (inside the functions that need them).

import gc
import os
import statistics
import time
from pathlib import Path

from onestop.bench.output import results_dir, write_results
from onestop.config.compose import compose
from onestop.core.errors import OnestopError
from onestop.core.files import save_figure_atomic
from onestop.deploy.loadtest import stream_load
from onestop.deploy.service import choose_backend, model_to_serve, read_state, serving

# What the docs promise: the gateway costs at most this share of the backend's throughput, and on a CPU
# a deployment serving 8 clients answers at least this many times the tokens/s of sequential generate.
GATEWAY_OVERHEAD_TARGET_PCT = 5.0
CPU_CONCURRENCY8_TARGET_RATIO = 3.0

TOPICS = (
    "a learning rate", "a tokenizer", "LoRA", "a GPU", "gradient clipping", "a chat template", "overfitting",
    "a validation set", "quantisation", "an embedding", "attention", "a checkpoint", "perplexity", "a batch",
    "the softmax function", "dropout",
)  # fmt: skip


def prompts(count: int) -> list[str]:
    """`count` different questions of a few lengths, the same on every run."""
    styles = ("What is {t}?", "Explain {t} in one sentence.", "Question {i}: why would an engineer care about {t}?")
    return [styles[i % len(styles)].format(t=TOPICS[i % len(TOPICS)], i=i) for i in range(count)]


def bench_serve(
    overrides: list[str], concurrency: list[int], requests: int, max_tokens: int, output: str | None
) -> dict:
    """Requests/s, output tokens/s and time to first token p50/p99 for the deployment and its backend at each
    concurrency, and for sequential in-process generate; gateway overhead and the concurrency-8 speed-up."""
    if not concurrency or min(concurrency) < 1 or requests < 1 or max_tokens < 1:
        raise OnestopError("bench.serve: --concurrency (e.g. 1,8,32), --requests and --max-tokens must be positive")
    cfg = compose("deploy", ["model=tiny", *overrides, "port=0", "name=bench-serve"])
    backend = choose_backend(cfg.deploy.backend)
    out_dir = results_dir("serve", output)
    model_dir, adapter = model_to_serve(cfg, backend)
    print(f"bench.serve: sequential generate, {requests} prompts, {max_tokens} tokens max", flush=True)
    sequential = sequential_generate(model_dir, adapter, prompts(requests), max_tokens)
    gc.collect()  # the in-process model is gone before the server loads its own
    rows = [_row("sequential generate", 1, sequential)]
    runs = {"sequential": sequential}
    api_key = (cfg.api_key_env and os.environ.get(cfg.api_key_env)) or None
    with serving(cfg) as deployment:
        state = read_state(deployment.state_file)
        targets = {
            "deployment": (deployment.base_url, deployment.name, api_key),
            "backend direct": (f"http://127.0.0.1:{state['backend_port']}/v1", state["backend_model"], None),
        }
        for url, model, key in targets.values():  # the first requests pay for loading and warming up
            stream_load(url, model, prompts(2), 2, max_tokens, key)
        for level in concurrency:
            batch = prompts(max(requests, level))
            for mode, (url, model, key) in targets.items():
                print(f"bench.serve: {mode}, concurrency {level}, {len(batch)} requests", flush=True)
                result = stream_load(url, model, batch, level, max_tokens, key)
                if result["failed"]:
                    raise OnestopError(
                        f"bench.serve: {result['failed']} of {len(batch)} requests to the {mode} failed: "
                        f"{result['failures'][0]}"
                    )
                runs[f"{mode} @{level}"] = result
                rows.append(_row(mode, level, result))
    summary = summarise(rows, backend)
    payload = {
        "model": str(cfg.run_dir or cfg.model.name),
        "backend": backend,
        "continuous_batching": bool(cfg.deploy.get("continuous_batching")),
        "max_tokens": max_tokens,
        "requests": requests,
        "rows": rows,
        "summary": summary,
        "runs": runs,
    }
    title = f"Serving {payload['model']} ({backend}), {max_tokens} tokens max, greedy"
    write_results(out_dir, "serve", payload, rows, title, _summary_text(summary))
    plot_serving(out_dir / "serve.png", rows, title)
    print(_summary_text(summary), flush=True)
    print(f"Results: {out_dir}", flush=True)
    return payload


def sequential_generate(model_dir: Path, adapter: Path | None, questions: list[str], max_tokens: int) -> dict:
    """Each question through the served model's own chat template and `generate`, greedy, one at a time."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, StoppingCriteria

    device = "cuda" if torch.cuda.is_available() else "cpu"
    tokenizer = AutoTokenizer.from_pretrained(adapter or model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype="auto").to(device).eval()
    if adapter:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter).eval()

    class FirstToken(StoppingCriteria):
        """Notes when the first new token exists; never stops anything."""

        at: float | None = None

        def __call__(self, input_ids, scores, **kwargs):
            self.at = self.at or time.perf_counter()
            return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)

    def answer(question: str) -> tuple[float, float, int]:
        inputs = tokenizer.apply_chat_template(
            [{"role": "user", "content": question}], add_generation_prompt=True, return_tensors="pt", return_dict=True
        ).to(device)
        first = FirstToken()
        started = time.perf_counter()
        with torch.inference_mode():
            out = model.generate(
                **inputs, max_new_tokens=max_tokens, do_sample=False, stopping_criteria=[first],
                pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id,
            )  # fmt: skip
        done = time.perf_counter()
        return (first.at or done) - started, done - started, out.shape[1] - inputs["input_ids"].shape[1]

    answer(questions[0])  # warm-up: the first call pays for one-time setup
    timings = []
    started = time.perf_counter()
    for question in questions:
        timings.append(answer(question))
    wall = time.perf_counter() - started
    tokens = sum(t[2] for t in timings)
    ttfts, latencies = sorted(t[0] for t in timings), sorted(t[1] for t in timings)
    return {
        "requests": len(questions),
        "concurrency": 1,
        "wall_s": round(wall, 3),
        "requests_per_s": len(questions) / wall,
        "output_tokens": tokens,
        "output_tokens_per_s": tokens / wall,
        "ttft_s": {"p50": _quantile(ttfts, 0.5), "p99": _quantile(ttfts, 0.99)},
        "latency_s": {"p50": _quantile(latencies, 0.5), "p99": _quantile(latencies, 0.99)},
        "failed": 0,
    }


def _quantile(values: list[float], q: float) -> float:
    return round(values[min(len(values) - 1, int(q * len(values)))], 3)


def _row(mode: str, level: int, result: dict) -> dict:
    return {
        "mode": mode,
        "concurrency": level,
        "requests": result["requests"],
        "req/s": result["requests_per_s"],
        "out tok/s": result["output_tokens_per_s"],
        "TTFT p50 s": result["ttft_s"]["p50"],
        "TTFT p99 s": result["ttft_s"]["p99"],
        "latency p50 s": result["latency_s"]["p50"],
        "tokens/request": result["output_tokens"] / max(result["requests"], 1),
    }


def summarise(rows: list[dict], backend: str) -> dict:
    """Gateway overhead per concurrency (deployment vs backend, output tokens/s), the deployment-at-8 vs
    sequential ratio, and whether each target is met (None when not measured or not applicable)."""
    by = {(r["mode"], r["concurrency"]): r for r in rows}
    sequential = by[("sequential generate", 1)]["out tok/s"]
    overhead = {
        level: 100 * (1 - by[("deployment", level)]["out tok/s"] / direct["out tok/s"])
        for (mode, level), direct in by.items()
        if mode == "backend direct"
    }
    at8 = by.get(("deployment", 8))
    ratio = at8["out tok/s"] / sequential if at8 else None
    on_cpu = backend == "transformers" and not _gpu()
    return {
        "gateway_overhead_pct": overhead,
        "gateway_overhead_pct_median": statistics.median(overhead.values()),
        "gateway_overhead_target_pct": GATEWAY_OVERHEAD_TARGET_PCT,
        "gateway_overhead_met": all(v <= GATEWAY_OVERHEAD_TARGET_PCT for v in overhead.values()),
        "deployment8_over_sequential": ratio,
        "deployment8_target_ratio": CPU_CONCURRENCY8_TARGET_RATIO if on_cpu else None,
        "deployment8_met": (ratio >= CPU_CONCURRENCY8_TARGET_RATIO) if ratio is not None and on_cpu else None,
    }


def _gpu() -> bool:
    import torch

    return torch.cuda.is_available()


def _summary_text(summary: dict) -> str:
    per_level = ", ".join(f"{v:+.1f}% at {k}" for k, v in summary["gateway_overhead_pct"].items())
    lines = [
        f"Gateway overhead (output tokens/s lost vs the backend asked directly): {per_level}; "
        f"target <= {summary['gateway_overhead_target_pct']:.0f}%: {_verdict(summary['gateway_overhead_met'])}.",
    ]
    ratio = summary["deployment8_over_sequential"]
    if ratio is None:
        lines.append("Deployment at concurrency 8 vs sequential generate: not measured (add 8 to --concurrency).")
    else:
        target = summary["deployment8_target_ratio"]
        goal = f"; CPU target >= {target:.0f}x: {_verdict(summary['deployment8_met'])}" if target else ""
        lines.append(f"Deployment at concurrency 8 vs sequential generate: {ratio:.2f}x output tokens/s{goal}.")
    return "\n".join(lines)


def _verdict(met: bool | None) -> str:
    return {True: "met", False: "NOT met", None: "n/a"}[met]


def plot_serving(path: Path, rows: list[dict], title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (speed, first) = plt.subplots(1, 2, figsize=(11, 4.2))
    for mode, marker in (("deployment", "o"), ("backend direct", "s")):
        mine = [r for r in rows if r["mode"] == mode]
        levels = [r["concurrency"] for r in mine]
        speed.plot(levels, [r["out tok/s"] for r in mine], marker=marker, label=mode)
        first.plot(levels, [r["TTFT p50 s"] for r in mine], marker=marker, label=f"{mode} p50")
        first.plot(levels, [r["TTFT p99 s"] for r in mine], marker=marker, linestyle="--", label=f"{mode} p99")
    sequential = next(r for r in rows if r["mode"] == "sequential generate")
    speed.axhline(sequential["out tok/s"], color="grey", linestyle=":", label="sequential generate")
    for axis, label in ((speed, "output tokens/s"), (first, "time to first token (s)")):
        axis.set_xscale("log", base=2)
        axis.set_xlabel("concurrent clients")
        axis.set_ylabel(label)
        axis.legend(fontsize=8)
    figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    save_figure_atomic(figure, path)
    plt.close(figure)
