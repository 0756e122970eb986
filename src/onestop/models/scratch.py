"""Pretraining from scratch: a fresh tokenizer trained on the corpus, and randomly initialised weights."""

from collections.abc import Iterator

from omegaconf import DictConfig

from onestop.errors import OnestopError


def corpus_texts(data_cfg: DictConfig) -> Iterator[str]:
    """Every document of the training sources, read the way the data stage reads them."""
    from onestop.data.formats import converter, map_columns
    from onestop.data.prepare import sources_of
    from onestop.data.records import read_records

    for source in sources_of(data_cfg):
        if source.format != "text":
            raise OnestopError(
                f"model.train_tokenizer: trains on raw text (data=text); got data.format={source.format}"
            )
        to_example = converter("text")
        for record in read_records(source.path, source.split, source.subset):
            yield to_example(map_columns(record, source.columns))["text"]


def train_tokenizer(template_tokenizer, data_cfg: DictConfig, vocab_size: int):
    """A tokenizer of the same kind (pre-tokenizer, special tokens, chat template) learned on this corpus."""
    if not template_tokenizer.is_fast:
        raise OnestopError("model.train_tokenizer: needs a fast (tokenizers-backed) tokenizer to start from")
    tokenizer = template_tokenizer.train_new_from_iterator(corpus_texts(data_cfg), vocab_size=vocab_size)
    tokenizer.chat_template = template_tokenizer.chat_template
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def fresh_model(model_cfg: DictConfig, path: str, tokenizer, dtype: str):
    """The architecture of `path` (with `model.config_overrides`), randomly initialised, sized to `tokenizer`."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(
        path, revision=model_cfg.revision, trust_remote_code=model_cfg.trust_remote_code
    )
    for key, value in model_cfg.config_overrides.items():
        if not hasattr(config, key):
            raise OnestopError(f"config key 'model.config_overrides.{key}': {type(config).__name__} has no such field")
        setattr(config, key, value)
    layer_types = getattr(config, "layer_types", None)
    if layer_types and len(layer_types) != config.num_hidden_layers and "layer_types" not in model_cfg.config_overrides:
        # Per-layer attention kinds (sliding / full) follow the new depth, repeating the original pattern.
        config.layer_types = (list(layer_types) * config.num_hidden_layers)[: config.num_hidden_layers]
    config.vocab_size = len(tokenizer)
    for name in ("bos_token_id", "eos_token_id", "pad_token_id"):
        setattr(config, name, getattr(tokenizer, name))
    model = AutoModelForCausalLM.from_config(
        config, dtype=getattr(torch, dtype), trust_remote_code=model_cfg.trust_remote_code
    )
    model.config.use_cache = False
    return model
