"""How many tokens a request's prompt takes, counted as the backend will: the served tokenizer and chat template."""

# Lazy imports: transformers (inside PromptMeter.load).

import json
from pathlib import Path

from onestop.data.media import open_image
from onestop.models.processor import image_token_id


class PromptMeter:
    """The served model's tokenizer and context length, for sizing a request before the backend sees it; for a
    model that reads images, also its processor, which says how many tokens each image takes."""

    def __init__(self, tokenizer, context_length: int, processor=None):
        self.tokenizer, self.context_length, self.processor = tokenizer, context_length, processor

    @classmethod
    def load(cls, tokenizer_dir: str, context_length: int) -> "PromptMeter":
        from transformers import AutoProcessor, AutoTokenizer

        tokenizer, processor = AutoTokenizer.from_pretrained(tokenizer_dir), None
        if (Path(tokenizer_dir) / "processor_config.json").is_file():
            try:  # without it, each image counts as one token: the backend still refuses what does not fit
                processor = AutoProcessor.from_pretrained(tokenizer_dir)
            except Exception as err:  # noqa: BLE001
                print(f"onestop gateway: images counted as one token each: {err}", flush=True)
        return cls(tokenizer, context_length, processor)

    def image_tokens(self, body: dict) -> int:
        """The tokens a chat request's images add beyond their placeholders (one token each in `prompts`): the
        processor widens each placeholder to the image's tokens, as many as its size makes for some models."""
        urls = [part["image_url"]["url"] for message in body.get("messages") or []
                if isinstance(message.get("content"), list)
                for part in message["content"] if part["type"] == "image_url"]  # fmt: skip
        if not urls or self.processor is None:
            return 0
        images = [open_image(url) for url in urls]
        ids = self.processor(text=[self.processor.image_token * len(images)], images=images)["input_ids"][0]
        ids = ids.tolist() if hasattr(ids, "tolist") else list(ids)
        return ids.count(image_token_id(self.processor)) - len(images)

    def prompts(self, kind: str, body: dict) -> list[str]:
        """The text(s) the backend will tokenize: the rendered chat, or the completion prompt(s)."""
        if kind != "chat":
            prompt = body["prompt"]
            return [prompt] if isinstance(prompt, str) else list(prompt)
        rendered = self.tokenizer.apply_chat_template(
            [_as_backend_reads(m) for m in body["messages"]],
            tools=body.get("tools") or None,
            add_generation_prompt=True,
            tokenize=False,
            **(body.get("chat_template_kwargs") or {}),
        )
        return [rendered]

    def count(self, text: str, cap: int, special: bool = False) -> int:
        """Tokens in `text`: exact when at most `cap`; above it, any number above `cap`.

        A multi-megabyte text costs seconds and a gigabyte to tokenize whole, so a long one is judged by a
        prefix first: a prefix already over `cap` settles it. `special`: add the tokenizer's own BOS/EOS, as
        the backend does for a completion prompt (a chat template writes them itself).
        """
        encode = self.tokenizer.backend_tokenizer.encode
        head = text[: 8 * cap]  # under `cap` tokens, such a prefix would average 8 characters a token
        tokens = len(encode(head, add_special_tokens=special).ids)
        if tokens > cap or len(head) == len(text):
            return tokens
        return len(encode(text, add_special_tokens=special).ids)


def _as_backend_reads(message: dict) -> dict:
    """A message as `transformers serve` hands it to the chat template: text parts joined with spaces (kept
    as parts beside an image), tool-call arguments as objects, content dropped beside tool calls."""
    shown = {"role": message["role"]}
    content, calls = message.get("content"), message.get("tool_calls")
    if calls:
        shown["tool_calls"] = [_arguments_parsed(call) for call in calls]
        content = ""
    elif isinstance(content, list) and any(part["type"] == "image_url" for part in content):
        # a vision-language model's processor renders the parts; an image counts here as its placeholder, and
        # `image_tokens` adds the rest
        content = [{"type": "image"} if part["type"] == "image_url" else part for part in content]
    elif isinstance(content, list):
        content = " ".join(part["text"] for part in content)
    shown["content"] = content or ""
    if "tool_call_id" in message:
        shown["tool_call_id"] = message["tool_call_id"]
    return shown


def _arguments_parsed(call: dict) -> dict:
    function = dict(call["function"])
    if isinstance(function.get("arguments"), str):
        function["arguments"] = json.loads(function["arguments"] or "{}")
    return {**call, "function": function}
