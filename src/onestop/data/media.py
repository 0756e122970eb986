"""Images in conversation records: read, checked, and turned into a vision-language model's tokens and pixels.

Two layouts are read, by `data=messages` and `data=sharegpt` alike:

- OpenAI content parts: a message's `content` is a list of `{"type": "text", "text": ...}` and
  `{"type": "image_url", "image_url": {"url": ...}}` parts;
- LLaMA-Factory's: `<image>` placeholders in the text and an `images` list, one image per placeholder, in order.

An image is a path relative to the data file, an absolute path, a `file://` URL or a `data:` URL (base64);
http(s) images are not downloaded (save them beside the data file). Every image is opened when its record is
read: a missing or unreadable one, or placeholders that do not match the images, stop with the record's
`file:line` (or are counted and dropped with `data.on_error=skip`).

Normalised, such an example keeps its text as text, with IMAGE_PLACEHOLDER where each image sits, and adds
`images` (absolute paths or `data:` URLs, in order) and `where` (its `file:line`, for what tokenizing finds):
deduplication, curation and the contamination check read its text as before. Tokenized, a row keeps its
images' references in the MEDIA_COLUMN; the images are decoded and processed when a batch is made, by the
same processor that widened their placeholders. An example whose image tokens would not all fit in
`data.max_seq_len` is never cut through them: it stops, or is dropped and counted with `data.on_error=skip`.
"""

import base64
import binascii
import difflib
import io
import json
import re
from pathlib import Path
from urllib.parse import unquote, urlparse

from PIL import Image, UnidentifiedImageError

from onestop.core.errors import OnestopError
from onestop.data.batching import pad_batch
from onestop.data.records import Record
from onestop.data.tokenize import IGNORE_INDEX, tokenize_conversation, tokenize_example
from onestop.models.processor import image_token_id, reads_images, text_tokenizer

IMAGE_PLACEHOLDER = "<image>"
MEDIA_COLUMN = "media"
"""The token-rows column holding a row's image references: the UTF-8 bytes of their JSON list."""
MEDIA_KEYS = ("pixel_values", "image_sizes", "image_grid_thw")
"""Batch entries a vision-language model's forward takes besides the tokens."""
_WHERE = re.compile(r"^(?P<path>.*?)(?::\d+|\[\d+\])?$")


class MediaError(OnestopError):
    """An example whose images cannot be used; `reason` is the short cause used to count skipped examples."""

    def __init__(self, where: str, reason: str, detail: str):
        super().__init__(f"{where}: {detail}")
        self.where, self.reason, self.detail = where, reason, detail

    def __reduce__(self):  # from a tokenizing worker process back to the parent
        return type(self), (self.where, self.reason, self.detail)


def parts_as_placeholders(record: Record, error) -> Record:
    """The record with OpenAI content parts written as text with IMAGE_PLACEHOLDER and an `images` list (the
    LLaMA-Factory layout); a record without content parts as it is. `error(record, reason, detail)` makes the
    format's error."""
    messages = record.fields.get("messages")
    if not isinstance(messages, list) or not any(isinstance(m, dict) and isinstance(m.get("content"), list)
                                                 for m in messages):  # fmt: skip
        return record
    if record.fields.get("images"):
        raise error(record, "images twice", "images given both as content parts and in an 'images' list; use one")
    images, written = [], []
    for index, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("content"), list):
            written.append(message)
            continue
        text = []
        for part in message["content"]:
            kind = part.get("type") if isinstance(part, dict) else None
            if kind == "text" and isinstance(part.get("text"), str):
                if IMAGE_PLACEHOLDER in part["text"]:
                    raise error(
                        record, "placeholder in text part", f"messages[{index}]: a text part holds {IMAGE_PLACEHOLDER}"
                    )
                text.append(part["text"])
            elif kind == "image_url" and isinstance(part.get("image_url"), dict | str):
                url = part["image_url"]["url"] if isinstance(part["image_url"], dict) else part["image_url"]
                images.append(url)
                text.append(IMAGE_PLACEHOLDER)
            elif kind == "image" and isinstance(part.get("image"), str):
                images.append(part["image"])
                text.append(IMAGE_PLACEHOLDER)
            else:
                raise error(
                    record,
                    "bad content part",
                    f"messages[{index}]: a content part must be {{type: text, text}} or "
                    f"{{type: image_url, image_url: {{url}}}}; got {json.dumps(part)[:80]}",
                )
        written.append({**message, "content": "".join(text)})
    return Record({**record.fields, "messages": written, "images": images}, record.where)


def with_images(record: Record, example: dict, error) -> dict:
    """`example` with its record's `images` resolved, each opened to check it, and `where`; unchanged when the
    record has none. Placeholders and images must match one to one."""
    images = record.fields.get("images")
    if images in (None, []):
        return example
    if not isinstance(images, list) or not all(isinstance(image, str) and image for image in images):
        raise error(record, "bad images", "field 'images' must be a list of image paths or URLs")
    placeholders = sum(message["content"].count(IMAGE_PLACEHOLDER) for message in example["messages"])
    if placeholders != len(images):
        raise error(
            record,
            "placeholders and images differ",
            f"{placeholders} {IMAGE_PLACEHOLDER} placeholder(s) in the text but {len(images)} image(s); "
            "each image needs one placeholder where it sits",
        )
    if any(IMAGE_PLACEHOLDER in m["content"] for m in example["messages"] if m["role"] != "user"):
        raise error(record, "image outside a user turn", "images may only sit in user turns")
    base = Path(_WHERE.match(record.where)["path"]).parent
    resolved = []
    for index, image in enumerate(images):
        ref = resolve_image(image, base)
        try:
            open_image(ref)
        except MediaError as err:
            raise error(record, err.reason, f"images[{index}]: {err.detail}") from None
        resolved.append(ref)
    return {**example, "images": resolved, "where": record.where}


def resolve_image(ref: str, base: Path) -> str:
    """An image reference as an absolute path or a `data:` URL: relative paths are relative to `base`."""
    if ref.startswith("data:"):
        return ref
    scheme = urlparse(ref).scheme
    if scheme == "file":
        return unquote(urlparse(ref).path)
    if scheme in ("http", "https"):
        return ref  # refused when opened, with the reason
    return str((base / Path(ref).expanduser()).resolve())


def open_image(ref: str):
    """The image `ref` names (absolute path or data: URL) as an RGB Pillow image; MediaError when it cannot be."""
    if ref.startswith(("http://", "https://")):
        raise MediaError(ref, "http image", f"{ref}: http(s) images are not downloaded; save them beside the data file")
    if ref.startswith("data:"):
        try:
            header, payload = ref.split(",", 1)
            if not header.endswith(";base64"):
                raise ValueError("not base64")
            source = io.BytesIO(base64.b64decode(payload, validate=True))
        except (ValueError, binascii.Error):
            raise MediaError("data: URL", "unreadable image", "data: URL: expected data:image/...;base64,...") from None
        name = "data: URL"
    else:
        if not Path(ref).is_file():
            raise MediaError(ref, "missing image", f"{ref}: no such image file")
        source, name = ref, ref
    try:
        with Image.open(source) as image:
            return image.convert("RGB")
    except (UnidentifiedImageError, OSError, ValueError) as err:
        raise MediaError(name, "unreadable image", f"{name}: not a readable image ({type(err).__name__})") from None


def as_content_parts(messages: list[dict]) -> list[dict]:
    """Messages whose IMAGE_PLACEHOLDERs become image parts: the shape chat templates of vision models take."""
    converted = []
    for message in messages:
        content = message.get("content")
        if not isinstance(content, str) or IMAGE_PLACEHOLDER not in content:
            converted.append(message)
            continue
        parts = []
        for index, text in enumerate(content.split(IMAGE_PLACEHOLDER)):
            if index:
                parts.append({"type": "image"})
            if text:
                parts.append({"type": "text", "text": text})
        converted.append({**message, "content": parts})
    return converted


def tokenize_with_media(processor, example: dict, max_seq_len: int) -> dict:
    """Token ids and labels of one example for `processor` (`tokenize_example`'s result); for a model that reads
    images, also its MEDIA_COLUMN, `images` and `media_tokens` (how many image tokens it holds)."""
    if not reads_images(processor):
        if example.get("images"):
            raise MediaError(
                example.get("where", "data"),
                "images for a text model",
                f"{len(example['images'])} image(s), but this model reads no images; use a vision-language model "
                "(model=tiny_vl for tests)",
            )
        return tokenize_example(processor, example, max_seq_len)
    if "messages" not in example or "chosen" in example or "desirable" in example:
        raise MediaError(
            example.get("where", "data"), "not a conversation", "a vision-language model trains on conversations"
        )
    tokenizer, images = text_tokenizer(processor), example.get("images") or []
    messages = as_content_parts(example["messages"])
    plain = tokenize_conversation(tokenizer, messages, max_seq_len=1 << 30, tools=example.get("tools"))
    media_tokens = 0
    ids, labels = plain["input_ids"], plain["labels"]
    if images:
        text = tokenizer.apply_chat_template(messages, tokenize=False, **_tools(example))
        pictures = [open_image(ref) for ref in images]
        ids = processor(text=[text], images=pictures)["input_ids"][0]
        ids = ids.tolist() if hasattr(ids, "tolist") else list(ids)
        labels = _aligned_labels(plain["input_ids"], plain["labels"], ids)
        image_id = image_token_id(processor)
        positions = [i for i, token in enumerate(ids) if token == image_id]
        media_tokens = len(positions)
        if positions and positions[-1] >= max_seq_len:
            raise MediaError(
                example.get("where", "data"),
                "image tokens past max_seq_len",
                f"the example's image tokens end at token {positions[-1] + 1}, past data.max_seq_len={max_seq_len}; "
                "an example is never cut through its images: raise data.max_seq_len or shorten the conversation",
            )
    return {
        "input_ids": ids[:max_seq_len],
        "labels": labels[:max_seq_len],
        MEDIA_COLUMN: list(json.dumps(images).encode()),
        "overlength": len(ids) > max_seq_len,
        "images": len(images),
        "media_tokens": media_tokens,
    }


def _tools(example: dict) -> dict:
    return {"tools": example["tools"]} if example.get("tools") else {}


def _aligned_labels(plain_ids: list[int], plain_labels: list[int], ids: list[int]) -> list[int]:
    """Labels for `ids`, the processor's tokens of the same text with each image placeholder widened: tokens the
    widening left alone keep their labels, the image's tokens get none."""
    labels = [IGNORE_INDEX] * len(ids)
    matcher = difflib.SequenceMatcher(None, plain_ids, ids, autojunk=False)
    for block in matcher.get_matching_blocks():
        labels[block.b : block.b + block.size] = plain_labels[block.a : block.a + block.size]
    return labels


def row_images(row: dict) -> list[str]:
    """The image references a tokenized row holds (its MEDIA_COLUMN)."""
    return json.loads(bytes(row[MEDIA_COLUMN]).decode()) if row.get(MEDIA_COLUMN) else []


def collate_media(examples: list[dict], processor) -> dict:
    """Right-padded tokens (as `pad_batch`) and the batch's images processed in order, for the model's forward."""
    batch = pad_batch(examples, text_tokenizer(processor).pad_token_id)
    images = [open_image(ref) for example in examples for ref in row_images(example)]
    if images:
        features = processor.image_processor(images, return_tensors="pt")
        batch.update({key: features[key] for key in MEDIA_KEYS if key in features})
    return batch


def media_inputs(batch: dict) -> dict:
    """The entries of a batch that a vision-language model's forward takes besides the tokens."""
    return {key: batch[key] for key in MEDIA_KEYS if key in batch}
