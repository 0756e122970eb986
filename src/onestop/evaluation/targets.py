"""What an evaluation scores — a base model, a training run or an endpoint — and loading it in-process.

target = describe_target(cfg)            # checks run_dir= / endpoint= before anything loads
model = load_target_model(cfg, target)   # a run's base with its adapter, its full model, or the base model
"""

# Lazy imports: torch, transformers, peft (inside the functions that need them).

import os
from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from onestop.core.endpoints import check_served_model, only_listed_model
from onestop.core.errors import OnestopError
from onestop.core.rundir import RunDir
from onestop.models.loading import load_causal_lm, load_tokenizer


@dataclass
class Target:
    """What is evaluated: exactly one of a run directory, a base model, or an endpoint."""

    kind: str
    identity: dict
    run_config: DictConfig | None = None


def describe_target(cfg: DictConfig) -> Target:
    if cfg.endpoint and cfg.run_dir:
        raise OnestopError("endpoint= and run_dir= both set: evaluate one target at a time")
    if cfg.endpoint and OmegaConf.select(cfg, "eval.kind") == "rm":
        raise OnestopError("endpoint=: eval=rm scores a reward model in-process; give run_dir= of a stage=rm run")
    if cfg.endpoint:
        return Target("endpoint", {"endpoint": cfg.endpoint, "endpoint_model": endpoint_model(cfg)})
    if cfg.run_dir:
        run = RunDir.existing(cfg.run_dir)
        run_config = run.config()
        reward_suite = OmegaConf.select(cfg, "eval.kind") == "rm"
        if run.is_reward_model() != reward_suite:
            raise OnestopError(
                f"run_dir={run.path}: a reward model (stage=rm) scores answers and never generates; evaluate it with "
                "eval=rm eval.path=PAIRS"
                if run.is_reward_model()
                else f"run_dir={run.path}: eval=rm scores a reward model (invoke train stage=rm), and this run trained "
                f"a language model (stage={run_config.get('stage')}); evaluate it with another suite"
            )
        weights = run.weights()
        identity = {"run_dir": str(run.path), "model": run_config.model.name, "model_path": run_config.model.path}
        where = {"adapter": str(weights.path)} if weights.is_adapter else {"model_dir": str(weights.path)}
        return Target("run", {**identity, **where}, run_config)
    return Target("model", {"model": cfg.model.name, "model_path": cfg.model.path})


def endpoint_model(cfg: DictConfig) -> str:
    """The served model's name: `endpoint_model=`, or the only model the endpoint lists."""
    if cfg.endpoint_model:
        return cfg.endpoint_model
    return only_listed_model(cfg.endpoint, auth_headers(cfg), "endpoint", "endpoint_model")


def check_endpoint(cfg: DictConfig, target: Target) -> None:
    """An endpoint with a model named by `endpoint_model=` answers and lists that model: checked before the first
    question, which would otherwise fail deep in the evaluation (connection refused, or a 404)."""
    if target.kind == "endpoint" and cfg.endpoint_model:
        check_served_model(cfg.endpoint, auth_headers(cfg), cfg.endpoint_model, "endpoint", "endpoint_model")


def auth_headers(cfg: DictConfig) -> dict:
    key = os.environ.get(cfg.api_key_env)
    return {"Authorization": f"Bearer {key}"} if key else {}


def device(cfg: DictConfig) -> str:
    """Where an in-process evaluation runs: the GPU when there is one and hardware allows it."""
    import torch

    return "cuda" if torch.cuda.is_available() and cfg.hardware.accelerator != "cpu" else "cpu"


def load_target_tokenizer(cfg: DictConfig, target: Target):
    """The tokenizer (chat template included) the target was trained with."""
    from transformers import AutoTokenizer

    if target.kind == "run":
        saved = Path(target.identity.get("adapter") or target.identity["model_dir"])
        tokenizer = AutoTokenizer.from_pretrained(saved)
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        return tokenizer
    return load_tokenizer(cfg.model)


def load_target_model(cfg: DictConfig, target: Target, where: str | None = None):
    """The target's weights in-process: a run's base with its adapter, a run's full model, or the base model,
    on `where` (default: `device(cfg)`; a worker passes its own GPU, e.g. cuda:1)."""
    from peft import PeftModel

    where = where or device(cfg)
    dtype = "bfloat16" if where.startswith("cuda") else "float32"
    if target.kind != "run":
        return load_causal_lm(cfg.model, dtype).to(where)
    if "adapter" in target.identity:
        base = load_causal_lm(target.run_config.model, dtype)
        return PeftModel.from_pretrained(base, target.identity["adapter"]).to(where)
    return load_causal_lm(target.run_config.model, dtype, path=target.identity["model_dir"]).to(where)
