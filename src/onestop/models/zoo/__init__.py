"""Architecture configs of the model zoo, shipped so that sizes and memory estimates need no hub.

Each `<owner>--<name>.json` beside this file is the config.json its hub id publishes (the embedded Gemma's
is what transformers builds from its GGUF). A few KB each, they let `invoke models` and memory estimates
count parameters offline, on a machine that never downloads the weights.
"""

# Lazy imports: huggingface_hub, torch, transformers (inside the functions that need them).

import functools
import json
import os
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from onestop.core.errors import OnestopError
from onestop.core.hub import hub_reachable
from onestop.models.embedded import converted_gemma_dir, is_embedded

_DIR = Path(__file__).parent
EMBEDDED_ID = "embedded/gemma-3-270m"
"""The name the embedded Gemma-3-270M's config is shipped under (it has no hub id of its own)."""


def _chatglm_as_glm(c: dict) -> dict:
    # ChatGLM's query_key_value (biased, fused) / dense / dense_h_to_4h (gate and up) / dense_4h_to_h are GLM's
    # q, k, v (biased) / o_proj / gate_up_proj / down_proj, and both rotate half of each head.
    return {
        "hidden_size": c["hidden_size"],
        "intermediate_size": c["ffn_hidden_size"],
        "num_hidden_layers": c["num_layers"],
        "num_attention_heads": c["num_attention_heads"],
        "num_key_value_heads": (
            c["multi_query_group_num"] if c.get("multi_query_attention") else c["num_attention_heads"]
        ),
        "head_dim": c.get("kv_channels") or c["hidden_size"] // c["num_attention_heads"],
        "vocab_size": c["padded_vocab_size"],
        "max_position_embeddings": c.get("seq_length", 8192),
        "attention_bias": c.get("add_qkv_bias", False),
        "rms_norm_eps": c.get("layernorm_epsilon", 1e-5),
        "partial_rotary_factor": 0.5,
        "tie_word_embeddings": False,  # its output_layer is a weight of its own
        "pad_token_id": c.get("pad_token_id"),  # GLM's default id lies outside ChatGLM's vocabulary
    }


def _llama_shapes(c: dict, attention_bias: bool, tie: bool) -> dict:
    heads = c["num_attention_heads"]
    shapes = {
        "hidden_size": c["hidden_size"],
        "intermediate_size": c["intermediate_size"],
        "num_hidden_layers": c["num_hidden_layers"],
        "num_attention_heads": heads,
        "num_key_value_heads": c.get("num_key_value_heads") or heads,
        "vocab_size": c["vocab_size"],
        "max_position_embeddings": c.get("max_position_embeddings", 4096),
        "rms_norm_eps": c.get("rms_norm_eps", 1e-6),
        "attention_bias": attention_bias,
        "tie_word_embeddings": tie,
        "pad_token_id": c.get("pad_token_id"),
    }
    if c.get("head_dim"):
        shapes["head_dim"] = c["head_dim"]
    return shapes


# Families whose checkpoints need their own Python code, each as the native transformers type whose weights
# have the same shapes. Fields are read under the family's own names, with its config class's defaults.
_REMOTE_EQUIVALENTS = {
    "chatglm": ("glm", _chatglm_as_glm),
    # InternLM2's wqkv is q, k and v fused; its bias flag covers wo too, as Llama's attention_bias does.
    "internlm2": ("llama", lambda c: _llama_shapes(c, attention_bias=c.get("bias", True), tie=False)),
    # InternLM3 is Llama-shaped (o_proj's bias has a flag of its own; no released checkpoint sets either).
    "internlm3": ("llama", lambda c: _llama_shapes(c, attention_bias=c.get("qkv_bias", False), tie=False)),
    # Baichuan's W_pack is q, k and v fused; its NormHead output layer holds a weight of its own.
    "baichuan": ("llama", lambda c: _llama_shapes(c, attention_bias=False, tie=False)),
    # MiniCPM is Llama with scaled embeddings, residuals and logits (scale_emb, scale_depth): no extra weights.
    "minicpm": ("llama", lambda c: _llama_shapes(c, attention_bias=False, tie=c.get("tie_word_embeddings", True))),
}


# The same equivalence, module by module: the remote family's linear layers as the native type's, for LoRA
# targets named in the family's own terms (model.lora_target_modules).
_NATIVE_MODULES = {
    "chatglm": {
        "query_key_value": ["q_proj", "k_proj", "v_proj"],
        "dense": ["o_proj"],
        "dense_h_to_4h": ["gate_up_proj"],
        "dense_4h_to_h": ["down_proj"],
    },
    "internlm2": {
        "wqkv": ["q_proj", "k_proj", "v_proj"],
        "wo": ["o_proj"],
        "w1": ["gate_proj"],
        "w3": ["up_proj"],
        "w2": ["down_proj"],
    },
    "baichuan": {"W_pack": ["q_proj", "k_proj", "v_proj"]},
}


def native_lora_targets(config: dict, targets: list[str]) -> list[str]:
    """LoRA target module names of `config`'s family, as named in `native_config(config)`'s model.

    A fused projection becomes its parts, so an adapter on the native model has slightly more parameters
    than on the fused one (one input matrix per part instead of one shared).
    """
    modules = _NATIVE_MODULES.get(config.get("model_type"), {})
    return list(dict.fromkeys(native for name in targets for native in modules.get(name, [name])))


def _shipped_path(hub_id: str) -> Path:
    return _DIR / f"{hub_id.replace('/', '--')}.json"


def shipped_config(hub_id: str) -> dict | None:
    """The config.json shipped for `hub_id` (e.g. `Qwen/Qwen2.5-0.5B-Instruct`); None when none is shipped."""
    path = _shipped_path(hub_id)
    return json.loads(path.read_text()) if path.is_file() else None


def _base_config(model_cfg) -> tuple[dict, str]:
    if is_embedded(model_cfg):
        converted = converted_gemma_dir() / "config.json"
        if converted.is_file():
            return json.loads(converted.read_text()), "local dir"
        return shipped_config(EMBEDDED_ID), "shipped"
    path = os.path.expanduser(model_cfg.path)
    if Path(path).is_dir():
        local = Path(path) / "config.json"
        if not local.is_file():
            raise OnestopError(f"model.path={model_cfg.path}: the directory has no config.json")
        return json.loads(local.read_text()), "local dir"
    if path.startswith((".", "/", "~")) or path.count("/") != 1:
        raise OnestopError(f"model.path={model_cfg.path}: no such directory (expected a local model dir or hub id)")
    shipped = shipped_config(path)
    if shipped is not None:
        return shipped, "shipped"
    from huggingface_hub import hf_hub_download

    revision = model_cfg.get("revision")
    try:
        cached = hf_hub_download(path, "config.json", revision=revision, local_files_only=True)
        return json.loads(Path(cached).read_text()), "hub cache"
    except Exception:  # not cached: only the hub has it
        pass
    if not hub_reachable():
        raise OnestopError(
            f"model.path={path}: no architecture config is shipped or cached for it and the Hugging Face Hub is "
            "unreachable; use a local copy with model.path=/path/to/model"
        )
    return json.loads(Path(hf_hub_download(path, "config.json", revision=revision)).read_text()), "hub"


def architecture_config(model_cfg: DictConfig) -> tuple[dict, str]:
    """The config.json of a `model` config node, and where it came from.

    Looked up in this order: a local directory's own config.json, the embedded Gemma's (converted, or
    shipped), the file shipped here for the hub id, the Hugging Face cache, the hub itself (config.json
    only, when reachable). For `model.from_scratch`, `model.config_overrides` apply, and
    `model.train_tokenizer` sets the vocabulary size.

    Returns:
        The config dict, and its origin: `shipped`, `local dir`, `hub cache` or `hub`.
    """
    config, origin = _base_config(model_cfg)
    if model_cfg.get("from_scratch"):
        if model_cfg.get("train_tokenizer"):
            # the trained tokenizer's size, give or take the special tokens it keeps
            config = {**config, "vocab_size": model_cfg.train_tokenizer}
        if model_cfg.get("config_overrides"):
            config = {**config, **OmegaConf.to_container(model_cfg.config_overrides, resolve=True)}
    return config, origin


def native_config(config: dict):
    """A transformers `PretrainedConfig`, instantiable without remote code, with the weight shapes of `config`.

    Estimates must work without the checkpoint's own Python code (often absent offline, and code we
    would rather not run to count parameters), so families that need it (ChatGLM, InternLM2/3, Baichuan,
    MiniCPM) map to the native architecture whose weights have the same shapes: ChatGLM to GLM, the
    others to Llama. Settings that hold no weights (RoPE, norm scaling) are left out of that mapping. A
    multimodal Gemma 3 config, and any vision-language config, yields its language model's.
    """
    from transformers import CONFIG_MAPPING, AutoConfig

    if config.get("model_type") == "gemma3" and "text_config" in config:
        config = {"model_type": "gemma3_text", **config["text_config"]}
    elif is_vision_language_config(config):  # its language model; the vision tower is counted apart
        config = _language_model_config(config)
    model_type = config.get("model_type")
    if model_type in _REMOTE_EQUIVALENTS:
        native_type, equivalent = _REMOTE_EQUIVALENTS[model_type]
        try:
            fields = equivalent(config)
        except KeyError as missing:
            raise OnestopError(
                f"model.path: this {model_type} config has no {missing} field; estimates need it"
            ) from None
        model_type = native_type
    elif model_type in CONFIG_MAPPING:
        fields = {key: value for key, value in config.items() if key not in {"model_type", "auto_map"}}
        depth, layer_types = fields.get("num_hidden_layers"), fields.get("layer_types")
        if depth and layer_types and len(layer_types) != depth:
            # a from_scratch depth override: per-layer attention kinds repeat the original pattern
            fields["layer_types"] = (list(layer_types) * depth)[:depth]
    else:
        raise OnestopError(
            f"model.path: architecture {model_type!r} is neither in transformers nor mapped to one for estimates"
        )
    return AutoConfig.for_model(model_type, **fields)


@functools.lru_cache(maxsize=64)
def _parameter_counts(key: str) -> tuple[tuple[str, int], ...]:
    import torch
    from transformers import AutoModelForCausalLM

    # Meta tensors have shapes and no storage: an 8B model is built in milliseconds, in no memory.
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(native_config(json.loads(key)))
    embedding = model.get_input_embeddings().weight
    output = model.get_output_embeddings()
    layers = model.base_model.layers
    counts = {
        "total": sum(p.numel() for p in model.parameters()),  # a tied weight is counted once
        "embedding": embedding.numel(),
        "head": 0 if output is None or output.weight is embedding else output.weight.numel(),
        "per_layer": sum(p.numel() for p in layers.parameters()) // len(layers),
        "layers": len(layers),
    }
    return tuple(counts.items())


def is_vision_language_config(config: dict) -> bool:
    """Whether a config.json dict is a vision-language model's: a vision tower beside a language model."""
    return "vision_config" in config


def _full_config(config: dict):
    from transformers import AutoConfig

    fields = {k: v for k, v in config.items() if k not in {"model_type", "auto_map", "architectures"}}
    return AutoConfig.for_model(config["model_type"], **fields)


# Language models of vision-language families that transformers builds only inside the whole model, as the
# causal LM with the same weight shapes (their multimodal RoPE holds no weights).
_LANGUAGE_EQUIVALENTS = {"qwen2_vl_text": "qwen2", "qwen2_5_vl_text": "qwen2", "qwen3_vl_text": "qwen3"}


def _language_model_config(config: dict) -> dict:
    """A vision-language config's language model as a config.json dict of its own (nested under text_config, or
    at the top level as older Qwen-VL configs have it)."""
    text = _full_config(config).get_text_config().to_dict()
    if "tie_word_embeddings" in config:  # the whole model's choice is its language model's
        text["tie_word_embeddings"] = config["tie_word_embeddings"]
    dropped = {"architectures", "transformers_version", "_name_or_path"}
    if text["model_type"] in _LANGUAGE_EQUIVALENTS:
        text["model_type"] = _LANGUAGE_EQUIVALENTS[text["model_type"]]
        dropped |= {"rope_parameters", "rope_scaling", "layer_types"}
    return {k: v for k, v in text.items() if k not in dropped}


@functools.lru_cache(maxsize=16)
def _vision_parameters(key: str) -> int:
    import torch
    from transformers import AutoModelForImageTextToText

    with torch.device("meta"):
        model = AutoModelForImageTextToText.from_config(_full_config(json.loads(key)))
    language = model.get_decoder()
    output = model.get_output_embeddings()
    outside = {id(p) for p in language.parameters()} | ({id(output.weight)} if output is not None else set())
    return sum(p.numel() for p in model.parameters() if id(p) not in outside)


def parameter_counts(config: dict) -> dict:
    """Parameters of the architecture in `config` (a config.json dict), counted without any weights.

    Returns:
        `total`, `embedding` (input embeddings), `head` (output head; 0 when tied to the embeddings),
        `per_layer` (one decoder layer), `layers` (how many) and `vision` (a vision-language model's vision
        tower and projector, in `total` too; 0 for a text model).
    """
    key = json.dumps(config, sort_keys=True)
    counts = dict(_parameter_counts(key))
    counts["vision"] = _vision_parameters(key) if is_vision_language_config(config) else 0
    counts["total"] += counts["vision"]
    return counts
