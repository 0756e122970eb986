"""LoRA: low-rank adapters on chosen linear layers; the base weights stay frozen."""

from onestop.errors import OnestopError


def apply_lora(model, r: int, alpha: int, dropout: float, target_modules: list[str]):
    """Wrap `model` in a peft `PeftModel` with a LoRA adapter on `target_modules`."""
    from peft import LoraConfig, get_peft_model

    targets = list(target_modules)
    config = LoraConfig(
        r=r,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=targets[0] if targets == ["all-linear"] else targets,
        task_type="CAUSAL_LM",
    )
    try:
        return get_peft_model(model, config)
    except ValueError as err:
        raise OnestopError(f"config key 'method.target_modules': {str(err).splitlines()[0]}") from None
