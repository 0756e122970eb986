"""LoRA and its variants: low-rank adapters on chosen linear layers; the base weights stay frozen.

DoRA (`method=dora`) splits each update into magnitude and direction; rsLoRA (`method.use_rslora=true`)
scales by alpha / sqrt(r) so higher ranks keep learning; QLoRA (`method=qlora`) trains LoRA on a base
loaded in 4-bit NF4 (see `onestop.models.loading.quantization_config`).
"""

# Lazy imports: peft (inside the functions that need them).

import inspect
import re
from collections.abc import Mapping

from onestop.core.errors import OnestopError

# A vision-language model's vision tower (LLaVA, Gemma 3, InternVL: vision_tower; Qwen-VL: visual) keeps its
# weights: its layers share names with the language model's (q_proj, gate_proj), so a target list would
# otherwise adapt them too. A text model has no such module.
VISION_TOWER_MODULES = r"(.*\.)?(vision_tower|visual|vision_model)(\..*)?"


def apply_lora(
    model,
    r: int,
    alpha: int,
    dropout: float,
    target_modules: list[str],
    use_dora: bool = False,
    use_rslora: bool = False,
):
    """Wrap `model` in a peft `PeftModel` with a LoRA adapter on `target_modules`."""
    from peft import LoraConfig, get_peft_model

    targets = list(target_modules)
    config = LoraConfig(
        r=r,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=targets[0] if targets == ["all-linear"] else targets,
        use_dora=use_dora,
        use_rslora=use_rslora,
        # only where there is a tower: the adapter's config keeps the pattern, and peft warns on loading an
        # adapter whose pattern excluded nothing
        exclude_modules=VISION_TOWER_MODULES if has_vision_tower(model) else None,
        # a reward model's score head (stage=rm) is new: peft trains and saves it whole beside the adapter
        task_type="SEQ_CLS" if type(model).__name__.endswith("ForSequenceClassification") else "CAUSAL_LM",
    )
    try:
        return get_peft_model(model, config)
    except ValueError as err:
        raise OnestopError(f"config key 'method.target_modules': {str(err).splitlines()[0]}") from None


def has_vision_tower(model) -> bool:
    return any(re.fullmatch(VISION_TOWER_MODULES, name) for name, _ in model.named_modules())


def apply_qlora(model, quantization: dict, gradient_checkpointing: bool = True, **lora):
    """LoRA on a 4-bit base: make the quantized model trainable (norms in fp32, input grads), then adapt.

    `quantization` was applied when the base was loaded; it sits in this method's config so that one
    `method=qlora` choice carries both halves.
    """
    from peft import prepare_model_for_kbit_training

    model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=gradient_checkpointing)
    return apply_lora(model, **lora)


def lora_arguments(method: Mapping) -> dict:
    """The entries of a method node that `apply_lora` takes (rank, alpha, dropout, targets, DoRA, rsLoRA, and any
    added later), read off its signature: how QLoRA's LoRA half is applied apart from its 4-bit preparation."""
    names = list(inspect.signature(apply_lora).parameters)[1:]  # after the model
    return {name: method[name] for name in names if name in method}
