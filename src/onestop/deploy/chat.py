"""`invoke chat`: a terminal chat with a deployment (or any OpenAI-compatible endpoint), via the openai SDK.

invoke chat                       multi-turn, streamed; /reset forgets the conversation, /exit leaves
invoke chat prompt="Hello"        one answer, printed, then exit
"""

# Lazy imports: openai (inside the functions that need them).

import os
import sys

from omegaconf import DictConfig

from onestop.core.errors import OnestopError
from onestop.deploy.service import alive, deployments


def endpoint_of(cfg: DictConfig) -> tuple[str, str]:
    """(base URL, model name): the endpoint given, or the named (or only) local deployment."""
    if cfg.endpoint:
        if not cfg.endpoint_model:
            raise OnestopError("endpoint_model: name the model the endpoint serves")
        return cfg.endpoint, cfg.endpoint_model

    running = [s for s in deployments() if alive(s.get("pid")) and cfg.name in (None, s["name"])]
    if not running:
        raise OnestopError("no deployment is running; start one with invoke deploy run_dir=DIR (or give endpoint=URL)")
    if len(running) > 1:
        names = ", ".join(s["name"] for s in running)
        raise OnestopError(f"name: several deployments are running ({names}); choose one with name=NAME")
    return running[0]["base_url"], running[0]["name"]


def run_chat(cfg: DictConfig) -> str | None:
    from openai import OpenAI, OpenAIError

    base_url, model = endpoint_of(cfg)
    client = OpenAI(base_url=base_url, api_key=os.environ.get(cfg.api_key_env) or "-", max_retries=1)
    system = [{"role": "system", "content": cfg.system}] if cfg.system else []

    def answer(history: list[dict]) -> str:
        stream = client.chat.completions.create(
            model=model, messages=history, max_tokens=cfg.max_tokens, temperature=cfg.temperature, stream=True
        )
        parts = []
        for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                parts.append(chunk.choices[0].delta.content)
                print(chunk.choices[0].delta.content, end="", flush=True)
        print(flush=True)
        return "".join(parts)

    try:
        if cfg.prompt:
            return answer([*system, {"role": "user", "content": cfg.prompt}])
        print(f"Chatting with {model} at {base_url}. /reset starts over, /exit (or Ctrl-D) leaves.", flush=True)
        history = list(system)
        while True:
            try:
                line = input("you> ").strip()
            except (EOFError, KeyboardInterrupt):
                print(file=sys.stderr)
                return None
            if line in {"/exit", "/quit"}:
                return None
            if line == "/reset":
                history = list(system)
                print("(conversation reset)", flush=True)
                continue
            if not line:
                continue
            history.append({"role": "user", "content": line})
            print(f"{model}> ", end="", flush=True)
            history.append({"role": "assistant", "content": answer(history)})
    except OpenAIError as err:
        raise OnestopError(f"{base_url}: {type(err).__name__}: {err}") from None
