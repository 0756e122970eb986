"""Tokenizing normalised examples with the model's chat template; loss only where the model should learn."""

import numpy as np

from onestop.core.errors import OnestopError

IGNORE_INDEX = -100


def render(tokenizer, messages: list[dict], tools=None, add_generation_prompt: bool = False) -> str:
    kwargs = {"tools": tools} if tools else {}
    return tokenizer.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=add_generation_prompt, **kwargs
    )


def tokenize_conversation(tokenizer, messages: list[dict], max_seq_len: int, tools=None) -> dict:
    """Token ids of a conversation in the model's chat template, and labels that train only the answers.

    Every assistant turn is located by rendering the conversation up to it (with the generation prompt)
    and up to its end: the characters in between are the answer (or tool call) plus the template's
    end-of-turn marker, so the model learns to stop. Tokens outside those spans get label -100.

    Returns:
        `input_ids`, `labels` (lists of ints) and `truncated` (bool).
    """
    text = render(tokenizer, messages, tools)
    last = len(messages) - 1
    spans = []
    for index, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        before = render(tokenizer, messages[:index], tools, add_generation_prompt=True)
        through = text if index == last else render(tokenizer, messages[: index + 1], tools)
        if not (text.startswith(through) and through.startswith(before)):
            raise OnestopError(
                "the chat template does not render conversations prefix by prefix; set model.chat_template"
            )
        spans.append((len(before), len(through)))
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True, return_tensors="np")
    input_ids = encoded["input_ids"][0]
    begins = np.asarray(encoded["offset_mapping"][0]).reshape(-1, 2)[:, 0]
    answer = np.zeros(len(input_ids), dtype=bool)
    for start, end in spans:
        answer |= (begins >= start) & (begins < end)
    labels = np.where(answer, input_ids, IGNORE_INDEX)
    truncated = len(input_ids) > max_seq_len
    return {
        "input_ids": input_ids[:max_seq_len].tolist(),
        "labels": labels[:max_seq_len].tolist(),
        "truncated": truncated,
    }


def tokenize_text(tokenizer, text: str, max_seq_len: int) -> dict:
    """A pretraining document: BOS (when the model uses one), the text, EOS; loss on every token."""
    ids = tokenizer(text, add_special_tokens=True)["input_ids"]
    if tokenizer.eos_token_id is not None and (not ids or ids[-1] != tokenizer.eos_token_id):
        ids = [*ids, tokenizer.eos_token_id]
    truncated = len(ids) > max_seq_len
    ids = ids[:max_seq_len]
    return {"input_ids": ids, "labels": list(ids), "truncated": truncated}


def tokenize_example(tokenizer, example: dict, max_seq_len: int) -> dict:
    """Token ids and labels of one normalised example of any format; `overlength` marks truncation."""
    if "text" in example:
        result = tokenize_text(tokenizer, example["text"], max_seq_len)
        return {"input_ids": result["input_ids"], "labels": result["labels"], "overlength": result["truncated"]}
    if "chosen" in example:
        out, overlength = {}, False
        for side in ("chosen", "rejected"):
            messages = [*example["messages"], {"role": "assistant", "content": example[side]}]
            result = tokenize_conversation(tokenizer, messages, max_seq_len)
            out[f"{side}_input_ids"], out[f"{side}_labels"] = result["input_ids"], result["labels"]
            overlength |= result["truncated"]
        return {**out, "overlength": overlength}
    result = tokenize_conversation(tokenizer, example["messages"], max_seq_len, example.get("tools"))
    tokens = {"input_ids": result["input_ids"], "labels": result["labels"], "overlength": result["truncated"]}
    if "desirable" in example:  # a rated answer (KTO): the rating travels as a one-value column
        tokens["desirable"] = [int(example["desirable"])]
    return tokens
