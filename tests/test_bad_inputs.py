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
from typing import get_args

import pytest
import torch
import yaml
from conftest import ASSETS, TINY_DATA, run_invoke
from invoke.exceptions import Exit

from onestop import cli
from onestop.config.compose import CHOICES, ConfigError
from onestop.config.compose import compose as compose_config
from onestop.core.paths import PROJECT_ROOT
from onestop.methods import method_from_config
from onestop.models import load_causal_lm

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
    left = [name for name in case.get("absent") or [] if (folder / name).exists()]
    if left:
        return f"refused, but left {', '.join(left)} behind in {folder}"
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


def refusal(task: str, *args: str) -> str:
    """The one error line `task` ends with, run in-process through the command line's error handling."""
    with pytest.raises(Exit) as stopped:
        cli.run_stage(task, list(args))
    assert stopped.value.code == 2
    return stopped.value.message


def test_composition_accepts_exactly_lightnings_precisions():
    """The list `hardware.precision` is checked against at composition (without importing Lightning) is the
    one lightning.Trainer takes, plus onestop's own `auto`."""
    from lightning.fabric.plugins.precision.precision import _PRECISION_INPUT

    lightnings = {str(value) for literal in get_args(_PRECISION_INPUT) for value in get_args(literal)}
    assert set(CHOICES["hardware.precision"]) == lightnings | {"auto"}


def test_one_target_module_given_alone_is_adapted_as_a_list_of_one():
    cfg = compose_config("train", ["model=tiny", "method.target_modules=q_proj"])
    assert list(cfg.method.target_modules) == ["q_proj"]
    adapted = method_from_config(cfg.method)(load_causal_lm(cfg.model))
    adapted_layers = {name.split(".lora_A")[0] for name, _ in adapted.named_parameters() if ".lora_A." in name}
    assert adapted_layers and all(name.endswith("self_attn.q_proj") for name in adapted_layers), adapted_layers
    several = compose_config("train", ["model=tiny", "method.target_modules=q_proj,v_proj"])
    assert list(several.method.target_modules) == ["q_proj", "v_proj"]


def test_a_missing_run_is_reported_before_a_busy_port(tmp_path):
    missing = tmp_path / "missing"
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        message = refusal("deploy", f"run_dir={missing}", f"port={taken.getsockname()[1]}")
    assert message.startswith(f"onestop deploy: error: config key 'run_dir': {missing} is not a training run")


@pytest.mark.slow  # the shared tiny tool model's deployment (conftest.py), trained once per session
def test_a_model_the_endpoint_does_not_serve_is_refused_naming_what_it_serves(tool_deployment, tmp_path):
    """Against the real gateway (which answers an unknown model with 404): refused before the first question."""
    (tmp_path / "qa.jsonl").write_text('{"question": "Name a colour.", "answer": "Blue."}\n')
    message = refusal(
        "eval",
        *TINY_MODEL,
        f"endpoint={tool_deployment.base_url}",
        "endpoint_model=no-such-model",
        "eval=qa",
        f"eval.path={tmp_path / 'qa.jsonl'}",
        f"hydra.run.dir={tmp_path / 'out'}",
    )
    assert message == (
        f"onestop eval: error: endpoint_model=no-such-model: {tool_deployment.base_url} does not serve it; "
        f"it serves {tool_deployment.name}"
    )
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("command", [["models", "--json"], ["train", "--cfg", "job"]])
def test_output_into_a_reader_that_has_gone_ends_quietly(command):
    """`invoke models --json | head -1`: the reader closes the pipe before the task writes; the task ends
    without a BrokenPipeError traceback."""
    reader, writer = os.pipe()
    os.close(reader)  # gone before the first byte, as `head` is once it has its line
    try:
        done = subprocess.run(
            [str(Path(sys.executable).parent / "invoke"), *command],
            stdout=writer,
            stderr=subprocess.PIPE,
            text=True,
            cwd=PROJECT_ROOT,
            timeout=300,
        )
    finally:
        os.close(writer)
    assert done.returncode == 1 and done.stderr == "", done.stderr[-2000:]


def test_one_target_module_written_alone_in_a_recipe_names_the_recipe_line_and_the_list_it_needs(tmp_path):
    recipe = tmp_path / "one_target.yaml"
    recipe.write_text(
        "defaults:\n  - train\n  - override model: tiny\n  - override method: lora\n  - _self_\n"
        "method:\n  target_modules: q_proj\n"
    )
    with pytest.raises(ConfigError) as error:
        compose_config("train", [f"recipe={recipe}"])
    assert str(error.value) == (
        f"{recipe}:7: config key 'method.target_modules': expected a list, e.g. target_modules: [a, b]"
    )
