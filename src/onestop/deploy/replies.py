"""The gateway reads the model's tool calls and thinking out of the backend's replies, the family's way.

`transformers serve` is given a response template that hands back each reply whole, its control tokens
spelled out (onestop.models.tool_formats: `ToolFormat.whole_reply`); the gateway turns that text into the
OpenAI shape: `content`, `reasoning_content` (a `<think>` block, never in content) and `tool_calls` with ids
and JSON-string arguments, `finish_reason: tool_calls` when there are calls. Streamed replies are read as
they arrive, holding back only what may still open a call. A call the model garbled is returned as content
and counted (`malformed_tool_calls` in /health), never an error.
"""

import json
import sys
import uuid
from collections.abc import Callable

from onestop.models.tool_formats import Reply, ReplyStream, ToolFormat, read_reply


def openai_calls(calls: list[dict]) -> list[dict]:
    """Calls read from a reply as the OpenAI API returns them: an id, type function, arguments a JSON string."""
    return [
        {
            "id": f"call_{uuid.uuid4().hex[:24]}",
            "type": "function",
            "function": {"name": call["name"], "arguments": json.dumps(call["arguments"], ensure_ascii=False)},
        }
        for call in calls
    ]


def _report(reply: Reply, on_malformed: Callable[[], None]) -> None:
    if reply.malformed:
        on_malformed()
        print(f"onestop gateway: a malformed tool call returned as content: {reply.malformed}", file=sys.stderr)


def read_completion(payload: dict, format_: ToolFormat, tools_offered: bool, on_malformed: Callable[[], None]) -> dict:
    """A chat completion from the backend with each choice's message read the family's way. A message the
    backend already parsed (it has tool calls or reasoning of its own) is left as it is."""
    for choice in payload.get("choices") or []:
        message = choice.get("message")
        if not isinstance(message, dict) or message.get("tool_calls") or message.get("reasoning_content"):
            continue
        reply = read_reply(format_, message.get("content") or "", tools_offered)
        _report(reply, on_malformed)
        message["content"] = reply.content if reply.content or not reply.calls else None
        if reply.reasoning is not None:
            message["reasoning_content"] = reply.reasoning
        if reply.calls:
            message["tool_calls"] = openai_calls(reply.calls)
            choice["finish_reason"] = "tool_calls"
    return payload


class StreamReading:
    """The chunks of a streamed chat completion, read the family's way (choice 0, the only one served)."""

    def __init__(self, format_: ToolFormat, tools_offered: bool, on_malformed: Callable[[], None]):
        self.stream = ReplyStream(format_, tools_offered)
        self.on_malformed = on_malformed

    def rewrite(self, payload: dict) -> dict:
        """One chunk with its content delta replaced by what is certain of content and reasoning so far; the
        chunk that finishes the reply also carries the rest and the tool calls."""
        for choice in payload.get("choices") or []:
            delta = choice.get("delta")
            if choice.get("index", 0) != 0 or not isinstance(delta, dict) or delta.get("tool_calls"):
                continue
            text = delta.pop("content", None)
            deltas = self.stream.feed(text) if isinstance(text, str) else []
            calls = []
            if choice.get("finish_reason"):
                rest, reply = self.stream.finish()
                deltas += rest
                _report(reply, self.on_malformed)
                calls = reply.calls
            for field, piece in deltas:
                key = "content" if field == "content" else "reasoning_content"
                delta[key] = delta.get(key, "") + piece
            if calls:
                delta["tool_calls"] = [{"index": i, **call} for i, call in enumerate(openai_calls(calls))]
                choice["finish_reason"] = "tool_calls"
        return payload
