"""`invoke bench.startup`: how long a user waits before anything happens.

    invoke bench.startup                                 # 5 runs each; tiny and gemma3_270m first steps
    invoke bench.startup --runs 3 --models tiny

Each command runs as a fresh subprocess, as a user types it: `invoke --list` (target < 1 s),
`invoke train model=tiny --cfg job` (< 3 s), and `invoke train model=M hardware=cpu logger=none
trainer.max_steps=1 data.batch_size=2` timed to the end of its first optimizer step (the first progress
line, "step 1/1, ..., loss ...") and to its exit. The median of the runs is reported. The imports that cost the light
commands most are recorded (`python -X importtime`), so a slow `invoke --list` names the package that
made it slow.
"""

# Lazy imports: matplotlib (inside plot_startup).

import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from onestop.bench.output import results_dir, write_results
from onestop.core.errors import OnestopError
from onestop.core.files import save_figure_atomic
from onestop.core.paths import PROJECT_ROOT

TARGETS_S = {"invoke --list": 1.0, "invoke train model=tiny --cfg job": 3.0}
FIRST_STEP_MARK = b", loss "  # a log's first progress line comes once the first optimizer step has ended
# batch 2: the default batch of 8 at Gemma's 1,024-token limit is refused by the memory pre-flight on a laptop
FIRST_STEP_OVERRIDES = "hardware=cpu logger=none trainer.max_steps=1 data.batch_size=2"


def invoke_command(*words: str) -> list[str]:
    """`invoke WORDS` with this environment's invoke, on this checkout's tasks.py."""
    tasks = PROJECT_ROOT / "tasks.py"
    if not tasks.is_file():
        raise OnestopError(f"bench.startup times the command line of a checkout; {tasks} does not exist")
    return [str(Path(sys.executable).parent / "invoke"), "-r", str(PROJECT_ROOT), *words]


def timed(command: list[str], mark: bytes | None = None, timeout: float = 900.0) -> tuple[float, float | None]:
    """(seconds to exit, seconds until `mark` first appeared in its output or None) of one subprocess run."""
    started = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=PROJECT_ROOT)
    seen, tail, output = None, b"", bytearray()
    while chunk := os.read(process.stdout.fileno(), 1 << 16):
        if mark and seen is None and mark in tail + chunk:
            seen = time.perf_counter() - started
        tail = chunk[-len(mark) :] if mark else b""
        output += chunk[-4000:]
        if time.perf_counter() - started > timeout:
            process.kill()
            break
    process.wait()
    total = time.perf_counter() - started
    if process.returncode:
        last = " ".join(bytes(output[-600:]).decode(errors="replace").split())
        raise OnestopError(f"bench.startup: `{' '.join(command[3:])}` exited with {process.returncode}: {last}")
    return total, seen


def heaviest_imports(command: list[str], top: int = 8) -> list[dict]:
    """The top-level packages a command spends most import time on (`python -X importtime`), heaviest first."""
    runner = [sys.executable, "-X", "importtime", "-c", "from invoke.main import program; program.run()"]
    done = subprocess.run(
        runner + command[1:], capture_output=True, text=True, cwd=PROJECT_ROOT, env={**os.environ, "LC_ALL": "C"}
    )
    totals: dict[str, int] = {}
    for line in done.stderr.splitlines():
        if not line.startswith("import time:") or "|" not in line:
            continue
        _, cumulative, raw = line.removeprefix("import time:").split("|")
        name, cumulative = raw.strip(), cumulative.strip()
        if cumulative.isdigit() and not raw.startswith("  "):  # nested imports are indented further
            package = name.split(".")[0]
            totals[package] = totals.get(package, 0) + int(cumulative)
    heaviest = sorted(totals.items(), key=lambda item: -item[1])[:top]
    return [{"package": name, "ms": round(us / 1000, 1)} for name, us in heaviest]


def bench_startup(runs: int, models: list[str], output: str | None) -> dict:
    """Median seconds of each startup command over `runs` fresh processes, against its target."""
    if runs < 1:
        raise OnestopError(f"bench.startup --runs {runs}: expected 1 or more")
    out_dir = results_dir("startup", output)
    light = {
        "invoke --list": invoke_command("--list"),
        "invoke train model=tiny --cfg job": invoke_command("train", "model=tiny", "--cfg", "job"),
    }
    rows, samples = [], {}
    for name, command in light.items():
        print(f"bench.startup: {name} x{runs}", flush=True)
        seconds = [timed(command)[0] for _ in range(runs)]
        samples[name] = seconds
        rows.append(_row(name, seconds, TARGETS_S[name]))
    with tempfile.TemporaryDirectory(prefix="onestop-bench-startup-") as scratch:
        for model in models:
            name = f"invoke train model={model} {FIRST_STEP_OVERRIDES}"
            print(f"bench.startup: {name} x{runs}", flush=True)
            firsts, exits = [], []
            for index in range(runs):
                words = name.split()[1:] + [f"hydra.run.dir={Path(scratch) / f'{model}-{index}'}"]
                total, first = timed(invoke_command(*words), FIRST_STEP_MARK)
                if first is None:
                    raise OnestopError(f"bench.startup: `{name}` never showed its first step's loss")
                firsts.append(first)
                exits.append(total)
            samples[f"{name} (first step)"], samples[f"{name} (exit)"] = firsts, exits
            rows.append(_row(f"{name}: first step", firsts, None))
            rows.append(_row(f"{name}: exit", exits, None))
    imports = {name: heaviest_imports(command) for name, command in light.items()}
    payload = {"runs": runs, "rows": rows, "samples_s": samples, "heaviest_imports": imports}
    notes = "\n".join(
        f"Heaviest imports of `{name}`: " + ", ".join(f"{i['package']} {i['ms']:.0f} ms" for i in found)
        for name, found in imports.items()
    )
    write_results(out_dir, "startup", payload, rows, f"Startup times, median of {runs} runs", notes)
    plot_startup(out_dir / "startup.png", rows)
    print(notes, flush=True)
    print(f"Results: {out_dir}", flush=True)
    return payload


def _row(name: str, seconds: list[float], target: float | None) -> dict:
    median = statistics.median(seconds)
    return {
        "command": name,
        "median s": median,
        "min s": min(seconds),
        "max s": max(seconds),
        "target s": target,
        "met": "-" if target is None else ("yes" if median < target else "NO"),
    }


def plot_startup(path: Path, rows: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(9, 0.6 * len(rows) + 1.2))
    labels = [r["command"].replace(f" {FIRST_STEP_OVERRIDES}", " (1 step)") for r in rows]
    positions = range(len(rows))
    axes.barh(positions, [r["median s"] for r in rows], color="#4c72b0")
    axes.errorbar(
        [r["median s"] for r in rows], positions, color="black", fmt="none", capsize=3,
        xerr=[[r["median s"] - r["min s"] for r in rows], [r["max s"] - r["median s"] for r in rows]],
    )  # fmt: skip
    for index, row in enumerate(rows):
        if row["target s"]:
            axes.plot([row["target s"]] * 2, [index - 0.4, index + 0.4], color="#c44e52", linewidth=2)
    axes.set_yticks(list(positions), labels, fontsize=8)
    axes.invert_yaxis()
    axes.set_xscale("log")
    axes.set_xlabel("seconds (median, min-max; red: target)")
    figure.tight_layout()
    save_figure_atomic(figure, path)
    plt.close(figure)
