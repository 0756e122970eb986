"""`invoke bench.data`: how data preparation scales with the number of rows, in time and in memory.

    invoke bench.data                                    # 10k, 100k and 1M generated alpaca rows
    invoke bench.data --sizes 10000,100000 --model tiny

For each size, alpaca rows are generated (the same rows on every run, lengths varied like real
instruction data) into a JSONL in the results folder, and a child process runs what
`invoke data.prepare data=alpaca data.path=FILE model=MODEL` runs: read, validate, dedup, split, tokenize
with the model's tokenizer, cache, report. The child reports its preparation time (wall clock, and the CPU
seconds it used, which other jobs on a shared machine do not inflate) and its peak resident memory
(getrusage), so each size's peak is its own. The prepared copy is removed from the cache afterwards.
"""

# Lazy imports: matplotlib (inside plot_scaling).

import json
import os
import random
import resource
import shutil
import sys
import threading
import time
from pathlib import Path

from onestop.bench.output import results_dir, run_row_in_child, write_results
from onestop.config.compose import compose
from onestop.core.errors import OnestopError
from onestop.core.files import replace_durably, save_figure_atomic, temporary_beside
from onestop.data.prepare import prepare, tokenizing_processes
from onestop.data.report import print_report
from onestop.deploy.loadtest import resident_mib
from onestop.models import load_tokenizer, resolve_model_path

WORDS = (
    "the model data train answer question a of to and in is for on with as by from that this it be are was "
    "learning rate batch token layer weight gradient loss step epoch adapter prompt output input value "
    "function file config run test memory time speed small large first last new old good better simple "
    "write read explain list describe summarise translate compare classify why how what when where which"
).split()


def alpaca_rows(count: int, seed: int = 0):
    """`count` alpaca records; the first n are the same whatever `count` is. Lengths vary: short and long
    instructions, no input for about 40%, answers from a few words to a few hundred (long-tailed)."""
    rng = random.Random(seed)
    for index in range(count):

        def words(low: int, high: int) -> str:
            return " ".join(rng.choice(WORDS) for _ in range(rng.randint(low, high)))

        answer_words = min(400, int(rng.lognormvariate(3.6, 0.8)) + 3)
        yield {
            "instruction": f"Task {index}: {words(4, 30)}?",
            "input": "" if rng.random() < 0.4 else words(5, 80),
            "output": " ".join(rng.choice(WORDS) for _ in range(answer_words)) + ".",
        }


def write_rows(path: Path, count: int) -> Path:
    """The generated rows as JSONL at `path`, written beside it and renamed into place; kept when complete."""
    if path.is_file():
        return path
    with temporary_beside(path) as (fd, tmp):
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            for row in alpaca_rows(count):
                handle.write(json.dumps(row) + "\n")
        replace_durably(tmp, path)
    return path


def bench_data(sizes: list[int], model: str, output: str | None, keep_cache: bool = False) -> dict:
    """Rows/s and peak RSS of `data.prepare` per size, with how both grow from one size to the next."""
    if not sizes or min(sizes) < 10:
        raise OnestopError("bench.data --sizes: expected row counts of at least 10, e.g. 10000,100000")
    out_dir = results_dir("data", output)
    rows = []
    for size in sorted(sizes):
        path = write_rows(out_dir / f"alpaca_{size}.jsonl", size)
        print(f"bench.data: preparing {size} rows ({path.stat().st_size / 2**20:.0f} MiB) with {model}", flush=True)
        measured = _prepare_in_child({"path": str(path), "model": model})
        if not keep_cache:
            shutil.rmtree(measured["directory"], ignore_errors=True)
        rows.append(
            {
                "rows": size,
                "file MiB": path.stat().st_size / 2**20,
                "train tokens": measured["train_tokens"],
                "prepare s": measured["seconds"],
                "rows/s": size / measured["seconds"],
                "CPU s": measured["cpu_seconds"],
                "rows/CPU s": size / measured["cpu_seconds"],
                "processes": measured["processes"],
                "peak RSS MiB": measured["peak_rss_mib"],
                "above start MiB": measured["peak_rss_mib"] - measured["start_rss_mib"],
                "KiB/row": 1024 * (measured["peak_rss_mib"] - measured["start_rss_mib"]) / size,
                "with workers MiB": measured["tree_peak_rss_mib"],
            }
        )
    growth = scaling(rows)
    payload = {"model": model, "rows": rows, "growth": growth}
    write_results(
        out_dir, "data", payload, rows, f"data.prepare scaling, alpaca rows, {model} tokenizer", growth["text"]
    )
    plot_scaling(out_dir / "data.png", rows, model)
    print(growth["text"], flush=True)
    print(f"Results: {out_dir}", flush=True)
    return payload


def scaling(rows: list[dict]) -> dict:
    """Memory per extra row and time per extra row between the two largest sizes, and what 1M rows would
    take at that rate (a straight line: preparation holds every tokenized row in memory, as int32 arrays)."""
    if len(rows) < 2:
        return {"text": "One size only: no growth to report."}
    small, large = rows[-2], rows[-1]
    extra = large["rows"] - small["rows"]
    mib_per_row = (large["peak RSS MiB"] - small["peak RSS MiB"]) / extra
    s_per_row = (large["prepare s"] - small["prepare s"]) / extra
    cpu_per_row = (large["CPU s"] - small["CPU s"]) / extra
    at_1m = {
        "peak_rss_gib": (large["peak RSS MiB"] + mib_per_row * (1_000_000 - large["rows"])) / 1024,
        "prepare_min": (large["prepare s"] + s_per_row * (1_000_000 - large["rows"])) / 60,
    }
    text = (
        f"From {small['rows']} to {large['rows']} rows: +{1024 * mib_per_row:.1f} KiB of peak memory and "
        f"+{1000 * s_per_row:.2f} ms ({1000 * cpu_per_row:.2f} ms of CPU) per extra row; a straight line gives about "
        f"{at_1m['peak_rss_gib']:.1f} GiB and {at_1m['prepare_min']:.1f} min for 1M rows."
    )
    return {
        "kib_per_row": 1024 * mib_per_row,
        "ms_per_row": 1000 * s_per_row,
        "cpu_ms_per_row": 1000 * cpu_per_row,
        "at_1m": at_1m,
        "text": text,
    }


def _prepare_in_child(spec: dict) -> dict:
    return run_row_in_child("onestop.bench.data:prepare_in_child", spec, f"bench.data: preparing {spec['path']} failed")


def prepare_in_child() -> None:
    """One size, in its own process: `invoke data.prepare`'s steps, timed; prints `ROW {json}`."""
    spec = json.loads(sys.stdin.read())
    cfg = compose("train", [f"model={spec['model']}", "data=alpaca", f"data.path={spec['path']}"])
    tokenizer = load_tokenizer(cfg.model, resolve_model_path(cfg.model))
    start_rss = resident_mib(os.getpid())
    started, cpu_started = time.perf_counter(), _cpu_seconds()
    with TreeMemory() as tree:
        prepared = prepare(cfg.data, tokenizer, seed=cfg.seed, use_cache=False)
    seconds, cpu_seconds = time.perf_counter() - started, _cpu_seconds() - cpu_started
    print_report(prepared)
    examples = prepared.report.train_records + prepared.report.val_records
    row = {
        "seconds": seconds,
        "cpu_seconds": cpu_seconds,
        "processes": tokenizing_processes(cfg.data.num_proc, examples),
        "start_rss_mib": start_rss,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,  # KiB on Linux
        # this process and its tokenizing workers together, sampled: what the machine must hold at once
        "tree_peak_rss_mib": tree.peak_mib,
        "train_tokens": prepared.report.train_tokens,
        "directory": str(prepared.directory),
    }
    print("ROW " + json.dumps(row), flush=True)


def _cpu_seconds() -> float:
    """CPU seconds of this process and of its finished children (the tokenizing workers)."""
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + children.ru_utime + children.ru_stime


class TreeMemory:
    """The largest resident memory of this process and all its descendants together, sampled every 0.2 s while
    in the `with` block. (getrusage cannot give it: a child's peak counts the parent's pages it forked with.)"""

    def __init__(self):
        self.peak_mib = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def __enter__(self) -> "TreeMemory":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def _sample(self) -> None:
        while True:
            self.peak_mib = max(self.peak_mib, sum(resident_mib(pid) or 0.0 for pid in _process_tree(os.getpid())))
            if self._stop.wait(0.2):
                return


def _process_tree(pid: int) -> list[int]:
    pids, index = [pid], 0
    while index < len(pids):
        for task in Path(f"/proc/{pids[index]}/task").glob("*/children"):
            try:
                pids += [int(child) for child in task.read_text().split()]
            except OSError:  # the task ended meanwhile
                pass
        index += 1
    return pids


def plot_scaling(path: Path, rows: list[dict], model: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (memory, speed) = plt.subplots(1, 2, figsize=(10, 4))
    sizes = [r["rows"] for r in rows]
    memory.plot(sizes, [r["peak RSS MiB"] for r in rows], marker="o", label="peak RSS")
    memory.plot(sizes, [r["above start MiB"] for r in rows], marker="s", label="above the process's start")
    memory.set_ylabel("MiB")
    speed.plot(sizes, [r["rows/s"] for r in rows], marker="o", color="#55a868")
    speed.set_ylabel("rows/s")
    for axis in (memory, speed):
        axis.set_xscale("log")
        axis.set_xlabel("alpaca rows")
    memory.legend()
    figure.suptitle(f"invoke data.prepare, {model} tokenizer", fontsize=10)
    figure.tight_layout()
    save_figure_atomic(figure, path)
    plt.close(figure)
