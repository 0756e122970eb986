"""Record formats, each normalised to one internal form.

- `alpaca`, `sharegpt`, `messages` -> a conversation: {"messages": [...], "tools": [...] | None}
  where a message is {"role": system|user|assistant|tool, "content": str} and an assistant message may
  carry OpenAI-style "tool_calls".
- `text` -> {"text": str}
- `preference` -> {"messages": prompt conversation ending with the user, "chosen": str, "rejected": str}
- `unpaired` -> a conversation ending with the rated answer, and "desirable": bool (KTO)

A record that does not fit raises `RecordError` naming its file and line and what was expected.
"""

import json
from collections.abc import Callable, Mapping

from onestop.core.errors import OnestopError
from onestop.data.media import parts_as_placeholders, with_images
from onestop.data.records import Record

ROLES = ("system", "user", "assistant", "tool")
SHAREGPT_ROLES = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "system": "system",
    "function_call": "assistant",
    "observation": "tool",
    "tool": "tool",
}


class RecordError(OnestopError):
    """One record that does not fit its format; `reason` is the short cause used to count skipped records."""

    def __init__(self, record: Record, reason: str, detail: str):
        super().__init__(f"{record.where}: {detail}")
        self.reason = reason


def map_columns(record: Record, columns: Mapping[str, str]) -> Record:
    """Rename the user's columns to the format's field names (`data.columns.instruction=question`)."""
    if not columns:
        return record
    fields = dict(record.fields)
    for field, column in columns.items():
        if column in record.fields:
            fields[field] = record.fields[column]
            if column != field:
                fields.pop(column, None)
    return Record(fields, record.where)


def _text(record: Record, key: str, required: bool = True, hint: str = "") -> str:
    value = record.fields.get(key)
    if value is None or (isinstance(value, str) and not value.strip()):
        if not required:
            return ""
        if key not in record.fields:
            names = ", ".join(sorted(map(str, record.fields))[:8]) or "none"
            raise RecordError(
                record,
                f"missing field '{key}'",
                f"missing field '{key}'{hint}; its fields: {names} (map one with data.columns.{key}=NAME)",
            )
        raise RecordError(record, f"empty field '{key}'", f"field '{key}' must be a non-empty string")
    if not isinstance(value, str):
        raise RecordError(record, f"field '{key}' not a string", f"field '{key}' must be a string")
    return value


def _system(record: Record, system_prompt: str | None) -> list[dict]:
    system = record.fields.get("system") or system_prompt
    return [{"role": "system", "content": system}] if system else []


def _tools(record: Record):
    tools = record.fields.get("tools")
    if tools in (None, "", []):
        return None
    if isinstance(tools, str):
        try:
            tools = json.loads(tools)
        except json.JSONDecodeError:
            raise RecordError(record, "tools not JSON", "field 'tools' must be a JSON list of tool schemas") from None
    if not isinstance(tools, list) or not all(isinstance(t, dict) for t in tools):
        raise RecordError(record, "tools not a list", "field 'tools' must be a list of tool schemas")
    return tools


def alpaca(record: Record, system_prompt: str | None = None) -> dict:
    """instruction / input / output, optional system and history ([[question, answer], ...])."""
    hint = " (alpaca records need instruction and output)"
    instruction = _text(record, "instruction", hint=hint)
    output = _text(record, "output", hint=hint)
    extra = record.fields.get("input") or ""
    if not isinstance(extra, str):
        raise RecordError(record, "field 'input' not a string", "field 'input' must be a string")
    messages = _system(record, system_prompt)
    history = record.fields.get("history") or []
    if not isinstance(history, list) or not all(
        isinstance(turn, list | tuple) and len(turn) == 2 and all(isinstance(t, str) for t in turn) for turn in history
    ):
        raise RecordError(record, "bad history", "field 'history' must be a list of [question, answer] pairs")
    for question, answer in history:
        messages += [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
    prompt = f"{instruction}\n\n{extra}" if extra.strip() else instruction
    messages += [{"role": "user", "content": prompt}, {"role": "assistant", "content": output}]
    return {"messages": messages, "tools": None}


def sharegpt(record: Record, system_prompt: str | None = None) -> dict:
    """conversations: [{from: human|gpt|system|function_call|observation, value: ...}], optional tools."""
    turns = record.fields.get("conversations")
    if not isinstance(turns, list) or not turns:
        raise RecordError(record, "missing field 'conversations'", "expected a non-empty list in field 'conversations'")
    messages = _system(record, system_prompt)
    for index, turn in enumerate(turns):
        if not isinstance(turn, dict) or "from" not in turn or "value" not in turn:
            raise RecordError(record, "turn without from/value", f"conversations[{index}] needs 'from' and 'value'")
        role = SHAREGPT_ROLES.get(turn["from"])
        if role is None:
            raise RecordError(
                record,
                f"unknown role '{turn['from']}'",
                f"conversations[{index}]: unknown role '{turn['from']}'; expected one of {', '.join(SHAREGPT_ROLES)}",
            )
        if not isinstance(turn["value"], str):
            raise RecordError(record, "value not a string", f"conversations[{index}]: 'value' must be a string")
        if turn["from"] == "function_call":
            messages.append({"role": "assistant", "content": "", "tool_calls": [_sharegpt_call(record, turn, index)]})
        else:
            messages.append({"role": role, "content": turn["value"]})
    return _checked_conversation(record, messages, _tools(record))


def _sharegpt_call(record: Record, turn: dict, index: int) -> dict:
    try:
        call = json.loads(turn["value"])
    except json.JSONDecodeError:
        call = None
    if not isinstance(call, dict) or "name" not in call:
        raise RecordError(
            record,
            "bad function_call",
            f'conversations[{index}]: a function_call value must be JSON {{"name": ..., "arguments": {{...}}}}',
        )
    return {"type": "function", "function": {"name": call["name"], "arguments": call.get("arguments", {})}}


def messages_format(record: Record, system_prompt: str | None = None) -> dict:
    """OpenAI chat format: messages of role/content; assistant `tool_calls`; `tool` results; images as content
    parts or LLaMA-Factory's `<image>` + `images` (onestop.data.media)."""
    record = parts_as_placeholders(record, RecordError)
    raw = record.fields.get("messages")
    if not isinstance(raw, list) or not raw:
        raise RecordError(record, "missing field 'messages'", "expected a non-empty list in field 'messages'")
    messages = []
    for index, message in enumerate(raw):
        if not isinstance(message, dict) or "role" not in message:
            raise RecordError(record, "message without role", f"messages[{index}] needs a 'role'")
        role = message["role"]
        if role not in ROLES:
            raise RecordError(
                record,
                f"unknown role '{role}'",
                f"messages[{index}]: unknown role '{role}'; expected one of {', '.join(ROLES)}",
            )
        content = message.get("content")
        content = "" if content is None else content
        if not isinstance(content, str):
            raise RecordError(record, "content not a string", f"messages[{index}]: 'content' must be a string")
        normalised = {"role": role, "content": content}
        if message.get("tool_calls"):
            normalised["tool_calls"] = [_openai_call(record, call, index) for call in message["tool_calls"]]
        if role == "tool":
            for key in ("name", "tool_call_id"):  # templates that pair results with calls read them
                if isinstance(message.get(key), str) and message[key]:
                    normalised[key] = message[key]
        if not content.strip() and "tool_calls" not in normalised:
            raise RecordError(record, "empty message", f"messages[{index}]: empty content")
        messages.append(normalised)
    if system_prompt and messages[0]["role"] != "system":
        messages.insert(0, {"role": "system", "content": system_prompt})
    return _checked_conversation(record, messages, _tools(record))


def _openai_call(record: Record, call, index: int) -> dict:
    function = call.get("function") if isinstance(call, dict) else None
    if not isinstance(function, dict) or not isinstance(function.get("name"), str):
        raise RecordError(
            record, "bad tool_calls", f"messages[{index}]: each tool call needs function.name and function.arguments"
        )
    arguments = function.get("arguments", {})
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments)
        except json.JSONDecodeError:
            raise RecordError(
                record, "bad tool_calls", f"messages[{index}]: function.arguments is not valid JSON"
            ) from None
    if not isinstance(arguments, dict):
        raise RecordError(record, "bad tool_calls", f"messages[{index}]: function.arguments must be a JSON object")
    normalised = {"type": "function", "function": {"name": function["name"], "arguments": arguments}}
    if isinstance(call.get("id"), str) and call["id"]:
        normalised["id"] = call["id"]
    return normalised


def _checked_conversation(record: Record, messages: list[dict], tools) -> dict:
    roles = [m["role"] for m in messages]
    if "system" in roles[1:]:
        raise RecordError(record, "system not first", "a system message may only open the conversation")
    if "user" not in roles:
        raise RecordError(record, "no user turn", "the conversation has no user turn")
    if roles[-1] != "assistant" or "tool_calls" in messages[-1]:
        raise RecordError(
            record, "does not end with the assistant", "the conversation must end with an assistant answer"
        )
    return with_images(record, {"messages": messages, "tools": tools}, RecordError)


def text(record: Record, system_prompt: str | None = None) -> dict:
    """Raw text for (continued) pretraining: one document per record."""
    return {"text": _text(record, "text", hint=" (text records need a 'text' field)")}


def preference(record: Record, system_prompt: str | None = None) -> dict:
    """prompt / chosen / rejected for preference optimisation (DPO); the prompt may be a message list."""
    prompt = record.fields.get("prompt")
    if isinstance(prompt, list):
        prompt_messages = messages_format(
            Record({"messages": [*prompt, {"role": "assistant", "content": "-"}]}, record.where), system_prompt
        )["messages"][:-1]
        if prompt_messages[-1]["role"] != "user":
            raise RecordError(record, "prompt not ending with user", "a prompt conversation must end with the user")
    else:
        prompt_messages = [
            *_system(record, system_prompt),
            {"role": "user", "content": _text(record, "prompt", hint=" (preference records: prompt/chosen/rejected)")},
        ]
    chosen = _text(record, "chosen", hint=" (preference records: prompt/chosen/rejected)")
    rejected = _text(record, "rejected", hint=" (preference records: prompt/chosen/rejected)")
    if chosen.strip() == rejected.strip():
        raise RecordError(record, "chosen equals rejected", "'chosen' and 'rejected' are the same answer")
    return {"messages": prompt_messages, "chosen": chosen, "rejected": rejected}


def unpaired(record: Record, system_prompt: str | None = None) -> dict:
    """One answer rated desirable or not (KTO): prompt / completion / label (true: desirable), or a `messages`
    conversation ending with the rated assistant turn, and `label`."""
    label = record.fields.get("label")
    if not isinstance(label, bool):
        detail = "field 'label' must be true (a desirable answer) or false (an undesirable one)"
        raise RecordError(
            record, "label not true/false", f"{detail}; got {label!r} (unpaired records: prompt/completion/label)"
        )
    if "messages" in record.fields:
        conversation = messages_format(record, system_prompt)
        if conversation["messages"][-1]["role"] != "assistant":
            raise RecordError(record, "not ending with assistant", "the rated conversation must end with the assistant")
        return {**conversation, "desirable": label}
    prompt = record.fields.get("prompt")
    if isinstance(prompt, list):
        conversation = messages_format(
            Record({"messages": [*prompt, {"role": "assistant", "content": "-"}]}, record.where), system_prompt
        )
        messages = conversation["messages"][:-1]
    else:
        hint = " (unpaired records: prompt/completion/label)"
        messages = [*_system(record, system_prompt), {"role": "user", "content": _text(record, "prompt", hint=hint)}]
    completion = _text(record, "completion", hint=" (unpaired records: prompt/completion/label)")
    return {"messages": [*messages, {"role": "assistant", "content": completion}], "tools": None, "desirable": label}


FORMATS: dict[str, Callable[[Record, str | None], dict]] = {
    "alpaca": alpaca,
    "sharegpt": sharegpt,
    "messages": messages_format,
    "text": text,
    "preference": preference,
    "unpaired": unpaired,
}
CONVERSATION_FORMATS = ("alpaca", "sharegpt", "messages")


def converter(format_name: str) -> Callable[[Record, str | None], dict]:
    if format_name == "feedback":  # a whole file's latest ratings, not one record at a time
        raise OnestopError(
            "config key 'data.format': a feedback file is read whole (the latest rating of each reply) by invoke "
            "train and invoke data.prepare, which print the data.format=unpaired file they make of it; use that file "
            "in a data.mix"
        )
    if format_name not in FORMATS:
        raise OnestopError(f"config key 'data.format': unknown format {format_name!r}; known: {', '.join(FORMATS)}")
    return FORMATS[format_name]
