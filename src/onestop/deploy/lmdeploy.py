"""LMDeploy on a GPU: its own environment, the `api_server` command, and the chat template handed to it.

lmdeploy 0.18 pins torch<=2.12.1 and peft<=0.14, so it cannot share onestop's environment:
`invoke deploy.setup` builds a separate virtual environment once, and onestop runs its `lmdeploy` binary
as the backend process behind the gateway. Offline (`deploy.wheels=DIR`), the wheels in DIR are installed
into the environment's own folder and its `lmdeploy` runs this Python with that folder in front of its own
packages: the GPU machine's torch is used, and nothing is downloaded.
"""

import json
import shutil
import subprocess
import sys
from pathlib import Path

from omegaconf import DictConfig

from onestop.core.errors import OnestopError
from onestop.core.files import staged_directory, write_text_atomic
from onestop.core.paths import cache_dir

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


def offline_setup_commands(target: Path, wheels: Path, python: str = sys.executable) -> list[list[str]]:
    """Commands that install every wheel in `wheels` into `target`/site, with no index and no dependency
    resolution: the folder holds what LMDeploy needs beyond this Python's packages."""
    found = sorted(str(wheel) for wheel in Path(wheels).glob("*.whl"))
    if not any(Path(wheel).name.startswith("lmdeploy-") for wheel in found):
        raise OnestopError(f"deploy.wheels={wheels}: no lmdeploy-*.whl there (invoke bench.gpu.wheels downloads them)")
    site = str(target / "site")
    return [[python, "-m", "pip", "install", "--no-index", "--no-deps", "--no-compile", "--target", site, *found]]


def launcher_script(target: Path, python: str = sys.executable) -> str:
    """`bin/lmdeploy` of an offline environment: this Python, with the installed wheels before its own packages."""
    site = target / "site"
    return (
        "#!/bin/sh\n# written by invoke deploy.setup deploy.wheels=...: LMDeploy over this Python's packages\n"
        f'PYTHONPATH="{site}${{PYTHONPATH:+:$PYTHONPATH}}" exec "{python}" -c '
        '\'import sys; from lmdeploy.cli import run; sys.argv[0] = "lmdeploy"; sys.exit(run())\' "$@"\n'
    )


def installed(target: Path) -> bool:
    return (target / "bin" / "lmdeploy").is_file()


def run_setup(cfg: DictConfig) -> Path:
    target = env_dir(cfg.deploy)
    if installed(target):
        print(f"LMDeploy environment ready (reused): {target}")
        return target
    wheels = cfg.deploy.get("wheels")
    wheels = Path(wheels).expanduser().absolute() if wheels else None
    commands = offline_setup_commands(target, wheels) if wheels else setup_commands(target)
    for command in commands:
        print("+ " + " ".join(command), flush=True)
        if subprocess.run(command).returncode:
            raise OnestopError(f"deploy.setup: `{' '.join(command)}` failed; see the output above")
    if wheels:
        launcher = target / "bin" / "lmdeploy"
        write_text_atomic(launcher, launcher_script(target))
        launcher.chmod(0o755)
    print(f"LMDeploy environment ready: {target}")
    return target


def lmdeploy_command(
    model_dir: Path,
    port: int,
    deploy: DictConfig,
    served_name: str,
    adapter: Path | None,
    template: Path,
    tool_parser: str | None = None,
) -> list[str]:
    """`lmdeploy serve api_server` with the engine settings of the `deploy` node.

    TurboMind serves merged weights; an unmerged adapter needs the PyTorch engine (`--adapters`).
    `tool_parser` is LMDeploy's `--tool-call-parser` for the model's tool format.
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
    if tool_parser:
        command += ["--tool-call-parser", tool_parser]
    return command


TOKENIZER_FILES = ("tokenizer", "special_tokens", "chat_template", "added_tokens", "vocab", "merges")


def write_chat_template(model_dir: Path, tokenizer_dir: Path, target_dir: Path) -> Path:
    """The `--chat-template` JSON that makes LMDeploy format prompts with the run's own Jinja template.

    LMDeploy's `hf` template renders messages with the tokenizer's `apply_chat_template`, so prompts are
    formatted by the very template training used. Its field-by-field templates (system, eoh, eoa, ...) cannot
    express "no system turn when the conversation has none": LMDeploy then adds an empty system block that
    training never saw. The `hf` template reads `config.json` beside the tokenizer, so an unmerged adapter's
    tokenizer is paired with its base's config in `target_dir`.
    """
    template_source = Path(tokenizer_dir)
    if template_source != Path(model_dir):
        with staged_directory(target_dir / "tokenizer") as staging:
            for item in template_source.iterdir():
                if item.is_file() and item.name.startswith(TOKENIZER_FILES):
                    shutil.copy2(item, staging / item.name)
            shutil.copy2(Path(model_dir) / "config.json", staging / "config.json")
        template_source = target_dir / "tokenizer"
    target = target_dir / "chat_template.json"
    write_text_atomic(target, json.dumps({"model_name": "hf", "model_path": str(template_source)}, indent=2) + "\n")
    return target
