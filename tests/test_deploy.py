"""Deployment: the real gateway and `transformers serve` on 127.0.0.1, called with the openai SDK."""

import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import httpx
import pytest
import torch
from conftest import ASSETS, TINY, compose, run_invoke
from omegaconf import OmegaConf
from openai import BadRequestError, NotFoundError, OpenAI

from onestop.config.compose import compose as compose_config
from onestop.core.errors import OnestopError
from onestop.data.tokenize import IGNORE_INDEX, tokenize_conversation
from onestop.deploy.lmdeploy import env_dir, installed, lmdeploy_command, setup_commands, write_chat_template
from onestop.deploy.prompts import PromptMeter
from onestop.deploy.service import serving
from onestop.evaluation.heldout import generate_answers
from onestop.evaluation.run import evaluate
from onestop.models import load_causal_lm, load_tokenizer, resolve_model_path
from onestop.models.templates import bundled_template
from onestop.training.train import train

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    path = tmp_path_factory.mktemp("home")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("ONESTOP_HOME", str(path))
        patch.setenv("HF_HUB_OFFLINE", "1")
        patch.delenv("ONESTOP_API_KEY", raising=False)
        yield path


@pytest.fixture(scope="module")
def learned_run(tmp_path_factory, home):
    """A tiny full fine-tune that has memorised its answers, so greedy replies are real words."""
    run_dir = tmp_path_factory.mktemp("deploy") / "learned"
    overrides = ["method=full", "optim.lr=3e-3", "trainer.max_steps=150", "trainer.max_epochs=1000"]
    train(compose(*TINY, "logger=none", "data.val_ratio=0", "scheduler.warmup_ratio=0", *overrides, run_dir=run_dir))
    return run_dir


@pytest.fixture(scope="module")
def served(learned_run, home):
    cfg = compose_config("deploy", [f"run_dir={learned_run}", "model=tiny", "deploy=transformers", "port=0"])
    with serving(cfg) as deployment:
        yield deployment


@pytest.fixture
def client(served):
    return OpenAI(base_url=served.base_url, api_key="-", max_retries=0)


def test_chat_answers_like_in_process_generation(served, client, learned_run):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(learned_run / "model")
    tokenizer = AutoTokenizer.from_pretrained(learned_run / "model")
    prompts = [QUESTION, [{"role": "user", "content": "Add two and three."}]]
    expected = generate_answers(model, tokenizer, prompts, max_new_tokens=16)
    got = [
        client.chat.completions.create(model=served.name, messages=p, max_tokens=16, temperature=0)
        .choices[0]
        .message.content
        for p in prompts
    ]
    assert [g.strip() for g in got] == expected and all(expected), (got, expected)


def test_streaming_chat_gives_the_same_text(served, client):
    plain = client.chat.completions.create(model=served.name, messages=QUESTION, max_tokens=12, temperature=0)
    stream = client.chat.completions.create(
        model=served.name, messages=QUESTION, max_tokens=12, temperature=0, stream=True
    )
    chunks = [c.choices[0].delta.content or "" for c in stream if c.choices]
    assert len(chunks) > 1 and "".join(chunks) == plain.choices[0].message.content


def test_completions_and_models(served, client):
    completion = client.completions.create(model=served.name, prompt="The capital of France is", max_tokens=4)
    assert completion.choices[0].text and completion.model == served.name
    assert [m.id for m in client.models.list().data] == [served.name]


def test_malformed_requests_get_4xx_and_the_server_keeps_serving(served, client):
    raw = httpx.post(f"{served.base_url}/chat/completions", content=b"{not json", timeout=30)
    assert raw.status_code == 400 and "not valid JSON" in raw.json()["error"]["message"]
    with pytest.raises(BadRequestError, match="messages"):
        client.chat.completions.create(model=served.name, messages=[], max_tokens=4)
    with pytest.raises(BadRequestError, match="max_tokens"):
        client.chat.completions.create(model=served.name, messages=QUESTION, max_tokens=0)
    with pytest.raises(BadRequestError, match="max_tokens"):
        client.chat.completions.create(model=served.name, messages=QUESTION, max_tokens=-3)
    with pytest.raises(NotFoundError, match="not served here"):
        client.chat.completions.create(model="gpt-nope", messages=QUESTION, max_tokens=4)
    missing = httpx.post(f"{served.base_url}/chat/completions", json={"model": served.name}, timeout=30)
    assert missing.status_code == 400
    with pytest.raises(BadRequestError, match=r"messages\[0\].content"):
        client.chat.completions.create(model=served.name, messages=[{"role": "user", "content": {"a": 1}}])
    with pytest.raises(BadRequestError, match="max_tokens_limit"):  # the backend would generate for days
        client.chat.completions.create(model=served.name, messages=QUESTION, max_tokens=1_000_000_000)
    with pytest.raises(BadRequestError, match="maximum context length is 2048 tokens"):
        client.chat.completions.create(model=served.name, messages=[{"role": "user", "content": "hi " * 5000}])
    again = client.chat.completions.create(model=served.name, messages=QUESTION, max_tokens=4, stop=[])
    assert again.choices[0].message.content is not None


def test_the_gateway_counts_prompt_tokens_as_the_backend_does(served, client):
    state = json.loads(served.state_file.read_text())
    meter = PromptMeter.load(state["tokenizer_dir"], state["context_length"])
    reply = client.chat.completions.create(model=served.name, messages=CONVERSATION[:-1], max_tokens=1)
    (rendered,) = meter.prompts("chat", {"messages": CONVERSATION[:-1]})
    assert meter.count(rendered, state["context_length"]) == reply.usage.prompt_tokens


def test_a_client_gone_mid_stream_frees_its_slot(served, client):
    from transformers import GenerationConfig

    state = json.loads(served.state_file.read_text())
    eos = GenerationConfig.from_pretrained(state["model_dir"]).eos_token_id
    never_stops = {str(i): -100 for i in (eos if isinstance(eos, list) else [eos])}
    body = {"model": served.name, "messages": QUESTION, "max_tokens": 2000, "stream": True, "logit_bias": never_stops}
    health = served.base_url.removesuffix("/v1") + "/health"
    with httpx.stream("POST", f"{served.base_url}/chat/completions", json=body, timeout=60) as reply:
        lines = reply.iter_lines()  # kept: a dropped iterator closes the connection
        assert reply.status_code == 200 and next(lines).startswith("data: {")
        assert httpx.get(health, timeout=30).json()["load"]["in_flight"] == 1
    deadline = time.monotonic() + 120  # only stops a broken gateway from hanging the suite
    while httpx.get(health, timeout=30).json()["load"]["in_flight"]:
        assert time.monotonic() < deadline, "the slot of a client that left was never freed"
        time.sleep(0.05)
    assert httpx.get(health, timeout=30).json()["load"]["disconnected"] >= 1
    again = client.chat.completions.create(model=served.name, messages=QUESTION, max_tokens=4)
    assert again.choices[0].finish_reason in ("stop", "length")


def test_evaluation_through_the_deployment_matches_in_process(served, learned_run, tmp_path):
    suite = ["model=tiny", "hardware=cpu", "logger=none", "eval=qa", f"eval.path={ASSETS / 'alpaca_small.jsonl'}"]
    local = evaluate(compose_config("eval", [*suite, f"run_dir={learned_run}", f"hydra.run.dir={tmp_path / 'a'}"]))
    remote = evaluate(
        compose_config("eval", [*suite, f"endpoint={served.base_url}", f"hydra.run.dir={tmp_path / 'b'}"])
    )
    assert remote.flat() == pytest.approx(local.flat()) and local.flat()["qa/token_f1"] > 0.3


@pytest.mark.slow
def test_cli_deploy_with_an_api_key_status_chat_and_stop(learned_run, home, tmp_path):
    env = {"ONESTOP_API_KEY": "s3cret", "ONESTOP_HOME": str(home)}
    started = run_invoke("deploy", f"run_dir={learned_run}", "model=tiny", "name=keyed", "port=0", env=env)
    assert started.returncode == 0, started.stderr[-2000:]
    try:
        assert "Serving keyed at http://127.0.0.1:" in started.stdout
        state = json.loads((home / "deploy" / "keyed.json").read_text())
        assert "s3cret" not in json.dumps(state)
        with pytest.raises(urllib.request.HTTPError) as refused:
            urllib.request.urlopen(f"{state['base_url']}/models", timeout=10)
        assert refused.value.code == 401
        keyed = OpenAI(base_url=state["base_url"], api_key="s3cret", max_retries=0)
        assert [m.id for m in keyed.models.list().data] == ["keyed"]
        status = run_invoke("deploy.status", env=env)
        assert "keyed" in status.stdout and "ok" in status.stdout
        answer = run_invoke("chat", "name=keyed", "prompt=What is the capital of France?", "max_tokens=8", env=env)
        assert answer.returncode == 0 and answer.stdout.strip(), answer.stderr[-2000:]
        again = run_invoke("deploy", f"run_dir={learned_run}", "model=tiny", "name=keyed", "port=0", env=env)
        assert again.returncode == 2 and "already served" in again.stderr
    finally:
        stopped = run_invoke("deploy.stop", "name=keyed", env=env)
    assert stopped.returncode == 0 and "Stopped: keyed" in stopped.stdout
    assert not (home / "deploy" / "keyed.json").exists()
    assert "keyed" not in run_invoke("deploy.status", env=env).stdout


def test_chat_without_a_deployment_fails_in_one_line(home):
    result = run_invoke("chat", "prompt=hi", env={"ONESTOP_HOME": str(home / "empty")})
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("onestop chat: error: no deployment is running")


def tiny_tokenizer(template: str | None = None):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(ASSETS / "tiny-qwen2")
    if template:
        tokenizer.chat_template = bundled_template(template)
    return tokenizer


def test_lmdeploy_template_is_the_models_own(tmp_path):
    merged = json.loads(write_chat_template(ASSETS / "tiny-qwen2", ASSETS / "tiny-qwen2", tmp_path / "a").read_text())
    assert merged == {"model_name": "hf", "model_path": str(ASSETS / "tiny-qwen2")}
    adapter = tmp_path / "adapter"  # an unmerged adapter carries the template its run trained with
    tiny_tokenizer("gemma").save_pretrained(adapter)
    paired = json.loads(write_chat_template(ASSETS / "tiny-qwen2", adapter, tmp_path / "b").read_text())
    template_dir = paired["model_path"]
    assert (tmp_path / "b" / "tokenizer" / "config.json").is_file() and template_dir == str(
        tmp_path / "b" / "tokenizer"
    )
    from transformers import AutoTokenizer

    rendered = AutoTokenizer.from_pretrained(template_dir).apply_chat_template(CONVERSATION[1:], tokenize=False)
    assert rendered == tiny_tokenizer("gemma").apply_chat_template(CONVERSATION[1:], tokenize=False)
    assert "<start_of_turn>" in rendered


LMDEPLOY_PROMPT_IDS = """
import json, sys
from lmdeploy.model import ChatTemplateConfig
from lmdeploy.tokenizer import Tokenizer
config = ChatTemplateConfig.from_json(sys.argv[1])
prompt = config.chat_template().messages2prompt(json.loads(sys.argv[2]))
print(json.dumps(Tokenizer(config.model_path).encode(prompt, add_bos=True)))
"""


def ids_before_last_answer(tokenizer, conversation: list[dict]) -> list[int]:
    """Training's token ids up to where the last assistant answer starts: the prompt a server must build."""
    tokens = tokenize_conversation(tokenizer, conversation, max_seq_len=4096)
    labels = tokens["labels"]
    last_answer = max(i for i in range(1, len(labels)) if labels[i] != IGNORE_INDEX and labels[i - 1] == IGNORE_INDEX)
    return list(tokens["input_ids"][:last_answer])


@pytest.mark.parametrize("template", [None, "gemma", "chatml"])
def test_lmdeploy_formats_prompts_as_training_does(template, tmp_path):
    """LMDeploy's own prompt builder and tokenizer, run in its environment, give training's token ids."""
    python = env_dir() / "bin" / "python"
    if not python.is_file() or subprocess.run([python, "-c", "import lmdeploy.model"], capture_output=True).returncode:
        pytest.skip("no LMDeploy environment: run invoke deploy.setup")
    model_dir = tmp_path / "model"
    tiny_tokenizer(template).save_pretrained(model_dir)
    (model_dir / "config.json").write_text((ASSETS / "tiny-qwen2" / "config.json").read_text())
    chat_template = write_chat_template(model_dir, model_dir, tmp_path / "lmdeploy")
    for conversation in (
        CONVERSATION[1:],
        CONVERSATION,
        [*CONVERSATION, {"role": "user", "content": "And Spain?"}, {"role": "assistant", "content": "Madrid."}],
    ):
        if template == "gemma" and conversation[0]["role"] == "system":
            continue
        training = ids_before_last_answer(tiny_tokenizer(template), conversation)
        served = subprocess.run(
            [python, "-c", LMDEPLOY_PROMPT_IDS, str(chat_template), json.dumps(conversation[:-1])],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        assert json.loads(served.stdout.strip().splitlines()[-1]) == training, conversation


def test_lmdeploy_command_from_config(tmp_path):
    deploy = OmegaConf.create(
        {"engine": "turbomind", "tp": 2, "session_len": 8192, "cache_max_entry_count": 0.5, "quant_policy": 8,
         "model_format": None, "env_dir": str(tmp_path / "env")}
    )  # fmt: skip
    with pytest.raises(OnestopError, match="run invoke deploy.setup"):
        lmdeploy_command(tmp_path / "model", 23333, deploy, "demo", None, tmp_path / "t.json")
    (tmp_path / "env" / "bin").mkdir(parents=True)
    (tmp_path / "env" / "bin" / "lmdeploy").write_text("")
    merged = lmdeploy_command(tmp_path / "model", 23333, deploy, "demo", None, tmp_path / "t.json")
    assert merged[:4] == [str(tmp_path / "env" / "bin" / "lmdeploy"), "serve", "api_server", str(tmp_path / "model")]
    pairs = dict(zip(merged[4::2], merged[5::2], strict=False))
    assert pairs["--backend"] == "turbomind" and pairs["--tp"] == "2" and pairs["--session-len"] == "8192"
    assert pairs["--cache-max-entry-count"] == "0.5" and pairs["--quant-policy"] == "8"
    assert pairs["--server-name"] == "127.0.0.1" and pairs["--chat-template"] == str(tmp_path / "t.json")
    unmerged = lmdeploy_command(tmp_path / "base", 23333, deploy, "demo", tmp_path / "adapter", tmp_path / "t.json")
    assert unmerged[unmerged.index("--backend") + 1] == "pytorch"
    assert unmerged[unmerged.index("--adapters") + 1] == f"demo={tmp_path / 'adapter'}"


def test_lmdeploy_setup_builds_an_isolated_environment_once(tmp_path):
    commands = setup_commands(tmp_path / "env", python="/usr/bin/python3")
    assert commands[0] == ["/usr/bin/python3", "-m", "venv", str(tmp_path / "env")]
    assert commands[-1] == [str(tmp_path / "env" / "bin" / "pip"), "install", "lmdeploy==0.18.*"]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_lmdeploy_serves_a_run_on_a_gpu(learned_run, home):
    if not installed(env_dir()):
        pytest.skip("no LMDeploy environment: run invoke deploy.setup")

    cfg = compose_config("deploy", [f"run_dir={learned_run}", "model=tiny", "deploy=lmdeploy", "port=0", "name=gpu"])
    with serving(cfg) as deployment:
        client = OpenAI(base_url=deployment.base_url, api_key="-", max_retries=0)
        reply = client.chat.completions.create(model="gpu", messages=QUESTION, max_tokens=8, temperature=0)
        assert reply.choices[0].message.content is not None


def prompt_ids_three_ways(tokenizer, model, conversation: list[dict]) -> tuple[list[int], list[int], list[int]]:
    """Prompt token ids as training builds them, as lm-eval builds them, and as a chat server builds them."""
    from lm_eval.models.huggingface import HFLM

    tokens = tokenize_conversation(tokenizer, conversation, max_seq_len=4096)
    first_answer = next(i for i, label in enumerate(tokens["labels"]) if label != IGNORE_INDEX)
    training = list(tokens["input_ids"][:first_answer])
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=1)
    evaluation = lm.tok_encode(lm.apply_chat_template(conversation[:-1], add_generation_prompt=True))
    serving = tokenizer.apply_chat_template(conversation[:-1], add_generation_prompt=True, tokenize=True)
    serving = serving["input_ids"] if hasattr(serving, "keys") else serving
    return training, list(evaluation), list(serving)


CONVERSATION = [
    {"role": "system", "content": "Answer briefly."},
    {"role": "user", "content": "What is the capital of France?"},
    {"role": "assistant", "content": "Paris."},
]


def test_token_ids_identical_in_training_evaluation_and_serving(served, client, learned_run):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(learned_run / "model")
    model = AutoModelForCausalLM.from_pretrained(learned_run / "model")
    training, evaluation, serving = prompt_ids_three_ways(tokenizer, model, CONVERSATION)
    assert training == evaluation == serving
    reply = client.chat.completions.create(model=served.name, messages=CONVERSATION[:-1], max_tokens=2)
    assert reply.usage.prompt_tokens == len(training)  # what the real server tokenized


@pytest.mark.slow
@pytest.mark.usefixtures("gemma_in_home")
def test_token_ids_identical_for_gemma_with_its_bundled_template():
    cfg = compose("model=gemma3_270m")
    path = resolve_model_path(cfg.model)
    tokenizer = load_tokenizer(cfg.model, path)
    conversation = CONVERSATION[1:]  # Gemma's template has no system role
    training, evaluation, serving = prompt_ids_three_ways(
        tokenizer, load_causal_lm(cfg.model, "float32", path), conversation
    )
    assert training == evaluation == serving


def test_interactive_chat_streams_resets_and_exits(served, home):
    result = subprocess.run(
        [str(Path(sys.executable).parent / "invoke"), "chat", f"name={served.name}", "max_tokens=6"],
        input="What is the capital of France?\n/reset\nAdd two and three.\n/exit\n",
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "ONESTOP_HOME": str(home)},
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"Chatting with {served.name}" in result.stdout and "(conversation reset)" in result.stdout
    assert result.stdout.count(f"{served.name}> ") == 2


@pytest.mark.slow
@pytest.mark.usefixtures("gemma_in_home")
def test_gemma_answers_the_same_in_process_and_served(tmp_path):
    cfg = compose("model=gemma3_270m")
    path = resolve_model_path(cfg.model)
    prompts = [QUESTION, [{"role": "user", "content": "Name three primary colours."}]]
    expected = generate_answers(
        load_causal_lm(cfg.model, "float32", path), load_tokenizer(cfg.model, path), prompts, 24
    )
    deploy_cfg = compose_config(
        "deploy", ["model=gemma3_270m", "deploy=transformers", "deploy.dtype=float32", "port=0", "name=gemma-parity"]
    )
    with serving(deploy_cfg) as deployment:
        client = OpenAI(base_url=deployment.base_url, api_key="-", max_retries=0)
        got = [
            client.chat.completions.create(model="gemma-parity", messages=p, max_tokens=24, temperature=0)
            .choices[0]
            .message.content.strip()
            for p in prompts
        ]
    assert got == expected and all(expected), (got, expected)
