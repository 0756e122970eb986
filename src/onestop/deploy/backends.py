"""The backend server behind a deployment: the `transformers serve` command line, its port and its hub folder;
`invoke deploy.setup` for the backends that run from an environment of their own."""

# Lazy imports: transformers (inside transformers_request_fields).

import os
import socket
import sys
from pathlib import Path

from omegaconf import DictConfig

from onestop.core.errors import OnestopError
from onestop.deploy import lmdeploy, vllm

# deploy.backend -> the function that builds its environment once (invoke deploy.setup deploy=BACKEND)
SETUPS = {"lmdeploy": lmdeploy.run_setup, "vllm": vllm.run_setup}


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def check_port_free(host: str, port: int) -> None:
    """Fail in one line, before any model is merged or loaded, when `host:port` is taken."""
    with socket.socket() as probe:
        try:
            probe.bind((host, port))
        except OSError as err:
            raise OnestopError(
                f"config key 'port': {host}:{port} cannot be bound ({err.strerror}); another server is using it? "
                "stop it, or choose another port (port=0 picks a free one)"
            ) from None


def transformers_command(model_dir: Path, port: int, deploy: DictConfig) -> list[str]:
    """`transformers serve` for one local model directory on 127.0.0.1, with the `deploy` node's settings."""
    cli = Path(sys.executable).parent / "transformers"
    command = [str(cli), "serve", str(model_dir), "--host", "127.0.0.1", "--port", str(port)]
    command += ["--device", deploy.device, "--dtype", deploy.dtype, "--model-timeout", "-1"]
    command.append("--continuous-batching" if deploy.continuous_batching else "--no-continuous-batching")
    return command


def transformers_request_fields() -> dict[str, frozenset]:
    """The top-level fields `transformers serve` accepts, by kind (chat, completion): it answers any other
    with 422, which the gateway turns into a 400 naming the field before forwarding."""
    from transformers.cli.serving.chat_completion import ChatCompletionHandler
    from transformers.cli.serving.completion import CompletionHandler

    handlers = {"chat": ChatCompletionHandler, "completion": CompletionHandler}
    return {kind: frozenset(handler._valid_params_class.__mutable_keys__) for kind, handler in handlers.items()}


def hf_home() -> Path:
    """The Hugging Face home the backend gets (an empty HF_HOME counts as unset), with its hub/ folder made:
    transformers serve answers /v1/models with 500 for a local directory when that folder is missing."""
    home = Path(os.environ.get("HF_HOME") or Path.home() / ".cache" / "huggingface")
    (home / "hub").mkdir(parents=True, exist_ok=True)
    return home


def run_setup(cfg: DictConfig) -> Path:
    """`invoke deploy.setup [deploy=vllm]`: the chosen backend's own environment, built once."""
    backend = cfg.deploy.backend
    if backend not in SETUPS:
        raise OnestopError(f"deploy={backend}: has no environment to set up; expected one of {', '.join(SETUPS)}")
    return SETUPS[backend](cfg)
