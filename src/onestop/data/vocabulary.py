"""A new vocabulary for pretraining from scratch: a tokenizer of the model's kind, trained on the corpus."""

from collections.abc import Iterator

from omegaconf import DictConfig

from onestop.core.errors import OnestopError
from onestop.data.formats import converter, map_columns
from onestop.data.prepare import sources_of
from onestop.data.records import read_records


def corpus_texts(data_cfg: DictConfig) -> Iterator[str]:
    """Every document of the training sources, read the way the data stage reads them."""
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
