"""Every bad input of tests/bad_inputs/cases.yaml is refused with its one-line message, status 2, no traceback.

Cases run in-process through the command line's own error handling (`cli.run_stage`), so most cost a
config composition or a tokenizer load; those marked `subprocess` run the real `invoke` command.
"""

import errno
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import yaml
from conftest import ASSETS, TINY_DATA, run_invoke
from invoke.exceptions import Exit

from onestop import cli
from onestop.core.paths import PROJECT_ROOT

CASES = yaml.safe_load((Path(__file__).parent / "bad_inputs" / "cases.yaml").read_text())
TINY_MODEL = ["model=tiny", "hardware=cpu", "logger=none"]
HUGE_LINE_BYTES = 300 << 20


@dataclass
class Outcome:
    code: int
    message: str  # the error line(s): Exit's message in-process, the end of stderr from a subprocess
    stderr: str


@pytest.fixture(scope="module")
def huge_line(tmp_path_factory) -> Path:
    """A JSONL file that is one line of 300 MB: a record whose text never ends (made here, never committed)."""
    path = tmp_path_factory.mktemp("huge") / "data.jsonl"
    chunk = b"a" * (16 << 20)
    with open(path, "wb") as handle:
        handle.write(b'{"instruction": "')
        for _ in range(HUGE_LINE_BYTES // len(chunk)):
            handle.write(chunk)
    return path


def tool_calling_dataset(folder: Path, patch, huge_line: Path) -> None:
    """Valid OpenAI-format tool conversations whose four tool schemas alone outgrow the tiny model's 256 tokens."""
    properties = {
        name: {"type": "string", "description": f"The {name} to use, written out in full as the user said it."}
        for name in ("city", "country", "unit", "language", "date", "timezone")
    }
    tools = [
        {
            "type": "function",
            "function": {
                "name": name,
                "description": f"Look up the {name.replace('_', ' ')} for a place and return it as a short sentence.",
                "parameters": {"type": "object", "properties": properties, "required": ["city"]},
            },
        }
        for name in ("current_weather", "local_time", "population_estimate", "exchange_rate")
    ]
    call = {"type": "function", "function": {"name": "local_time", "arguments": {"city": "Oslo"}}}
    lines = []
    for city in ("Oslo", "Lima", "Pune", "Kyiv", "Rome", "Baku"):
        messages = [
            {"role": "user", "content": f"What time is it in {city}?"},
            {"role": "assistant", "content": "", "tool_calls": [call]},
            {"role": "tool", "content": "09:30"},
            {"role": "assistant", "content": f"It is 09:30 in {city}."},
        ]
        lines.append(json.dumps({"messages": messages, "tools": tools}))
    (folder / "tools.jsonl").write_text("\n".join(lines) + "\n")


def lightning_checkpoint() -> dict:
    return {"pytorch-lightning_version": "2.6", "state_dict": {"w": torch.zeros(64)}, "loops": {}, "global_step": 3}


def truncated_checkpoint(folder: Path, patch, huge_line: Path) -> None:
    torch.save(lightning_checkpoint(), folder / "whole.ckpt")
    whole = (folder / "whole.ckpt").read_bytes()
    (folder / "cut.ckpt").write_bytes(whole[: len(whole) // 2])  # as a copy interrupted halfway


def state_dict_checkpoint(folder: Path, patch, huge_line: Path) -> None:
    torch.save({"model.embed_tokens.weight": torch.zeros(4, 4)}, folder / "weights.ckpt")


def code_checkpoint(folder: Path, patch, huge_line: Path) -> None:
    torch.save({**lightning_checkpoint(), "hook": os.system}, folder / "evil.ckpt")


def other_model_checkpoint(folder: Path, patch, huge_line: Path) -> None:
    """A whole training checkpoint, but of a full fine-tune of another model: none of this run's LoRA weights."""
    checkpoint = {**lightning_checkpoint(), "epoch": 0, "callbacks": {}, "optimizer_states": [], "lr_schedulers": []}
    checkpoint["state_dict"] = {"model.transformer.h.0.attn.c_attn.weight": torch.zeros(4, 4)}
    torch.save(checkpoint, folder / "other.ckpt")
    shutil.copy(TINY_DATA, folder / "data.jsonl")


def huge_csv_cell(folder: Path, patch, huge_line: Path) -> None:
    (folder / "data.csv").write_text(f"instruction,output\nSay it.,{'a' * 200_000}\n")


def read_only_run_dir(folder: Path, patch, huge_line: Path) -> None:
    """The run directory on a read-only mount, as os.open reports it (chmod would not stop root, who runs CI)."""
    run = folder / "run"
    run.mkdir()
    real_open = os.open

    def read_only(path, flags, *args, **kwargs):
        if str(path).startswith(str(run)) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
        return real_open(path, flags, *args, **kwargs)

    patch.setattr(os, "open", read_only)


def held_run_dir(folder: Path, patch, huge_line: Path) -> None:
    """A run directory whose lock names a live process (pid 1 never ends)."""
    (folder / "run").mkdir()
    (folder / "run" / "run.lock").write_text(f"1 {socket.gethostname()}\n")


def huge_line_file(folder: Path, patch, huge_line: Path) -> None:
    (folder / "data.jsonl").symlink_to(huge_line)


def hub_cache_in_home(folder: Path, patch, huge_line: Path) -> dict:
    """A hub model cached where huggingface_hub looks by default (~/.cache/huggingface), and data to train on:
    with an empty HF_HOME read as a value, the model would be looked for under ./hub and not found."""
    home = folder / "home"
    repo = home / ".cache" / "huggingface" / "hub" / "models--someone--tiny-cached"
    revision = "0" * 40
    (repo / "snapshots").mkdir(parents=True)
    (repo / "snapshots" / revision).symlink_to(ASSETS / "tiny-qwen2")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(revision)
    shutil.copy(TINY_DATA, folder / "data.jsonl")
    return {"HOME": str(home)}


MAKERS = {
    maker.__name__: maker
    for maker in (
        tool_calling_dataset,
        truncated_checkpoint,
        state_dict_checkpoint,
        code_checkpoint,
        other_model_checkpoint,
        huge_csv_cell,
        read_only_run_dir,
        held_run_dir,
        hub_cache_in_home,
    )
}
MAKERS["huge_line"] = huge_line_file


def arguments(case: dict, folder: Path) -> list[str]:
    expanded = []
    for arg in case.get("args", []):
        expanded += TINY_MODEL if arg == "{tiny}" else [arg.replace("{dir}", str(folder))]
    return expanded


def write_files(case: dict, folder: Path) -> None:
    for name, content in (case.get("files") or {}).items():
        if isinstance(content, dict):
            (folder / name).write_bytes(content["text"].encode(content["encoding"]))
        else:
            (folder / name).write_text(content)


def run_case(case: dict, folder: Path, patch, capsys, huge_line: Path) -> Outcome:
    write_files(case, folder)
    env = dict(case.get("env") or {})
    if case.get("make"):
        env |= MAKERS[case["make"]](folder, patch, huge_line) or {}
    task, args = case.get("task", "train"), arguments(case, folder)
    if case.get("subprocess"):
        done = run_invoke(task, *args, env=env, timeout=300)
        last_line = done.stderr.strip().splitlines()[-1] if done.stderr.strip() else ""
        return Outcome(done.returncode, last_line, done.stderr)
    for name, value in env.items():
        patch.setenv(name, value)
    capsys.readouterr()
    try:
        cli.run_stage(task, args)
    except Exit as stopped:
        return Outcome(stopped.code, stopped.message, capsys.readouterr().err)
    return Outcome(0, "", capsys.readouterr().err)


def problem_with(case: dict, outcome: Outcome, folder: Path) -> str | None:
    """What is wrong with how the case ended, or None."""
    if case["expect"] is None:
        return None if outcome.code == 0 else f"expected success, got status {outcome.code}: {outcome.stderr[-1500:]}"
    task = case.get("task", "train")
    expected = case["expect"].replace("{dir}", str(folder))
    lines = outcome.message.splitlines()
    if outcome.code != 2:
        return f"status {outcome.code}, expected 2: {outcome.message or outcome.stderr[-1500:]}"
    if "Traceback" in outcome.stderr:
        return f"printed a traceback: {outcome.stderr[-1500:]}"
    if not lines or not lines[0].startswith(f"onestop {task}: error: ") or len(lines) > 2:
        return f"not one error line (plus a hint): {outcome.message!r}"
    if expected not in lines[0]:
        return f"expected {expected!r} in {lines[0]!r}"
    return None


@pytest.mark.slow
def test_every_bad_input_is_refused_with_its_message(tmp_path, capsys, huge_line):
    failures, seconds = [], {}
    for index, case in enumerate(CASES):
        folder = tmp_path / f"case{index:02d}"
        folder.mkdir()
        started = time.perf_counter()
        with pytest.MonkeyPatch.context() as patch:
            outcome = run_case(case, folder, patch, capsys, huge_line)
        seconds[case["name"]] = time.perf_counter() - started
        problem = problem_with(case, outcome, folder)
        if problem:
            failures.append(f"{case['name']}: {problem}")
    slowest = sorted(seconds.items(), key=lambda item: -item[1])[:5]
    print("slowest cases:", ", ".join(f"{name} {s:.1f} s" for name, s in slowest))
    assert not failures, "\n".join(failures)
    assert len(CASES) >= 30


def test_a_huge_line_is_refused_without_reading_the_file_whole(huge_line):
    """The reader stops at the 64 MiB line limit: the process never holds the 300 MB line."""
    # VmHWM, not ru_maxrss: Linux carries the parent's peak (this pytest process, torch loaded) across exec.
    code = (
        "import re, sys\n"
        "from onestop.core.errors import OnestopError\n"
        "from onestop.data.records import read_records\n"
        "try:\n"
        "    read_records(sys.argv[1])\n"
        "except OnestopError as error:\n"
        "    print(error)\n"
        "print(re.search(r'VmHWM:\\s+(\\d+) kB', open('/proc/self/status').read())[1])\n"
    )
    done = subprocess.run([sys.executable, "-c", code, str(huge_line)], capture_output=True, text=True, timeout=120)
    message, peak_kib = done.stdout.strip().splitlines()
    assert message == f"{huge_line}:1: a line longer than 64 MiB; expected one JSON record per line (JSON Lines)"
    assert int(peak_kib) * 1024 < HUGE_LINE_BYTES / 2, f"peak memory {int(peak_kib) >> 10} MiB"


def test_the_docs_list_every_bad_input():
    listed = (PROJECT_ROOT / "docs" / "reliability.md").read_text()
    assert [case["name"] for case in CASES if f"| {case['name'].split(',')[0]}" not in listed] == []
