"""Loading models and tokenizers: from the hub, a local directory, or the embedded offline Gemma."""

from onestop.models.loading import load_causal_lm, load_tokenizer, resolve_model_path
from onestop.models.processor import load_processor

__all__ = ["load_causal_lm", "load_processor", "load_tokenizer", "resolve_model_path"]
