"""Where a benchmark writes and what it records beside its figures: the machine, the date, the commit.

out_dir = results_dir("serve", output)        # runs/bench/serve/<TIME>/ unless --output says otherwise
write_results(out_dir, "serve", {"rows": rows}, rows, "Serving throughput")
"""

import json
import os
import platform
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
