"""A backend's event stream as the gateway sends it on: whole events, the served model name, the replies read."""

import json

from onestop.deploy.conversations import StreamAssembler
from onestop.deploy.replies import StreamReading


def first_tool_call_only(payload: dict) -> dict:
    """A chat completion keeping one tool call per choice (`parallel_tool_calls: false`)."""
    for choice in payload.get("choices") or []:
        calls = (choice.get("message") or {}).get("tool_calls")
        if calls:
            choice["message"]["tool_calls"] = calls[:1]
        delta_calls = (choice.get("delta") or {}).get("tool_calls")
        if delta_calls:
            kept = [c for c in delta_calls if c.get("index", 0) == 0]
            choice["delta"]["tool_calls"] = kept or None
    return payload


class EventRelay:
    """Server-sent events from the backend, re-emitted whole with the served model name (and one tool call
    per choice when parallel calls are off); events split across network chunks are joined first.

    A stream ends with `data: [DONE]` as OpenAI's do (transformers serve sends none), unless it ends with
    an error event: a client reading raw events can then tell a finished answer from a cut one.
    """

    def __init__(self, served_name: str, single_tool_call: bool, reading: StreamReading | None = None):
        self.served_name, self.single_tool_call, self.reading = served_name, single_tool_call, reading
        self.pending = b""
        self.done = self.failed = False
        self.reply = StreamAssembler()  # what the client was sent, for the conversation log

    def feed(self, chunk: bytes) -> bytes:
        self.pending += chunk
        *events, self.pending = self.pending.split(b"\n\n")
        return b"".join(self._event(e) for e in events)

    def flush(self) -> bytes:
        rest, self.pending = self.pending, b""
        return self._event(rest) if rest.strip() else b""

    def finish(self) -> bytes:
        """What is left of the stream, and its [DONE]."""
        rest = self.flush()
        if self.done or self.failed:
            return rest
        self.done = True
        return rest + b"data: [DONE]\n\n"

    def error(self, message: str, code: str) -> bytes:
        """An error event ending the stream early: what the openai SDK raises as an APIError."""
        self.failed = True
        payload = {"error": {"message": message, "type": code, "code": code}}
        return self.flush() + b"data: " + json.dumps(payload).encode() + b"\n\n"

    def _event(self, event: bytes) -> bytes:
        text = event.decode("utf-8", errors="replace").strip()
        if text == "data: [DONE]":
            self.done = True
        if not text.startswith("data:") or text == "data: [DONE]":
            return event + b"\n\n"
        try:
            payload = json.loads(text[len("data:") :])
        except json.JSONDecodeError:
            # transformers serve writes its stream errors (e.g. a tool call whose JSON the model garbled) into
            # a hand-made `{"error": "..."}` that breaks on any quote in the message; clients then fail to
            # decode the stream instead of seeing the error
            message = text[len("data:") :].strip().removeprefix('{"error": "').removesuffix('"}')
            payload = {"error": message}
        if isinstance(payload, dict):
            if isinstance(payload.get("error"), str):
                payload["error"] = {"message": payload["error"], "type": "backend_error", "code": "backend_error"}
            self.failed = self.failed or "error" in payload
            if "model" in payload:
                payload["model"] = self.served_name
            if self.reading is not None:
                payload = self.reading.rewrite(payload)
                if _says_nothing(payload):  # all it carried is held back: a call may be starting
                    return b""
            if self.single_tool_call:
                payload = first_tool_call_only(payload)
            self.reply.feed(payload)
        return b"data: " + json.dumps(payload, ensure_ascii=False).encode() + b"\n\n"


def _says_nothing(payload: dict) -> bool:
    """A chunk with choices whose deltas are empty and that finishes nothing (nor carries usage)."""
    choices = payload.get("choices")
    return (
        bool(choices)
        and not payload.get("usage")
        and all(
            not any(value for value in (choice.get("delta") or {}).values()) and not choice.get("finish_reason")
            for choice in choices
        )
    )
