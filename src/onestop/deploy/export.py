"""`invoke export`: a training run as a plain transformers model (adapter merged) or as its adapter alone.

A merged export is what servers load: weights, tokenizer with the chat template the run trained with, and
a generation config whose stop tokens include the template's end-of-turn token, so generation ends where
the model learned to end. Each export records the fingerprint of the weights it was made from
(onestop-source.json); `invoke deploy` serves RUN/export-merged only while that still matches the run.
"""

# Lazy imports: torch, peft, transformers (inside the functions that need them).

import hashlib
import json
import shutil
from pathlib import Path

from omegaconf import DictConfig

from onestop.core.errors import OnestopError
from onestop.core.files import staged_directory
from onestop.core.rundir import RunDir, Weights, made_from, record_source
from onestop.data.tokenize import IGNORE_INDEX, tokenize_conversation
from onestop.deploy.gguf import check_outtype, current_gguf, gguf_fingerprint, write_gguf
from onestop.models import load_causal_lm, resolve_model_path
from onestop.models.loading import model_identity
from onestop.models.reward import refuse_reward_model


def end_of_turn_ids(tokenizer) -> list[int]:
    """Special tokens the chat template puts after an answer (e.g. <|im_end|>, <end_of_turn>), plus EOS."""
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


def export_fingerprint(run: RunDir, export_format: str = "merged", trained: str | None = None) -> str:
    """What an export of `run` is made from: its trained weights (`trained`: their fingerprint, when already
    taken) and, when an adapter is merged, its base."""
    fingerprint = trained or run.weights_fingerprint()
    if export_format != "merged" or not run.weights().is_adapter:
        return fingerprint
    base = json.dumps(model_identity(run.model_config()), sort_keys=True)
    # a vision-language export carries its processor: one merged before it did is made again, never served
    processor = "\0processor" if keeps_processor(run.weights().path) else ""
    return hashlib.sha256(f"{fingerprint}\0{base}{processor}".encode()).hexdigest()


def keeps_processor(weights_dir: Path) -> bool:
    """Whether saved weights keep a vision-language processor beside their tokenizer (what reads their images)."""
    return (Path(weights_dir) / "processor_config.json").is_file()


def current_export(run: RunDir, export_format: str = "merged") -> bool:
    """Whether RUN/export-FORMAT was made from the run's weights as they are now (an export of an earlier run
    in the same directory, or one made before the fingerprint was recorded, is not)."""
    if not run.has_export(export_format):
        return False
    return made_from(run.export_dir(export_format)) == export_fingerprint(run, export_format)


def export_run(cfg: DictConfig) -> Path:
    """The run as `cfg.format` (merged, adapter or gguf) in `cfg.output`, by default RUN/export-FORMAT."""
    run = RunDir.existing(cfg.run_dir)
    refuse_reward_model(run, "exported as a language model")
    target = Path(cfg.output) if cfg.output else run.export_dir(cfg.format)
    weights = run.weights()
    if cfg.format == "adapter":
        if not weights.is_adapter:
            raise OnestopError(f"export.format=adapter: {run.path} has no adapter/ (a full or freeze run)")
        fingerprint = export_fingerprint(run, "adapter")
        with staged_directory(target) as staging:
            shutil.copytree(weights.path, staging, dirs_exist_ok=True)
            record_source(staging, fingerprint, run_dir=str(run.path), weights=str(weights.path))
        return target
    if cfg.format == "gguf":
        return _export_gguf(run, weights, target, cfg)
    return _export_merged(run, weights, target, cfg.dtype)


def _export_gguf(run: RunDir, weights: Weights, target: Path, cfg: DictConfig) -> Path:
    """RUN/export-merged (made first unless current) converted to GGUF; a current GGUF is kept as it is."""
    fingerprint = gguf_fingerprint(export_fingerprint(run), cfg.gguf.outtype)
    if current_gguf(target, fingerprint):
        print(f"GGUF up to date with the run's weights (reused): {target}", flush=True)
        return target
    check_outtype(cfg.gguf.outtype)  # before minutes of merging
    merged = run.export_dir("merged")
    if not current_export(run):
        _export_merged(run, weights, merged, cfg.dtype)
    model = run.model_config()
    return write_gguf(merged, target, cfg.gguf.outtype, fingerprint, model.name, model.template_family,
                      run_dir=str(run.path))  # fmt: skip


def _export_merged(run: RunDir, weights: Weights, target: Path, dtype: str) -> Path:
    import torch
    from peft import PeftConfig, PeftModel
    from transformers import AutoModelForCausalLM, AutoProcessor, AutoTokenizer

    trained = run.weights_fingerprint()  # before they are read: weights replaced meanwhile leave a stale export
    tokenizer = AutoTokenizer.from_pretrained(weights.path)
    if weights.is_adapter:
        if PeftConfig.from_pretrained(weights.path).is_prompt_learning:
            raise OnestopError("export: virtual-token adapters (method=ptuning) cannot be merged; use format=adapter")
        model_cfg = run.model_config()
        base = load_causal_lm(model_cfg, dtype, resolve_model_path(model_cfg))
        model = PeftModel.from_pretrained(base, weights.path).merge_and_unload()
    else:
        model = AutoModelForCausalLM.from_pretrained(weights.path, dtype=getattr(torch, dtype))
    model.config.use_cache = True
    model.generation_config.eos_token_id = stop_ids_with_end_of_turn(model.generation_config.eos_token_id, tokenizer)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    fingerprint = export_fingerprint(run, trained=trained)  # the base loaded: the embedded Gemma is converted now
    with staged_directory(target) as staging:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        if keeps_processor(weights.path):  # without it a server reads the model as text-only and drops images
            AutoProcessor.from_pretrained(weights.path).save_pretrained(staging)
        record_source(staging, fingerprint, run_dir=str(run.path), weights=str(weights.path), dtype=dtype)
    return target


def run_export(cfg: DictConfig) -> Path:
    target = export_run(cfg)
    print(f"Exported ({cfg.format}): {target}", flush=True)
    return target
