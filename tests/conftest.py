import functools
import json
import os
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import pytest
from colour_squares import write_colour_set

from onestop.config.compose import compose as compose_config
from onestop.core.paths import PROJECT_ROOT

pytest_plugins = ["ui_browser"]  # the web UI's browser, app and trained-run fixtures (tests/ui_browser.py)

ASSETS = Path(__file__).parent / "assets"
TINY_DATA = ASSETS / "alpaca_small.jsonl"
# What every tiny end-to-end run shares: the real config, shrunk to the tiny model, CPU, a few steps.
TINY_DEFAULTS = ["model=tiny", "hardware=cpu", "data=alpaca", f"data.path={TINY_DATA}", "data.batch_size=4"]
# The default batches (padding-free, never packed for sft): these runs count steps and checkpoints over the
# 18 short examples, which packing would fit into one batch per epoch.
TINY = TINY_DEFAULTS


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    """No test may reach a hub or W&B's servers."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)


def compose(*overrides: str, run_dir: Path | None = None):
    extra = [f"hydra.run.dir={run_dir}"] if run_dir else []
    return compose_config("train", [*overrides, *extra])


@contextmanager
def saved_tensor_bytes(model):
    """Bytes of each storage autograd saves for the backward pass inside the block, the model's parameters
    excepted: what the estimate's probe predicts as activations (and weight copies)."""
    import torch

    parameters = {p.data_ptr() for p in model.parameters()}
    saved: dict[int, int] = {}

    def pack(tensor):
        if tensor.data_ptr() not in parameters:
            saved[tensor.untyped_storage().data_ptr()] = tensor.untyped_storage().nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        yield saved


def run_invoke(
    *args: str,
    cwd: Path = PROJECT_ROOT,
    env: dict | None = None,
    unset: tuple[str, ...] = (),
    timeout: int = 600,
    input_text: str | None = None,
):
    """The real `invoke` console script of this environment, as a user types it; `unset` drops variables,
    `input_text` is typed on its standard input."""
    invoke = Path(sys.executable).parent / "invoke"
    return subprocess.run(
        [str(invoke), *args],
        input=input_text,
        cwd=cwd,
        env={name: value for name, value in {**os.environ, **(env or {})}.items() if name not in unset},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


DOCS = ASSETS / "docs"


def tiny_tools():
    """The real calculator and document search (over tests/assets/docs), as the tiny tool model knows them."""
    from onestop.agents import builtin
    from onestop.agents.tools import tool_from_function

    return [
        tool_from_function(builtin.calculator),
        tool_from_function(functools.partial(builtin.search_documents, folder=str(DOCS))),
    ]


def _call(call_id: str, name: str, arguments: dict) -> dict:
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}


def _tool_turns(tools, turns: list[tuple[str, dict]]) -> list[dict]:
    """Assistant calls followed by the real results the tools give (errors included)."""
    from onestop.agents.tools import run_tool_call

    messages = []
    for index, (name, arguments) in enumerate(turns, start=1):
        result = run_tool_call(tools, name, arguments)
        messages += [
            {"role": "assistant", "content": "", "tool_calls": [_call(f"call_{index}", name, arguments)]},
            {"role": "tool", "tool_call_id": f"call_{index}", "content": result.content},
        ]
    return messages


def tool_conversations() -> list[dict]:
    """What the tiny tool model memorises: calls, a call of a tool it is not offered, a call that fails, one
    with an argument off the schema, a chain of calls that outlasts a small step limit, and a plain answer."""
    tools = tiny_tools()
    schemas = [tool.openai_schema() for tool in tools]

    def conversation(question: str, turns: list[tuple[str, dict]], answer: str) -> dict:
        messages = [{"role": "user", "content": question}, *_tool_turns(tools, turns)]
        return {"messages": [*messages, {"role": "assistant", "content": answer}], "tools": schemas}

    return [
        conversation("What is 17 times 23?", [("calculator", {"expression": "17 * 23"})], "17 * 23 = 391."),
        conversation("Compute 12 plus 30.", [("calculator", {"expression": "12 + 30"})], "12 + 30 = 42."),
        conversation(
            "How many vacation days do we get?",
            [("search_documents", {"query": "vacation days"})],
            "25 vacation days a year (handbook.md:3).",
        ),
        conversation("What is the weather in Oslo?", [("weather", {"city": "Oslo"})], "I cannot check the weather."),
        conversation("Divide 10 by 0.", [("calculator", {"expression": "10 / 0"})], "That cannot be computed."),
        conversation("Add one and one.", [("calculator", {"expr": "1 + 1"})], "Two."),
        conversation(
            "Count up from one.",
            [("calculator", {"expression": "1 + 1"}), ("calculator", {"expression": "2 + 1"})],
            "Three.",
        ),
        conversation("Hello!", [], "Hello! How can I help?"),
    ]


@pytest.fixture(scope="session")
def converted_gemma() -> Path:
    """The embedded Gemma-3-270M as safetensors, converted from its GGUF once for the session, in the session's
    cache (`~/.cache/onestop` unless ONESTOP_HOME says otherwise), where the in-process Gemma tests load it too."""
    from onestop.models.embedded import embedded_gemma_dir

    return embedded_gemma_dir()


@pytest.fixture
def home_with_gemma(tmp_path, converted_gemma) -> Path:
    """A fresh ONESTOP_HOME, `tmp_path/home`, holding nothing but a link to the converted Gemma: commands run in
    it load `model=gemma3_270m` in seconds instead of converting the GGUF again (about a minute)."""
    home = tmp_path / "home"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("ONESTOP_HOME", str(home))
        link_converted_gemma(converted_gemma)
    return home


@pytest.fixture
def gemma_in_home(converted_gemma) -> None:
    """The converted Gemma reachable from the ONESTOP_HOME in force (a module's own home, say), by a link."""
    link_converted_gemma(converted_gemma)


def link_converted_gemma(converted: Path) -> None:
    from onestop.models.embedded import converted_gemma_dir

    link = converted_gemma_dir()
    if not (link.exists() or link.is_symlink()):  # a home that converted its own copy keeps it
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(converted, target_is_directory=True)


@pytest.fixture(scope="session")
def tool_run(tmp_path_factory):
    """A tiny full fine-tune that has memorised `tool_conversations`: a real model that really emits calls."""
    from onestop.training.train import train

    root = tmp_path_factory.mktemp("tool-model")
    data = root / "tools.jsonl"
    data.write_text("".join(json.dumps(c) + "\n" for c in tool_conversations()))
    overrides = ["model=tiny", "hardware=cpu", "logger=none", "data=messages", f"data.path={data}"]
    overrides += ["data.val_ratio=0", "data.max_seq_len=1024", "data.batch_size=8", "data.packing=false"]
    overrides += ["method=full", "optim.lr=3e-3", "scheduler.warmup_ratio=0", "trainer.max_steps=160"]
    train(compose(*overrides, "trainer.max_epochs=1000", run_dir=root / "run"))
    return root / "run"


@pytest.fixture(scope="session")
def tool_deployment(tool_run, tmp_path_factory):
    """The tool model behind the real gateway and `transformers serve`, shared by the tool and agent tests.

    Its state file lives in a home of its own, set only while it starts and stops: the rest of the session
    keeps its environment (a demo that serves a run named like this one must not find it running).
    """
    from onestop.deploy.service import start, stop

    home = tmp_path_factory.mktemp("tool-home")

    @contextmanager
    def own_home():
        with pytest.MonkeyPatch.context() as patch:
            patch.setenv("ONESTOP_HOME", str(home))
            patch.delenv("ONESTOP_API_KEY", raising=False)
            yield

    with own_home():
        overrides = [f"run_dir={tool_run}", "model=tiny", "deploy=transformers", "port=0", "name=tool-model"]
        overrides += ["deploy.log_conversations=true"]  # home/deploy/tool-model.conversations.jsonl
        deployment = start(compose_config("deploy", overrides))
    try:
        yield deployment
    finally:
        with own_home():
            stop(deployment.name)


# The tiny vision-language LoRA run on generated colour squares (tests/colour_squares.py), shared by the
# training and serving tests: one training per session.
VL_RUN = ["model=tiny_vl", "hardware=cpu", "logger=none", "data=messages", "data.batch_size=6", "data.val_ratio=0.125"]


@pytest.fixture(scope="session")
def colour_set(tmp_path_factory) -> Path:
    return write_colour_set(tmp_path_factory.mktemp("colours"), 48)


@pytest.fixture(scope="session")
def vl_lora_run(colour_set, tmp_path_factory) -> Path:
    """`invoke train` of a LoRA adapter on the colour squares: it names the colour of squares it never saw."""
    run_dir = tmp_path_factory.mktemp("vl") / "run"
    result = run_invoke(
        "train", *VL_RUN, f"data.path={colour_set}", "method=lora", "optim.lr=1e-2", "trainer.max_steps=40",
        "trainer.max_epochs=100", f"hydra.run.dir={run_dir}",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "padding-free batches: off, model=tiny_vl (llava) reads images" in result.stdout
    return run_dir
