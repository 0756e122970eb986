"""Which architectures compute their logits as a plain linear head over the last hidden states."""

# Architectures whose logits are exactly `lm_head(last_hidden_state)` (no soft-capping or scaling), so
# the head can be applied to the answer positions alone, or a chunk of them at a time. With a 262k vocabulary
# (Gemma) the head costs more than the rest of the model; skipping prompt and padding positions roughly halves
# a CPU step.
PLAIN_HEAD_MODEL_TYPES = frozenset({"qwen2", "qwen3", "llama", "mistral", "gemma3_text", "glm", "phi3"})


def is_plain_head(config) -> bool:
    """Whether a transformers config (or its dict) describes logits that are exactly `lm_head(hidden)`."""
    read = config.get if isinstance(config, dict) else lambda key, default=None: getattr(config, key, default)
    return read("model_type") in PLAIN_HEAD_MODEL_TYPES and not read("final_logit_softcapping", None)
