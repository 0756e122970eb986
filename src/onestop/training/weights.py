"""Saving what a run trained into its run directory: the adapter, or the full model."""

from pathlib import Path

import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM

from onestop.core.errors import OnestopError
from onestop.core.files import save_pretrained_atomic
from onestop.core.rundir import RunDir


def export_trained(model, tokenizer, run: RunDir) -> Path:
    """RUN/adapter (PEFT format) for adapter methods, else a plain transformers model in RUN/model, in the
    dtype the model was loaded in."""
    adapter = isinstance(model, PeftModel)
    if adapter:
        return save_pretrained_atomic(model, tokenizer, run.weights_dir(adapter))
    model.config.use_cache = True
    return save_pretrained_atomic(model, tokenizer, run.weights_dir(adapter), state_dict=load_dtype_state(model))


def start_from_run(model, run_dir: str, model_cfg) -> torch.nn.Module:
    """`model` (the run's base, loaded) with what the earlier run `run_dir` trained: its adapter merged in, or
    its full weights (`init_from`). The earlier run must have trained the same model."""
    run = RunDir.existing(run_dir, key="init_from")
    trained = run.model_config().get("name")
    if trained != model_cfg.name:
        raise OnestopError(f"config key 'init_from': {run_dir} trained model={trained}; add model={trained}")
    weights = run.weights()
    if weights.is_adapter:
        return PeftModel.from_pretrained(model, str(weights.path)).merge_and_unload()
    saved = AutoModelForCausalLM.from_pretrained(str(weights.path), dtype=model.dtype)
    model.load_state_dict(saved.state_dict())
    return model


def load_dtype_state(model) -> dict | None:
    """The model's tensors in its load dtype where training raised some to fp32 (the master weights of
    bf16-mixed): the saved model is the size of the one loaded, one dtype throughout, like the base it
    replaces. None where nothing was raised."""
    loaded = getattr(model.config, "dtype", None)
    if not isinstance(loaded, torch.dtype) or loaded == torch.float32:
        return None
    state = model.state_dict()
    if all(t.dtype == loaded for t in state.values() if t.is_floating_point()):
        return None
    return {name: t.to(loaded) if t.is_floating_point() else t for name, t in state.items()}
