"""The text of a normalised example, whatever its format, and the words curation steps count.

Every format is normalised to `{"text"}`, `{"messages", "tools"}` or `{"messages", "chosen", "rejected"}`
(onestop.data.formats); the steps read and rewrite only these strings: message contents, text, chosen and
rejected. Tool schemas and tool-call arguments are left as they are.
"""

import re
from collections.abc import Callable

# A Han, kana or hangul character counts as one word; elsewhere a word is a run of letters and digits.
_WORD = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff]|[^\W_]+(?:['’][^\W_]+)*")
_CJK = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff]")


def texts(example: dict) -> list[str]:
    """Every string of `example` that curation reads: message contents, text, chosen, rejected."""
    if "text" in example:
        return [example["text"]]
    parts = [m["content"] for m in example.get("messages", []) if isinstance(m.get("content"), str)]
    return parts + [example[key] for key in ("chosen", "rejected") if isinstance(example.get(key), str)]


def full_text(example: dict) -> str:
    """All of an example's text, one part per line."""
    return "\n".join(texts(example))


def prompt_text(example: dict) -> str:
    """What an example asks: its user turns; the whole text for raw text."""
    if "text" in example:
        return example["text"]
    return "\n".join(m.get("content") or "" for m in example.get("messages", []) if m.get("role") == "user")


def map_texts(example: dict, change: Callable[[str], str]) -> dict:
    """A copy of `example` with `change` applied to each of its strings (the input itself when none changes)."""
    if "text" in example:
        new = change(example["text"])
        return example if new == example["text"] else {**example, "text": new}
    changed = False
    messages = []
    for message in example.get("messages", []):
        content = message.get("content")
        if isinstance(content, str):
            new = change(content)
            if new != content:
                changed = True
                message = {**message, "content": new}
        messages.append(message)
    result = {**example, "messages": messages}
    for key in ("chosen", "rejected"):
        if isinstance(example.get(key), str):
            new = change(example[key])
            changed |= new != example[key]
            result[key] = new
    return result if changed else example


def words(text: str) -> list[str]:
    """The words of `text`: runs of letters and digits, each CJK character one word."""
    return _WORD.findall(text)


def is_cjk(word: str) -> bool:
    return bool(_CJK.fullmatch(word))


def snippet(before: str, after: str | None = None, width: int = 160, at: int = 0) -> dict:
    """A short excerpt of a record for the report: around the first change when there is one, else around `at`."""
    if after is None or after == before:
        return {"text": _cut(before, max(0, at - 30), width)}
    start, end = 0, min(len(before), len(after))
    while start < end and before[start : start + 64] == after[start : start + 64]:  # 64 characters a step
        start += 64
    while start < end and before[start] == after[start]:
        start += 1
    begin = max(0, start - 30)  # the change near the start of the excerpt, where a reader looks
    return {"before": _cut(before, begin, width), "after": _cut(after, begin, width)}


def _cut(text: str, begin: int, width: int) -> str:
    piece = text[begin : begin + width]
    return ("…" if begin else "") + piece + ("…" if begin + width < len(text) else "")
