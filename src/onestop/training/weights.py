"""Saving what a run trained into its run directory: the adapter, or the full model."""

from pathlib import Path

from peft import PeftModel

from onestop.core.files import save_pretrained_atomic
from onestop.core.rundir import RunDir


def export_trained(model, tokenizer, run: RunDir) -> Path:
    """RUN/adapter (PEFT format) for adapter methods, else a plain transformers model in RUN/model."""
    adapter = isinstance(model, PeftModel)
    if not adapter:
        model.config.use_cache = True
    return save_pretrained_atomic(model, tokenizer, run.weights_dir(adapter))
