"""Prompt-learning methods: the model stays frozen and learns virtual tokens.

`kind=prompt` learns input embeddings prepended to every sequence (prompt tuning), `kind=p_tuning`
produces them with a small MLP encoder (P-Tuning), `kind=prefix` learns keys and values for every
layer (prefix tuning / P-Tuning v2).
"""

# Lazy imports: peft (inside the functions that need them).

from onestop.core.errors import OnestopError

KINDS = ("prompt", "p_tuning", "prefix")


def apply_prompt_learning(model, kind: str, num_virtual_tokens: int, encoder_hidden_size: int | None = None):
    """Wrap `model` in a peft prompt-learning model of the chosen kind."""
    from peft import PrefixTuningConfig, PromptEncoderConfig, PromptTuningConfig, get_peft_model

    if kind not in KINDS:
        raise OnestopError(f"config key 'method.kind': expected one of {', '.join(KINDS)}, got {kind!r}")
    if num_virtual_tokens < 1:
        raise OnestopError(f"config key 'method.num_virtual_tokens': expected at least 1, got {num_virtual_tokens}")
    if kind == "prompt":
        config = PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=num_virtual_tokens)
    elif kind == "p_tuning":
        hidden = encoder_hidden_size or model.config.hidden_size
        config = PromptEncoderConfig(
            task_type="CAUSAL_LM", num_virtual_tokens=num_virtual_tokens, encoder_hidden_size=hidden
        )
    else:
        config = PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=num_virtual_tokens)
    return get_peft_model(model, config)


def is_prompt_learning(model) -> bool:
    """True for a peft model whose adapter adds virtual tokens (its logits then cover them too)."""
    config = getattr(model, "active_peft_config", None)
    return bool(getattr(config, "is_prompt_learning", False))
