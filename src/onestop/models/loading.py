"""Turn a `model` config node into a tokenizer and an `AutoModelForCausalLM`."""

# Lazy imports: huggingface_hub, transformers, torch, bitsandbytes, flash_attn (inside the functions that need them).

import os
from pathlib import Path

from omegaconf import DictConfig

from onestop.core.errors import OnestopError
from onestop.core.hub import hub_reachable
from onestop.models.embedded import converted_gemma_dir, embedded_gemma_dir, is_embedded
from onestop.models.templates import bundled_template
from onestop.models.tool_formats import attach_response_template


def resolve_model_path(model_cfg: DictConfig) -> str:
    """A local directory for the model, or its hub id when it must be downloaded.

    Fails fast, in one line, when a local path does not exist or a hub model is neither cached nor reachable.
    """
    if is_embedded(model_cfg):
        return str(embedded_gemma_dir())
    path = os.path.expanduser(model_cfg.path)
    if Path(path).is_dir():
        return path
    if path.startswith((".", "/", "~")) or path.count("/") != 1:
        raise OnestopError(f"model.path={model_cfg.path}: no such directory (expected a local model dir or hub id)")
    from huggingface_hub import snapshot_download

    try:
        return snapshot_download(path, revision=model_cfg.revision, local_files_only=True)
    except Exception:  # not cached (or partially): it must come from the hub
        pass
    if not hub_reachable():
        raise OnestopError(
            f"model.path={path}: the Hugging Face Hub is unreachable from this machine and the model is not "
            "cached; use a local copy with model.path=/path/to/model, or the offline model with model=gemma3_270m"
        )
    return path


def model_identity(model_cfg: DictConfig) -> dict:
    """What a model node loads, told apart without loading, downloading or converting it: the local directory
    (the embedded Gemma's converted copy, or model.path) with the name, size and modification time of each
    file in it, or the hub id and revision. What is made from a model (a merged export, a serving copy) is
    keyed to it, so a model replaced in place, or another path on the same option, is never taken for it."""
    local = converted_gemma_dir() if is_embedded(model_cfg) else Path(os.path.expanduser(model_cfg.path))
    if not local.is_dir():
        return {"path": str(model_cfg.path), "revision": model_cfg.get("revision")}
    return directory_identity(local)


def directory_identity(directory: Path) -> dict:
    """A model directory's resolved path, and the name, size and modification time of each file in it (a hub
    snapshot's links count as the files they point to)."""
    files = sorted(p for p in Path(directory).iterdir() if p.is_file())
    return {
        "path": str(Path(directory).resolve()),
        "files": [[p.name, p.stat().st_size, p.stat().st_mtime_ns] for p in files],
    }


def load_tokenizer(model_cfg: DictConfig, path: str | None = None):
    """The model's tokenizer with a chat template (its own, or the bundled one the config names) and, when the
    config names a tool format, the response template that reads tool calls back out of generated text."""
    from transformers import AutoTokenizer

    path = path or resolve_model_path(model_cfg)
    tokenizer = AutoTokenizer.from_pretrained(
        path, revision=model_cfg.revision, trust_remote_code=model_cfg.trust_remote_code
    )
    if model_cfg.chat_template:
        tokenizer.chat_template = bundled_template(model_cfg.chat_template)
    if not tokenizer.chat_template:
        raise OnestopError(
            f"model={model_cfg.name}: the tokenizer has no chat template; set model.chat_template=chatml or gemma"
        )
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    attach_response_template(tokenizer, model_cfg.tool_format)
    return tokenizer


def is_vision_language(model_cfg: DictConfig, path: str | None = None) -> bool:
    """Whether the model reads images: its config has a vision tower (read from its config alone)."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(
        path or resolve_model_path(model_cfg),
        revision=model_cfg.revision,
        trust_remote_code=model_cfg.trust_remote_code,
    )
    return getattr(config, "vision_config", None) is not None


def quantization_config(quantization: DictConfig | dict | None):
    """A transformers `BitsAndBytesConfig` for a method's `quantization` node; CUDA and bitsandbytes only."""
    if not quantization or not quantization.get("load_in_4bit"):
        return None
    import torch

    if not torch.cuda.is_available():
        raise OnestopError(
            "method=qlora: a 4-bit base needs a CUDA GPU (bitsandbytes); on this machine use method=lora or method=dora"
        )
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        raise OnestopError('method=qlora: bitsandbytes is not installed; pip install -e ".[qlora]"') from None
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=quantization["quant_type"],
        bnb_4bit_use_double_quant=quantization["double_quant"],
        bnb_4bit_compute_dtype=getattr(torch, quantization["compute_dtype"]),
    )


def model_type(model_cfg: DictConfig, path: str | None = None) -> str:
    """The architecture family of the model (`qwen2`, `gemma3_text`, ...), read from its config alone."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(
        path or resolve_model_path(model_cfg),
        revision=model_cfg.revision,
        trust_remote_code=model_cfg.trust_remote_code,
    )
    return str(getattr(config, "model_type", ""))


def attention_kwargs(model_cfg: DictConfig) -> dict:
    """`attn_implementation` for from_pretrained / from_config; FlashAttention-2 checked here, in one line."""
    choice = model_cfg.get("attn_implementation")
    if not choice:
        return {}
    if choice == "flash_attention_2":
        import torch

        if not torch.cuda.is_available():
            raise OnestopError(
                "config key 'model.attn_implementation': flash_attention_2 needs a CUDA GPU; on this machine use sdpa"
            )
        try:
            import flash_attn  # noqa: F401
        except ImportError:
            raise OnestopError(
                "config key 'model.attn_implementation': flash_attention_2 needs flash-attn; pip install flash-attn "
                "--no-build-isolation, or use sdpa"
            ) from None
    return {"attn_implementation": choice}


def load_causal_lm(model_cfg: DictConfig, dtype: str = "float32", path: str | None = None, quantization=None):
    """The pretrained causal LM in `dtype` (`float32` or `bfloat16`), or 4-bit when `quantization` asks."""
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForImageTextToText

    bnb = quantization_config(quantization)
    path = path or resolve_model_path(model_cfg)
    extra = {"quantization_config": bnb, "device_map": {"": torch.cuda.current_device()}} if bnb else {}
    extra |= attention_kwargs(model_cfg)
    # a vision-language model: its vision tower, projector and language model, the same causal LM interface
    auto = AutoModelForImageTextToText if is_vision_language(model_cfg, path) else AutoModelForCausalLM
    model = auto.from_pretrained(
        path,
        revision=model_cfg.revision,
        trust_remote_code=model_cfg.trust_remote_code,
        dtype=getattr(torch, dtype),
        **extra,
    )
    model.config.use_cache = False  # training never reuses the KV cache; generation turns it back on
    return model
