"""`invoke bench.load`: load and abuse test of a fresh deployment (one request in ten malformed).

invoke bench.load run_dir=RUN --requests 1000 --concurrency 32
"""

import json
import time
from pathlib import Path

from onestop.bench.output import print_table, two_decimals
from onestop.config.compose import compose
from onestop.core.files import write_json
from onestop.deploy.loadtest import run_load
from onestop.deploy.service import health, read_state, serving


def bench_load(overrides: list[str], requests: int, concurrency: int, output: str | None) -> dict:
    """`requests` chat requests from `concurrency` clients, one in ten malformed, against a fresh deployment of
    the composed deploy config: status counts, latency, gateway memory before and after, health afterwards."""
    out_dir = Path(output or f"runs/bench/load/{time.strftime('%Y-%m-%d_%H-%M-%S')}").absolute()
    cfg = compose("deploy", [*overrides, "port=0", "name=bench-load"])
    with serving(cfg) as deployment:
        print(f"bench.load: {requests} requests from {concurrency} clients -> {deployment.base_url}", flush=True)
        figures = run_load(deployment.base_url, deployment.name, requests, concurrency, pid=deployment.pid)
        figures["health_after"] = health(read_state(deployment.state_file))
    write_json(out_dir / "load.json", figures)
    rows = [{"status": status, "requests": count} for status, count in sorted(figures["by_status"].items())]
    print_table(rows, f"{requests} requests, {concurrency} clients, one in ten malformed", two_decimals)
    print(json.dumps({k: v for k, v in figures.items() if k not in {"by_kind", "failures"}}, indent=2))
    print(f"Results: {out_dir / 'load.json'}", flush=True)
    return figures
