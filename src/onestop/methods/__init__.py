"""Fine-tuning methods: each takes the pretrained model and returns it ready to train.

Chosen with the `method` config group; the config node's `_target_` names one of these functions.
"""

from collections.abc import Callable

from omegaconf import DictConfig

from onestop.config.nodes import instantiate_node
from onestop.methods.freeze import apply_freeze, apply_full
from onestop.methods.lora import apply_lora, apply_qlora, lora_arguments
from onestop.methods.prompt import apply_prompt_learning

# Fields a method node declares about itself (which method, whether it trains an adapter); its function
# does not take them.
METHOD_IDENTITY = ("name", "adapter")


def method_from_config(node: DictConfig) -> Callable:
    """The function the `method` node names, with its settings bound: `method_from_config(cfg.method)(model)`."""
    return instantiate_node(node, METHOD_IDENTITY)


__all__ = [
    "METHOD_IDENTITY",
    "apply_freeze",
    "apply_full",
    "apply_lora",
    "apply_prompt_learning",
    "apply_qlora",
    "lora_arguments",
    "method_from_config",
]
