"""Where a benchmark writes and what it records beside its figures: the machine, the date, the commit; its
tables, printed and in Markdown; and `invoke bench.gpu.report`, which puts a GPU run's table into
docs/benchmarks.md. Every report a benchmark writes is written here.

out_dir = results_dir("serve", output)        # runs/bench/serve/<TIME>/ unless --output says otherwise
write_results(out_dir, "serve", {"rows": rows}, rows, "Serving throughput")
"""

import json
import os
import platform
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

from rich.console import Console
from rich.table import Table

from onestop.core.errors import OnestopError
from onestop.core.files import write_json, write_text_atomic
from onestop.core.paths import PROJECT_ROOT
from onestop.recipes import git_state, package_versions
from onestop.selection.devices import GIB, total_ram


def resident_bytes() -> int:
    """This process's resident memory now, from /proc/self/statm (Linux)."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PeakResident:
    """The peak resident memory of this process while `measuring` is on, sampled every 5 ms by a thread that
    runs while the `with` block does (a training benchmark turns `measuring` on for the training loop)."""

    def __init__(self):
        self.peak = 0
        self.measuring = False
        self._open = True

    def __enter__(self):
        threading.Thread(target=self._sample, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self._open = False

    def _sample(self) -> None:
        while self._open:
            if self.measuring:
                self.peak = max(self.peak, resident_bytes())
            time.sleep(0.005)


def results_dir(name: str, output: str | None) -> Path:
    """The benchmark's results folder, made: `output`, else runs/bench/NAME/<date>_<time>."""
    folder = Path(output or f"runs/bench/{name}/{time.strftime('%Y-%m-%d_%H-%M-%S')}").absolute()
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def machine_facts() -> dict:
    """What a figure needs beside it to be compared: CPU, cores, memory, load, date, commit, packages."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": round(total_ram() / GIB, 1),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "onestop": git_state(),
        "packages": package_versions(),
    }


def cell(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 10 else f"{value:.1f}"
    return str(value)


def two_decimals(value) -> str:
    """A cell with two decimals for a float: what the comparison benchmarks (trainers, agents, estimate) show."""
    if value is None:
        return "-"
    return f"{value:.2f}" if isinstance(value, float) else str(value)


def markdown_table(rows: list[dict], format_cell: Callable = cell) -> str:
    header = "| " + " | ".join(rows[0]) + " |\n|" + "---|" * len(rows[0]) + "\n"
    return header + "".join("| " + " | ".join(format_cell(v) for v in row.values()) + " |\n" for row in rows)


def print_table(rows: list[dict], title: str, format_cell: Callable = cell) -> None:
    table = Table(title=title)
    for column, value in rows[0].items():
        table.add_column(column, justify="left" if isinstance(value, str) else "right", no_wrap=True)
    for row in rows:
        table.add_row(*(format_cell(value) for value in row.values()))
    Console(width=max(Console().width, 120)).print(table)


def run_row_in_child(entry: str, spec: dict, failure: str) -> dict:
    """Measure one benchmark row in a fresh process (its own peak memory, no state left from the last row):
    `entry` ("module:function") reads `spec` as JSON on stdin and prints `ROW {json}`; a child that fails
    stops the benchmark with `failure` and the child's last line."""
    module, function = entry.split(":")
    child = subprocess.run(
        [sys.executable, "-c", f"from {module} import {function}; {function}()"],
        input=json.dumps(spec),
        capture_output=True,
        text=True,
    )
    found = [line for line in child.stdout.splitlines() if line.startswith("ROW ")]
    if child.returncode or not found:
        tail = (child.stderr or child.stdout).strip().splitlines()[-1:] or ["no output"]
        raise OnestopError(f"{failure}: {tail[0][:300]}")
    return json.loads(found[-1][4:])


def write_results(out_dir: Path, stem: str, payload: dict, rows: list[dict], title: str, notes: str = "") -> None:
    """STEM.json (the payload and the machine), STEM.md (a table under a heading, then `notes`), and the
    table printed."""
    write_json(out_dir / f"{stem}.json", {**payload, "machine": machine_facts()})
    text = f"# {title}\n\n{markdown_table(rows)}" + (f"\n{notes.strip()}\n" if notes else "")
    write_text_atomic(out_dir / f"{stem}.md", text)
    print_table(rows, title)


# invoke bench.gpu: its table, its files, and its figures in docs/benchmarks.md.


def save_gpu_results(results: dict, out_dir: Path) -> None:
    """gpu.json and gpu.md of `invoke bench.gpu` (the parts so far), copied to $OUT on a lent machine."""
    write_json(out_dir / "gpu.json", results)
    write_text_atomic(out_dir / "gpu.md", gpu_table(results))
    if os.environ.get("OUT"):  # a lent machine's tool returns what is written under $OUT
        target = Path(os.environ["OUT"])
        target.mkdir(parents=True, exist_ok=True)
        shutil.copy2(out_dir / "gpu.json", target / "gpu.json")
        shutil.copy2(out_dir / "gpu.md", target / "gpu.md")


def _fmt(value, digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return str(value)


def part_outcome(part: dict) -> str:
    """One cell saying how a part ended and, for a test run or a deployment, what it showed."""
    if part["status"] == "skipped":
        return f"skipped: {part['reason']}"
    if part["status"] != "ok":
        return f"**{part['status']}** after {part.get('seconds', 0):.0f} s: {part.get('reason', '')}"
    if part["name"] == "pytest_gpu":
        counts: dict[str, int] = {}
        for case in part["tests"]:
            counts[case["outcome"]] = counts.get(case["outcome"], 0) + 1
        return "ok: " + (", ".join(f"{n} {outcome}" for outcome, n in sorted(counts.items())) or "no tests")
    if part["name"] == "lmdeploy":
        return (
            f"ok: answered in {part['chat s']:.2f} s ({_fmt(part['decode tok/s'])} tok/s decode), tool request "
            f"answered ({part['tool calls']} calls), started in {part['start s']:.0f} s"
        )
    return f"ok in {part['seconds']:.0f} s"


def gpu_table(results: dict) -> str:
    """The parts as a Markdown table: what ran, tokens/s, MFU, peak memory, outcome."""
    device = results.get("environment", {}).get("device", "?")
    lines = [
        f"bench.gpu {results['time']} on {device}" + (" (smoke run)" if results["smoke"] else ""),
        "",
        "| part | what | tok/s | MFU % | peak GiB | outcome |",
        "|---|---|---|---|---|---|",
    ]
    for part in results["parts"]:
        lines.append(
            f"| {part['name']} | {part['what']} | {_fmt(part.get('tok/s'), 0)} | {_fmt(part.get('MFU %'))} "
            f"| {_fmt(part.get('peak GiB'), 2)} | {part_outcome(part)} |"
        )
    summary = results.get("summary")
    if summary:
        lines += ["", f"onestop LoRA vs transformers Trainer + peft: {_fmt(summary['speedup_vs_hf'], 2)}x tokens/s"]
    return "\n".join(lines) + "\n"


GPU_TABLE_START = "<!-- bench.gpu table: invoke bench.gpu.report FILE rewrites it -->"
GPU_TABLE_END = "<!-- end of bench.gpu table -->"


def report_into_docs(result_file: str, docs: str | None = None) -> Path:
    """Replace the bench.gpu table of docs/benchmarks.md (between its markers) with the figures of a GPU run."""
    if not result_file:
        raise OnestopError("bench.gpu.report: name one gpu.json of invoke bench.gpu (or the folder holding it)")
    path = Path(result_file)
    if path.is_dir():
        path = path / "gpu.json"
    try:
        results = json.loads(path.read_text())
        parts = results["parts"]
    except (OSError, ValueError, KeyError, TypeError):
        raise OnestopError(f"bench.gpu.report {result_file}: expected the gpu.json of invoke bench.gpu") from None
    if results.get("smoke") or not results.get("environment", {}).get("cuda_available"):
        raise OnestopError(f"bench.gpu.report {result_file}: a CPU smoke run; the docs' table holds GPU runs only")
    target = Path(docs) if docs else PROJECT_ROOT / "docs" / "benchmarks.md"
    text = target.read_text()
    if GPU_TABLE_START not in text or GPU_TABLE_END not in text:
        raise OnestopError(f"bench.gpu.report: {target} has no bench.gpu table markers ({GPU_TABLE_START})")
    environment = results["environment"]
    versions = ", ".join(f"{n} {v}" for n, v in environment["packages"].items() if v)
    table = gpu_table({**results, "parts": parts})
    block = (
        f"{GPU_TABLE_START}\nMeasured {results['time']} on {environment['device']} ({versions}); "
        f"batch {results['workload']['batch']} x {results['workload']['seq_len']} tokens, "
        f"{results['workload']['steps']} steps, the first {results['workload']['warmup']} not timed.\n\n"
        + table.split("\n", 2)[2]
        + f"{GPU_TABLE_END}"
    )
    before, rest = text.split(GPU_TABLE_START, 1)
    after = rest.split(GPU_TABLE_END, 1)[1]
    write_text_atomic(target, before + block + after)
    print(f"bench.gpu.report: {len(parts)} parts from {path} written into {target}", flush=True)
    return target
