"""Pretraining from scratch: a fresh tokenizer trained on the corpus, and randomly initialised weights."""

# Lazy imports: torch, transformers (inside the functions that need them).

from omegaconf import DictConfig

from onestop.core.errors import OnestopError
from onestop.models.loading import attention_kwargs


def fresh_model(model_cfg: DictConfig, path: str, tokenizer, dtype: str):
    """The architecture of `path` (with `model.config_overrides`), randomly initialised, sized to `tokenizer`."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(
        path, revision=model_cfg.revision, trust_remote_code=model_cfg.trust_remote_code
    )
    for key, value in model_cfg.config_overrides.items():
        if not hasattr(config, key):
            raise OnestopError(f"config key 'model.config_overrides.{key}': {type(config).__name__} has no such field")
        setattr(config, key, value)
    layer_types = getattr(config, "layer_types", None)
    if layer_types and len(layer_types) != config.num_hidden_layers and "layer_types" not in model_cfg.config_overrides:
        # Per-layer attention kinds (sliding / full) follow the new depth, repeating the original pattern.
        config.layer_types = (list(layer_types) * config.num_hidden_layers)[: config.num_hidden_layers]
    config.vocab_size = len(tokenizer)
    for name in ("bos_token_id", "eos_token_id", "pad_token_id"):
        setattr(config, name, getattr(tokenizer, name))
    model = AutoModelForCausalLM.from_config(
        config,
        dtype=getattr(torch, dtype),
        trust_remote_code=model_cfg.trust_remote_code,
        **attention_kwargs(model_cfg),
    )
    model.config.use_cache = False
    return model
