"""`invoke deploy`, `deploy.stop`, `deploy.status`: a model behind an OpenAI-compatible API on this machine.

    invoke deploy run_dir=runs/train/DIR              # transformers on CPU, LMDeploy on a GPU
    invoke deploy run_dir=runs/train/DIR deploy=vllm  # vLLM (after invoke deploy.setup deploy=vllm)
    invoke deploy model=gemma3_270m deploy=transformers port=8001
    invoke deploy.status
    invoke deploy.stop

A deployment is two processes: onestop's gateway on the public port (validation, API key, the short
model name) and the backend server on an internal port. `invoke deploy` returns once /health answers,
leaving both running; a state file under $ONESTOP_HOME/deploy/ records them for status and stop.
"""

# Lazy imports: torch, transformers, openai (inside the functions that need them).

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig, OmegaConf
from rich.console import Console
from rich.table import Table

from onestop.config.schema import DeployBackendConfig, DeployConfig, ModelConfig
from onestop.core.errors import OnestopError
from onestop.core.files import staged_directory, write_json
from onestop.core.paths import cache_dir
from onestop.core.rundir import SOURCE_FILE, RunDir, made_from, record_source
from onestop.deploy import vllm
from onestop.deploy.backends import check_port_free, free_port, hf_home, transformers_command
from onestop.deploy.conversations import ConversationLog
from onestop.deploy.export import current_export, export_run, stop_ids_with_end_of_turn
from onestop.deploy.lmdeploy import lmdeploy_command, write_chat_template
from onestop.models import load_tokenizer, resolve_model_path
from onestop.models.loading import directory_identity
from onestop.models.reward import refuse_reward_model
from onestop.models.tool_formats import ToolFormat, tool_format


@dataclass
class Deployment:
    name: str
    base_url: str
    state_file: Path
    pid: int


def state_dir() -> Path:
    return cache_dir() / "deploy"


def choose_backend(requested: str) -> str:
    if requested != "auto":
        return requested
    import torch

    return "lmdeploy" if torch.cuda.is_available() else "transformers"


def served_name(cfg: DictConfig) -> str:
    if cfg.name:
        return cfg.name
    return RunDir(cfg.run_dir).name if cfg.run_dir else cfg.model.name


def model_to_serve(cfg: DictConfig, backend: str) -> tuple[Path, Path | None]:
    """(model directory, unmerged adapter or None). A run's adapter is merged once into RUN/export-merged, and
    again whenever that export was not made from the adapter and base there now (onestop-source.json)."""
    if cfg.run_dir:
        run = RunDir.existing(cfg.run_dir)
        weights = run.weights()
        if not weights.is_adapter:
            return weights.path, None
        if backend == "lmdeploy" and not cfg.deploy.merge_adapter:
            return Path(resolve_model_path(run.model_config())), weights.path
        if backend == "vllm":  # a LoRA module on its base, stopping at the template's end of turn
            return base_model_dir(run.model_config()), weights.path
        merged = run.export_dir("merged")
        if not current_export(run, "merged"):
            if run.has_export("merged"):
                print(f"{merged} was made from other weights than the run's: merging the adapter again", flush=True)
            else:
                print(f"Merging the adapter into its base once: {merged}", flush=True)
            export_run(
                OmegaConf.create({"run_dir": str(run.path), "format": "merged", "output": None, "dtype": "float32"})
            )
        return merged, None
    return base_model_dir(cfg.model), None


def base_model_dir(model_cfg: DictConfig) -> Path:
    """A base model's directory; one whose tokenizer lacks a chat template gets a serving copy that has it.

    A tokenizer also gets a copy when its tool format brings a response template it lacks (so the server
    parses tool calls). The copy's generation config stops at the template's end-of-turn token. Each model
    directory has its own copy, keyed to its files and to the template and stop tokens it was made with
    (onestop-source.json): a copy that no longer matches them is made again, never served.
    """
    from transformers import AutoTokenizer, GenerationConfig

    path = Path(resolve_model_path(model_cfg))
    if not path.is_dir():
        raise OnestopError(f"model.path={model_cfg.path}: download it first (invoke train or huggingface-cli download)")
    own = AutoTokenizer.from_pretrained(path)
    tokenizer = load_tokenizer(model_cfg, str(path))
    if own.chat_template and not model_cfg.chat_template and own.response_template == tokenizer.response_template:
        return path
    has_generation_config = (path / "generation_config.json").exists()
    generation = GenerationConfig.from_pretrained(path) if has_generation_config else GenerationConfig()
    generation.eos_token_id = stop_ids_with_end_of_turn(generation.eos_token_id, tokenizer)
    source = {
        "model": directory_identity(path),
        "chat_template": tokenizer.chat_template,
        "response_template": tokenizer.response_template,
        "eos_token_id": generation.eos_token_id,
    }
    fingerprint = hashlib.sha256(json.dumps(source, sort_keys=True, default=str).encode()).hexdigest()
    # One copy per model directory: two paths on one option never take turns replacing a copy being served.
    directory_key = hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:12]
    serving = cache_dir() / "serving" / f"{model_cfg.name}-{directory_key}"
    if made_from(serving) == fingerprint:
        return serving

    with staged_directory(serving) as staging:
        for item in path.iterdir():
            kept = ("tokenizer", "special_tokens", "chat_template", "generation_config", SOURCE_FILE)
            if not item.name.startswith(kept):
                (staging / item.name).symlink_to(item)
        tokenizer.save_pretrained(staging)
        generation.save_pretrained(staging)
        record_source(staging, fingerprint, model=str(path))
    return serving


def whole_reply_copy(model_dir: Path, format_: ToolFormat, name: str) -> Path:
    """A serving copy of `model_dir` whose tokenizer hands each reply back whole, control tokens spelled out
    (`format_.whole_reply`), so that the gateway reads the family's tool calls and thinking itself; the
    directory as it is when its tokenizer already does. Keyed to the directory's files and the template."""
    config_file = Path(model_dir) / "tokenizer_config.json"
    if not config_file.is_file():
        return model_dir
    config = json.loads(config_file.read_text())
    if config.get("response_template") == format_.whole_reply:
        return model_dir
    config["response_template"] = format_.whole_reply
    source = {"model": directory_identity(model_dir), "response_template": format_.whole_reply}
    fingerprint = hashlib.sha256(json.dumps(source, sort_keys=True, default=str).encode()).hexdigest()
    directory_key = hashlib.sha256(str(Path(model_dir).resolve()).encode()).hexdigest()[:12]
    serving = cache_dir() / "serving" / f"{name}-replies-{directory_key}"
    if made_from(serving) == fingerprint:
        return serving
    with staged_directory(serving) as staging:
        for item in Path(model_dir).iterdir():
            if item.name not in (config_file.name, SOURCE_FILE):
                (staging / item.name).symlink_to(item.resolve())
        write_json(staging / config_file.name, config)
        record_source(staging, fingerprint, model=str(model_dir))
    return serving


def reads_images(model_dir: Path) -> bool:
    """Whether the served directory keeps an image processor, so that its server turns image parts into the
    model's inputs (a vision-language run's merged export or model/ does; a text model's has none)."""
    return any((Path(model_dir) / name).is_file() for name in ("processor_config.json", "preprocessor_config.json"))


def parses_tool_calls(model_dir: Path) -> bool:
    """Whether `transformers serve` returns tool calls for this directory: its tokenizer has a response template."""
    config = Path(model_dir) / "tokenizer_config.json"
    return config.is_file() and json.loads(config.read_text()).get("response_template") is not None


def start(cfg: DictConfig) -> Deployment:
    if cfg.run_dir:  # a missing run, or a reward model, is the error to report, even when the port is taken too
        refuse_reward_model(RunDir.existing(cfg.run_dir), "served as a chat model")
    backend = choose_backend(cfg.deploy.backend)
    limits = gateway_limits(cfg, backend)  # a bad limit fails before any model is merged or loaded
    name = served_name(cfg)
    state_file = state_dir() / f"{name}.json"
    running = read_state(state_file)
    if running and alive(running["pid"]):
        raise OnestopError(
            f"{name} is already served at {running['base_url']}; stop it with invoke deploy.stop name={name}"
        )
    if cfg.port:
        check_port_free(cfg.host, cfg.port)
    model_dir, adapter = model_to_serve(cfg, backend)
    format_ = tool_format((RunDir(cfg.run_dir).model_config() if cfg.run_dir else cfg.model).get("tool_format"))
    internal = free_port()
    port = cfg.port or free_port()
    log = state_dir() / f"{name}.log"
    if backend == "transformers":
        if format_ is not None:  # the gateway reads the replies (onestop.deploy.replies)
            model_dir = whole_reply_copy(model_dir, format_, name)
        command = transformers_command(model_dir, internal, cfg.deploy)
        backend_model, env = str(model_dir), {"HF_HUB_OFFLINE": "1", "HF_HOME": str(hf_home())}
        tool_calls = format_ is not None or parses_tool_calls(model_dir)
    elif backend == "lmdeploy":
        template = write_chat_template(model_dir, adapter or model_dir, state_dir() / f"{name}.lmdeploy")
        parser = format_.lmdeploy_parser if format_ else None
        command = lmdeploy_command(model_dir, internal, cfg.deploy, name, adapter, template, parser)
        backend_model, env, tool_calls = name, {}, parser is not None
    elif backend == "vllm":
        template = vllm.write_chat_template(adapter or model_dir, state_dir() / f"{name}.vllm")
        parser = vllm.TOOL_PARSERS.get(format_.name) if format_ else None
        reasoning = vllm.reasoning_parser(model_dir)
        command = vllm.vllm_command(model_dir, internal, cfg.deploy, name, adapter, template, adapter or model_dir,
                                    parser, reasoning)  # fmt: skip
        backend_model, env, tool_calls = name, vllm.vllm_env(cfg.deploy), parser is not None
    else:
        raise OnestopError(f"deploy.backend={backend}: expected transformers, lmdeploy, vllm or auto")
    state = {
        "name": name,
        "model": name,
        "backend": backend,
        "backend_model": backend_model,
        "backend_port": internal,
        "backend_command": command,
        "backend_env": env,
        "backend_log": str(log),
        "model_dir": str(model_dir),
        "adapter": str(adapter) if adapter else None,
        "tool_calls": tool_calls,
        "reads_images": reads_images(Path(adapter or model_dir)),
        "tool_format": format_.name if format_ is not None and backend == "transformers" else None,
        "tokenizer_dir": str(adapter or model_dir),
        "context_length": context_length(model_dir, backend, cfg.deploy),
        "limits": limits,
        "conversations_log": str(conversations_log(cfg, name)) if cfg.deploy.log_conversations else None,
        "host": cfg.host,
        "port": port,
        "base_url": f"http://{cfg.host}:{port}/v1",
        "api_key": bool(cfg.api_key_env and os.environ.get(cfg.api_key_env)),
        "started": time.time(),
        "pid": None,
    }
    write_json(state_file, state)
    gateway_env = dict(os.environ)
    if state["api_key"]:
        gateway_env["ONESTOP_DEPLOY_API_KEY"] = os.environ[cfg.api_key_env]
    with open(log, "ab") as handle:
        process = subprocess.Popen(
            [sys.executable, "-m", "onestop.deploy.gateway", str(state_file)],
            stdout=handle,
            stderr=subprocess.STDOUT,
            env=gateway_env,
            start_new_session=True,  # outlives `invoke deploy`; deploy.stop ends it
        )
    state["pid"] = process.pid
    write_json(state_file, state)
    try:
        wait_until_healthy(f"http://{cfg.host}:{port}", process, cfg.startup_timeout, log)
    except OnestopError:
        state_file.unlink(missing_ok=True)
        raise
    return Deployment(name, state["base_url"], state_file, process.pid)


def conversations_log(cfg: DictConfig, name: str) -> Path:
    """Where a deployment logs its chat exchanges (deploy.conversations_path, else beside its state file)."""
    chosen = cfg.deploy.conversations_path
    path = Path(chosen).expanduser().absolute() if chosen else state_dir() / f"{name}.conversations.jsonl"
    if path.is_dir():
        raise OnestopError(f"deploy.conversations_path={chosen}: is a directory; expected a .jsonl file")
    ConversationLog(path)  # an unwritable place fails here, in one line, not in the gateway
    return path


def gateway_limits(cfg: DictConfig, backend: str) -> dict:
    """The gateway's limits from the deploy config; unset concurrency is sized for the backend."""
    limits = {
        "max_request_bytes": cfg.max_request_bytes,
        "max_tokens_limit": cfg.max_tokens_limit,
        "max_concurrent_requests": cfg.max_concurrent_requests or {"lmdeploy": 64, "vllm": 64}.get(backend, 8),
        "max_queued_requests": cfg.max_queued_requests,
        "request_timeout_s": cfg.request_timeout_s,
        "max_images_per_request": cfg.max_images_per_request,
    }
    for key, value in limits.items():
        if key in ("max_queued_requests", "max_images_per_request") and value < 0:
            raise OnestopError(f"{key}={value}: must be 0 or more")
        if key not in ("max_queued_requests", "max_images_per_request") and value <= 0:
            raise OnestopError(f"{key}={value}: must be positive")
    return limits


def context_length(model_dir: Path, backend: str, deploy: DictConfig) -> int | None:
    """The most tokens a request may fill, prompt and answer together: LMDeploy's session_len, vLLM's
    max_model_len, else the model's positions (config.json; a multimodal model's text_config); None when the
    model does not say."""
    if backend == "lmdeploy":
        return deploy.session_len
    if backend == "vllm":
        return vllm.max_model_len(model_dir, deploy.session_len)
    config_file = Path(model_dir) / "config.json"
    if not config_file.is_file():
        return None
    config = json.loads(config_file.read_text())
    for node in (config, config.get("text_config") or {}):
        for key in ("max_position_embeddings", "n_positions", "max_sequence_length"):
            if isinstance(node.get(key), int):
                return node[key]
    return None


def wait_until_healthy(base: str, process: subprocess.Popen, timeout: float, log: Path) -> None:
    """Block until the gateway says its backend is up; on failure, stop it and say why in one line."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            tail = " ".join(log.read_text(errors="replace")[-1200:].split()) if log.is_file() else ""
            raise OnestopError(f"the server exited with status {process.returncode}: {tail}")
        try:
            with urllib.request.urlopen(f"{base}/health", timeout=2) as reply:
                if json.load(reply).get("status") == "ok":
                    return
        except (OSError, ValueError):
            pass
        time.sleep(0.5)
    process.terminate()
    raise OnestopError(f"the server did not become healthy within {timeout:.0f} s; see {log}")


def read_state(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def deployments() -> list[dict]:
    return [s for p in sorted(state_dir().glob("*.json")) if (s := read_state(p)) and "backend_command" in s]


def stop(name: str | None = None, timeout: float = 20.0) -> list[str]:
    """Stop one deployment (or every one when `name` is None); returns the names stopped."""
    chosen = [s for s in deployments() if name in (None, s["name"])]
    if name and not chosen:
        names = ", ".join(s["name"] for s in deployments()) or "none"
        raise OnestopError(f"name={name}: no such deployment; running: {names}")
    for state in chosen:
        pid = state.get("pid")
        if alive(pid):
            os.killpg(pid, signal.SIGTERM)  # the gateway's session: gateway and backend together
            deadline = time.monotonic() + timeout
            while alive(pid) and time.monotonic() < deadline:
                _reap(pid)
                time.sleep(0.2)
            if alive(pid):
                os.killpg(pid, signal.SIGKILL)
                _reap(pid)
        (state_dir() / f"{state['name']}.json").unlink(missing_ok=True)
    return [s["name"] for s in chosen]


def _reap(pid: int) -> None:
    try:
        os.waitpid(pid, os.WNOHANG)  # our own child when started in this process (tests, the demo)
    except ChildProcessError:
        pass


def health(state: dict) -> str:
    if not alive(state.get("pid")):
        return "stopped"
    try:
        with urllib.request.urlopen(state["base_url"].removesuffix("/v1") + "/health", timeout=3) as reply:
            return json.load(reply).get("status", "?")
    except (OSError, ValueError):
        return "not answering"


@contextmanager
def serving(cfg: DictConfig):
    """A deployment for the duration of a block (the demo, tests)."""
    deployment = start(cfg)
    try:
        yield deployment
    finally:
        stop(deployment.name)


def deploy_config(**keys) -> DictConfig:
    """A typed deploy config built in code, for callers that already hold a composed config."""
    config = OmegaConf.structured(DeployConfig)
    for key, value in keys.items():
        config[key] = value
    return config


def ask_served(
    run_dir: Path | str, question: str, model_cfg: DictConfig | None = None, max_tokens: int = 48
) -> tuple[str, str]:
    """Serve a training run on CPU, ask it one question through the openai SDK, stop it.

    `model_cfg` defaults to the run's own (its config.yaml). Returns (base URL it was served at, answer).
    """
    from openai import OpenAI

    run = RunDir.existing(run_dir)
    if model_cfg is None:
        model_cfg = OmegaConf.merge(OmegaConf.structured(ModelConfig), run.model_config())
    backend = OmegaConf.structured(DeployBackendConfig(backend="transformers"))
    cfg = deploy_config(model=model_cfg, run_dir=str(run.path), name=run.name, port=0, deploy=backend)
    with serving(cfg) as deployment:
        client = OpenAI(base_url=deployment.base_url, api_key=_client_key(cfg))
        reply = client.chat.completions.create(
            model=deployment.name,
            messages=[{"role": "user", "content": question}],
            max_tokens=max_tokens,
            temperature=0,
        )
        return deployment.base_url, reply.choices[0].message.content


def _client_key(cfg: DictConfig) -> str:
    # the gateway demands $ONESTOP_API_KEY when it is set in this environment; "-" when no key is required
    return (cfg.api_key_env and os.environ.get(cfg.api_key_env)) or "-"


def run_deploy(cfg: DictConfig) -> Deployment:
    deployment = start(cfg)
    print(f"Serving {deployment.name} at {deployment.base_url} (OpenAI API; model={deployment.name!r})")
    print(f"Try: invoke chat name={deployment.name} prompt='Hello'   Stop: invoke deploy.stop name={deployment.name}")
    if logged := read_state(deployment.state_file).get("conversations_log"):
        print(f"Logging conversations to {logged} (train on them: invoke train data=messages data.path={logged})")
    return deployment


def run_stop(cfg: DictConfig) -> None:
    stopped = stop(cfg.name)
    print(f"Stopped: {', '.join(stopped)}" if stopped else "No deployment is running.")


def run_status(cfg: DictConfig) -> None:
    table = Table(title="Deployments")
    for column in ("name", "backend", "URL", "health", "model directory", "conversations log", "pid"):
        table.add_column(column, no_wrap=column in ("URL", "pid"), overflow="fold")
    for state in deployments():
        logged = state.get("conversations_log") or "-"
        table.add_row(
            state["name"], state["backend"], state["base_url"], health(state), state["model_dir"], logged,
            str(state["pid"]),
        )  # fmt: skip
    # A log or pipe reports 80 columns: URLs and paths are what people copy, so they are never cut.
    Console(width=max(Console().width, 200)).print(table if table.row_count else "No deployment is running.")
