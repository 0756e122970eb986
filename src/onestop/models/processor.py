"""The processor: the one object that turns a model's conversations, and their images, into model inputs.

    processor = load_processor(cfg.model)      # the tokenizer for a text model; AutoProcessor for a vision one
    tokenizer = text_tokenizer(processor)      # its tokenizer, for what only text needs (pad id, decoding)

It is loaded once, here, from the model, and the same object goes to data preparation, training's batches,
evaluation and serving, so an image is turned into the same tokens and pixels everywhere. A text model's
processor is its tokenizer, exactly as `load_tokenizer` returns it: text models pass through unchanged. A
vision-language model's is transformers' `AutoProcessor` (its tokenizer with onestop's chat template and
tool format attached, and its image processor).
"""

# Lazy imports: transformers (inside the functions that need it).

from omegaconf import DictConfig

from onestop.core.errors import OnestopError
from onestop.models.loading import is_vision_language, load_tokenizer, resolve_model_path


def load_processor(model_cfg: DictConfig, path: str | None = None):
    """The model's processor: its tokenizer (`load_tokenizer`) for a text model, its `AutoProcessor` around that
    same tokenizer for a vision-language model."""
    path = path or resolve_model_path(model_cfg)
    tokenizer = load_tokenizer(model_cfg, path)
    if not is_vision_language(model_cfg, path):
        return tokenizer
    from transformers import AutoProcessor

    try:
        processor = AutoProcessor.from_pretrained(
            path, revision=model_cfg.revision, trust_remote_code=model_cfg.trust_remote_code, tokenizer=tokenizer
        )
    except (OSError, ValueError, AttributeError) as err:
        raise OnestopError(
            f"model={model_cfg.name}: its processor (tokenizer + image processor) cannot be loaded from {path}: "
            f"{' '.join(str(err).split())[:200]}"
        ) from None
    if not hasattr(processor, "image_processor"):
        raise OnestopError(f"model={model_cfg.name}: {path} is a vision-language model without an image processor")
    processor.chat_template = tokenizer.chat_template  # onestop's choice of template, for both halves
    return processor


def is_vision_language_type(model_type: str) -> bool:
    """Whether an architecture family (a config's `model_type`) reads images as well as text."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES

    return model_type in MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES


def text_tokenizer(processor):
    """The tokenizer inside a processor (a text model's processor is its tokenizer)."""
    return getattr(processor, "tokenizer", processor)


def reads_images(processor) -> bool:
    """Whether the processor turns images into model inputs (a vision-language model's)."""
    return hasattr(processor, "image_processor")


def image_token_id(processor) -> int | None:
    """The id of the token an image's features replace in the input (None for a text model)."""
    if not reads_images(processor):
        return None
    token_id = getattr(processor, "image_token_id", None)
    if token_id is None and getattr(processor, "image_token", None):
        token_id = text_tokenizer(processor).convert_tokens_to_ids(processor.image_token)
    return token_id
