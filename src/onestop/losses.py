"""Losses of a causal LM over a batch's labelled tokens, shared by training and evaluation (no Lightning here).

Labels equal to IGNORE_INDEX (prompts, padding, the first token of each packed example) carry no loss.
"""

import torch
import torch.nn.functional as F

from onestop.data.packing import model_inputs
from onestop.data.tokenize import IGNORE_INDEX
from onestop.methods.prompt import is_prompt_learning

# Architectures whose logits are exactly `lm_head(last_hidden_state)` (no soft-capping or scaling), so
# the head can be applied to the answer positions alone. With a 262k vocabulary (Gemma) the head costs
# more than the rest of the model; skipping prompt and padding positions roughly halves a CPU step.
PLAIN_HEAD_MODEL_TYPES = {"qwen2", "qwen3", "llama", "mistral", "gemma3_text", "glm", "phi3"}


def token_loss_sum(model, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int]:
    """Summed next-token cross-entropy over the labelled tokens of a batch, and how many there were."""
    targets = batch["labels"][:, 1:]
    keep = targets != IGNORE_INDEX
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    config = base.config
    if is_prompt_learning(model):
        # The adapter prepends virtual tokens inside forward(); the last positions are the real ones.
        logits = model(**model_inputs(batch)).logits
        logits = logits[:, -batch["input_ids"].size(1) : -1]
        logits, flat_targets = logits.reshape(-1, logits.size(-1)), targets.reshape(-1)
    elif config.model_type in PLAIN_HEAD_MODEL_TYPES and not getattr(config, "final_logit_softcapping", None):
        hidden = base.get_decoder()(**model_inputs(batch))
        logits = base.get_output_embeddings()(hidden.last_hidden_state[:, :-1][keep])
        flat_targets = targets[keep]
    else:
        logits = model(**model_inputs(batch)).logits[:, :-1]
        logits, flat_targets = logits.reshape(-1, logits.size(-1)), targets.reshape(-1)
    loss = F.cross_entropy(logits.float(), flat_targets, ignore_index=IGNORE_INDEX, reduction="sum")
    return loss, int(keep.sum())


def sequence_logps(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Summed log-probability of each row's labelled tokens."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1].float()
    targets = batch["labels"][:, 1:]
    keep = targets != IGNORE_INDEX
    token_logps = torch.gather(F.log_softmax(logits, dim=-1), 2, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return (token_logps * keep).sum(-1)
