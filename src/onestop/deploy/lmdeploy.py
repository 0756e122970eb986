"""LMDeploy on a GPU: its own environment, the `api_server` command, and the chat template handed to it.

lmdeploy 0.18 pins torch<=2.12.1 and peft<=0.14, so it cannot share onestop's environment:
`invoke deploy.setup` builds a separate virtual environment once, and onestop runs its `lmdeploy` binary
as the backend process behind the gateway.
"""

import json
import subprocess
import sys
from pathlib import Path

from omegaconf import DictConfig

from onestop.errors import OnestopError
from onestop.paths import cache_dir

LMDEPLOY_REQUIREMENT = "lmdeploy==0.18.*"


def env_dir(deploy: DictConfig | None = None) -> Path:
    configured = deploy.get("env_dir") if deploy is not None else None
    return Path(configured).expanduser() if configured else cache_dir() / "envs" / "lmdeploy"


def setup_commands(target: Path, python: str = sys.executable) -> list[list[str]]:
    """Commands that create the isolated environment (skipped by `setup` when it already works)."""
    pip = str(target / "bin" / "pip")
    return [
        [python, "-m", "venv", str(target)],
        [pip, "install", "--upgrade", "pip"],
        [pip, "install", LMDEPLOY_REQUIREMENT],
    ]


def installed(target: Path) -> bool:
    return (target / "bin" / "lmdeploy").is_file()


def run_setup(cfg: DictConfig) -> Path:
    target = env_dir(cfg.deploy)
    if installed(target):
        print(f"LMDeploy environment ready (reused): {target}")
        return target
    for command in setup_commands(target):
        print("+ " + " ".join(command), flush=True)
        if subprocess.run(command).returncode:
            raise OnestopError(f"deploy.setup: `{' '.join(command)}` failed; see the output above")
    print(f"LMDeploy environment ready: {target}")
    return target


def lmdeploy_command(
    model_dir: Path, port: int, deploy: DictConfig, served_name: str, adapter: Path | None, template: Path
) -> list[str]:
    """`lmdeploy serve api_server` with the engine settings of the `deploy` node.

    TurboMind serves merged weights; an unmerged adapter needs the PyTorch engine (`--adapters`).
    """
    binary = env_dir(deploy) / "bin" / "lmdeploy"
    if not installed(env_dir(deploy)):
        raise OnestopError(f"deploy=lmdeploy: no LMDeploy environment at {env_dir(deploy)}; run invoke deploy.setup")
    engine = "pytorch" if adapter is not None else deploy.engine
    command = [str(binary), "serve", "api_server", str(model_dir), "--server-name", "127.0.0.1"]
    command += ["--server-port", str(port), "--backend", engine, "--model-name", served_name]
    command += ["--tp", str(deploy.tp), "--session-len", str(deploy.session_len)]
    command += ["--cache-max-entry-count", str(deploy.cache_max_entry_count), "--chat-template", str(template)]
    if deploy.quant_policy:
        command += ["--quant-policy", str(deploy.quant_policy)]
    if deploy.model_format:
        command += ["--model-format", deploy.model_format]
    if adapter is not None:
        command += ["--adapters", f"{served_name}={adapter}"]
    return command


def chat_template_fields(tokenizer) -> dict:
    """LMDeploy's chat-template JSON, read off the tokenizer's own template by rendering marked messages.

    LMDeploy builds a prompt as system + SYSTEM + eosys + user + QUESTION + eoh + assistant + ANSWER + eoa +
    separator; each piece is found here where the tokenizer's template puts it, so LMDeploy formats prompts
    exactly as training did.
    """

    def render(messages, generation_prompt=False) -> str:
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)

    bos = tokenizer.bos_token or ""
    one = render([{"role": "user", "content": "QUESTION1"}], generation_prompt=True)
    user, after_question = one.split("QUESTION1")
    if bos and user.startswith(bos):
        user = user[len(bos) :]
    two = render(
        [
            {"role": "user", "content": "QUESTION1"},
            {"role": "assistant", "content": "ANSWER1"},
            {"role": "user", "content": "QUESTION2"},
        ],
        generation_prompt=True,
    )
    between_turns = two.split("ANSWER1")[1].split("QUESTION2")[0]
    if not between_turns.endswith(user):
        raise OnestopError("deploy=lmdeploy: the chat template is not turn-by-turn; serve it with deploy=transformers")
    closing = between_turns[: len(between_turns) - len(user)]
    eoa = closing.rstrip("\n")
    fields = {
        "model_name": "onestop",
        "meta_instruction": "",
        "user": user,
        "eoh": after_question,
        "assistant": "",
        "eoa": eoa,
        "separator": closing[len(eoa) :],
        "stop_words": [eoa.strip()] if eoa.strip() else [],
        "capability": "chat",
    }
    try:
        with_system = render([{"role": "system", "content": "SYSTEM1"}, {"role": "user", "content": "QUESTION1"}], True)
    except Exception:  # noqa: BLE001 - templates without a system role raise their own errors
        with_system = ""
    if "SYSTEM1" in with_system and with_system.index("SYSTEM1") < with_system.index("QUESTION1"):
        system, rest = with_system.split("SYSTEM1")
        if bos and system.startswith(bos):
            system = system[len(bos) :]
        eosys = rest.split("QUESTION1")[0]
        if eosys.endswith(user):
            fields |= {"system": system, "eosys": eosys[: len(eosys) - len(user)]}
    return fields


def write_chat_template(tokenizer_dir: Path, target: Path) -> Path:
    from transformers import AutoTokenizer

    from onestop.training.export import write_text_atomic

    fields = chat_template_fields(AutoTokenizer.from_pretrained(tokenizer_dir))
    write_text_atomic(target, json.dumps(fields, indent=2, ensure_ascii=False) + "\n")
    return target
