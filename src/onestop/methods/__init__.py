"""Fine-tuning methods: each takes the pretrained model and returns it ready to train.

Chosen with the `method` config group; the config node's `_target_` names one of these functions.
"""

from onestop.methods.freeze import apply_freeze, apply_full
from onestop.methods.lora import apply_lora, apply_qlora
from onestop.methods.prompt import apply_prompt_learning

__all__ = ["apply_freeze", "apply_full", "apply_lora", "apply_prompt_learning", "apply_qlora"]
