"""Chat exchanges as training records: what `deploy.log_conversations=true` writes and the feedback store reads.

A record is one line of the `messages` format (`invoke train data=messages data.path=FILE`):

    {"messages": [{"role": "user", "content": "..."}, {"role": "assistant", "content": "..."}], "tools": [...]}

Only an exchange whose reply answers (text, no tool call) becomes a record: a reply that calls tools is a
step of a conversation the client continues, and the next request carries those calls and their results,
so that exchange's record holds them whole (the loss covers every assistant turn, tool calls included).
"""

import json
import os
import sys
import threading
from pathlib import Path

from onestop.core.files import reported_as_user_error
from onestop.core.secrets import REDACTED, redact


def text_of(content) -> str:
    """A message's content as one string: the OpenAI API also allows a list of text parts."""
    if content is None:
        return ""
    if isinstance(content, list):
        return "".join(part.get("text", "") for part in content if isinstance(part, dict))
    return str(content)


def request_messages(messages: list[dict]) -> list[dict]:
    """A request's messages as the `messages` format reads them: text content, calls and their ids kept."""
    kept = []
    for message in messages:
        entry = {"role": message["role"], "content": text_of(message.get("content"))}
        if message.get("tool_calls"):
            entry["tool_calls"] = [_call(call) for call in message["tool_calls"]]
        for key in ("name", "tool_call_id"):
            if message["role"] == "tool" and isinstance(message.get(key), str) and message[key]:
                entry[key] = message[key]
        kept.append(entry)
    return kept


def _call(call: dict) -> dict:
    function = call.get("function") or {}
    entry = {"type": "function", "function": {"name": function.get("name", ""), "arguments": function.get("arguments")}}
    arguments = entry["function"]["arguments"]
    if isinstance(arguments, str):
        try:
            entry["function"]["arguments"] = json.loads(arguments or "{}")
        except json.JSONDecodeError:
            pass  # kept as the model wrote it: the record shows what was said
    if call.get("id"):
        entry["id"] = call["id"]
    return entry


def reply_message(message: dict) -> dict:
    """An assistant reply (a chat completion's `message`, or one assembled from a stream) in record form."""
    entry = {"role": "assistant", "content": text_of(message.get("content"))}
    if message.get("tool_calls"):
        entry["tool_calls"] = [_call(call) for call in message["tool_calls"]]
    return entry


def is_answer(reply: dict) -> bool:
    """Whether a reply ends the conversation's turn: text, and no tool call."""
    return bool(reply.get("content", "").strip()) and not reply.get("tool_calls")


def exchange_record(request: dict, reply: dict) -> dict | None:
    """The training record of one chat exchange, or None when the reply calls tools or says nothing."""
    reply = reply_message(reply)
    if not is_answer(reply):
        return None
    record = {"messages": [*request_messages(request.get("messages") or []), reply]}
    if request.get("tools"):
        record["tools"] = request["tools"]
    return record


class StreamAssembler:
    """A streamed chat completion put back together: content deltas joined, tool-call deltas merged by index."""

    def __init__(self):
        self.content: list[str] = []
        self.calls: dict[int, dict] = {}

    def feed(self, payload) -> None:
        for choice in (payload.get("choices") if isinstance(payload, dict) else None) or []:
            if choice.get("index", 0) != 0:
                continue
            delta = choice.get("delta") or {}
            if isinstance(delta.get("content"), str):
                self.content.append(delta["content"])
            for part in delta.get("tool_calls") or []:
                call = self.calls.setdefault(
                    part.get("index", 0), {"id": None, "type": "function", "function": {"name": "", "arguments": ""}}
                )
                call["id"] = part.get("id") or call["id"]
                function = part.get("function") or {}
                call["function"]["name"] += function.get("name") or ""
                arguments = function.get("arguments")
                call["function"]["arguments"] += (
                    arguments if isinstance(arguments, str) else json.dumps(arguments or {})
                )

    def message(self) -> dict:
        message = {"role": "assistant", "content": "".join(self.content)}
        if self.calls:
            message["tool_calls"] = [self.calls[index] for index in sorted(self.calls)]
        return message


class ConversationLog:
    """Appends records to a JSONL file, one whole line per write: a reader never sees half a record.

    Credentials are replaced by `<redacted>` first: the values of this environment's credential variables,
    the gateway's API key, and values under keys named like one (a tool argument `api_key`).
    """

    def __init__(self, path: Path | str, api_key: str | None = None):
        self.path = Path(path)
        self.api_key = api_key
        self.lock = threading.Lock()
        with reported_as_user_error(self.path, "deploy.conversations_path"):
            self.path.parent.mkdir(parents=True, exist_ok=True)

    def append(self, record: dict) -> None:
        clean = redact(record)
        line = json.dumps(clean, ensure_ascii=False)
        if self.api_key and len(self.api_key) >= 8:
            line = line.replace(self.api_key, REDACTED)
        append_line(self.path, line, self.lock)


def append_line(path: Path, line: str, lock: threading.Lock) -> None:
    """One line appended whole or not at all: a short write (a full disk) is cut back off."""
    data = (line + "\n").encode("utf-8")
    with lock, reported_as_user_error(path):
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            size = os.fstat(fd).st_size
            try:
                written = os.write(fd, data)
            except OSError:
                os.ftruncate(fd, size)
                raise
            if written != len(data):
                os.ftruncate(fd, size)
                raise OSError(28, "No space left on device")
            os.fsync(fd)
        finally:
            os.close(fd)


def log_safely(log: ConversationLog | None, request: dict, reply: dict) -> None:
    """Log an exchange; a failed write is reported on stderr and never fails the request that was answered."""
    if log is None:
        return
    try:
        record = exchange_record(request, reply)
        if record is not None:
            log.append(record)
    except Exception as err:  # noqa: BLE001 - the client has its answer; the log is secondary
        print(f"onestop gateway: conversation not logged: {err}", file=sys.stderr, flush=True)
