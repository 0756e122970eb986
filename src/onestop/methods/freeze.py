"""Full fine-tuning and Freeze tuning (only the last decoder layers, or named modules, learn)."""

import torch

from onestop.core.errors import OnestopError


def apply_full(model):
    """Every parameter trains."""
    model.requires_grad_(True)
    return model


def decoder_layers(model) -> torch.nn.ModuleList:
    """The stack of transformer blocks: the longest ModuleList in the model."""
    lists = [m for m in model.modules() if isinstance(m, torch.nn.ModuleList)]
    if not lists:
        raise OnestopError(f"method=freeze: found no decoder layers in {type(model).__name__}")
    return max(lists, key=len)


def apply_freeze(model, trainable_layers: int, trainable_modules: list[str] | None = None):
    """Freeze everything except the last `trainable_layers` decoder layers and the final norm.

    `trainable_modules` instead names what trains: parameters whose name contains any of the strings
    (e.g. `[mlp]`, `[lm_head, layers.0.]`).
    """
    if trainable_modules:
        model.requires_grad_(False)
        matched = [p for name, p in model.named_parameters() if any(key in name for key in trainable_modules)]
        if not matched:
            raise OnestopError(
                f"config key 'method.trainable_modules': no parameter name contains any of {list(trainable_modules)}"
            )
        for parameter in matched:
            parameter.requires_grad_(True)
        return model
    layers = decoder_layers(model)
    if trainable_layers > len(layers):
        raise OnestopError(
            f"config key 'method.trainable_layers': the model has {len(layers)} layers, got {trainable_layers}"
        )
    model.requires_grad_(False)
    for layer in layers[len(layers) - trainable_layers :]:
        layer.requires_grad_(True)
    base = getattr(model, "model", None)
    final_norm = getattr(base, "norm", None)
    if isinstance(final_norm, torch.nn.Module):
        final_norm.requires_grad_(True)
    return model
