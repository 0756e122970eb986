"""`invoke export`: a training run as a plain transformers model (adapter merged) or as its adapter alone.

A merged export is what servers load: weights, tokenizer with the chat template the run trained with, and
a generation config whose stop tokens include the template's end-of-turn token, so generation ends where
the model learned to end.
"""

import shutil
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from onestop.errors import OnestopError


def end_of_turn_ids(tokenizer) -> list[int]:
    """Special tokens the chat template puts after an answer (e.g. <|im_end|>, <end_of_turn>), plus EOS."""
    from onestop.data.tokenize import IGNORE_INDEX, tokenize_conversation

    probe = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]
    labels = tokenize_conversation(tokenizer, probe, max_seq_len=4096)["labels"]
    # all_special_ids names only bos/eos/pad/unk/mask in recent transformers; <end_of_turn> and its kin are
    # added tokens flagged special.
    special = set(tokenizer.all_special_ids) | {i for i, t in tokenizer.added_tokens_decoder.items() if t.special}
    ids = {t for t in labels if t != IGNORE_INDEX and t in special}
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    return sorted(ids)


def stop_ids_with_end_of_turn(configured, tokenizer) -> list[int]:
    """A generation config's `eos_token_id` (an id, a list or None) plus the chat template's end-of-turn ids."""
    configured = configured if isinstance(configured, list) else [configured]
    return sorted({*end_of_turn_ids(tokenizer), *(i for i in configured if i is not None)})


def export_run(cfg: DictConfig) -> Path:
    run_dir = Path(cfg.run_dir)
    if not (run_dir / "config.yaml").is_file():
        raise OnestopError(f"config key 'run_dir': {run_dir} is not a training run (no config.yaml)")
    adapter, full = run_dir / "adapter", run_dir / "model"
    target = Path(cfg.output) if cfg.output else run_dir / f"export-{cfg.format}"
    if cfg.format == "adapter":
        if not adapter.is_dir():
            raise OnestopError(f"export.format=adapter: {run_dir} has no adapter/ (a full or freeze run)")
        _copy_atomic(adapter, target)
        return target
    return _export_merged(run_dir, adapter if adapter.is_dir() else full, target, cfg.dtype)


def _export_merged(run_dir: Path, source: Path, target: Path, dtype: str) -> Path:
    import torch
    from peft import PeftConfig, PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from onestop.models import load_causal_lm, resolve_model_path
    from onestop.training.export import save_pretrained_atomic

    if not source.is_dir():
        raise OnestopError(f"config key 'run_dir': {run_dir} has neither adapter/ nor model/ (did training finish?)")
    tokenizer = AutoTokenizer.from_pretrained(source)
    if source.name == "adapter":
        if PeftConfig.from_pretrained(source).is_prompt_learning:
            raise OnestopError("export: virtual-token adapters (method=ptuning) cannot be merged; use format=adapter")
        model_cfg = OmegaConf.load(run_dir / "config.yaml").model
        base = load_causal_lm(model_cfg, dtype, resolve_model_path(model_cfg))
        model = PeftModel.from_pretrained(base, source).merge_and_unload()
    else:
        model = AutoModelForCausalLM.from_pretrained(source, dtype=getattr(torch, dtype))
    model.config.use_cache = True
    model.generation_config.eos_token_id = stop_ids_with_end_of_turn(model.generation_config.eos_token_id, tokenizer)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    target.parent.mkdir(parents=True, exist_ok=True)
    return save_pretrained_atomic(model, tokenizer, target)


def _copy_atomic(source: Path, target: Path) -> None:
    from onestop.training.export import staged_directory

    with staged_directory(target) as staging:
        shutil.copytree(source, staging, dirs_exist_ok=True)


def run_export(cfg: DictConfig) -> Path:
    target = export_run(cfg)
    print(f"Exported ({cfg.format}): {target}", flush=True)
    return target
