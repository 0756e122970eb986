"""How each model family writes a tool call, and how onestop reads it back.

Three things must agree for a tool-use fine-tune to work once served: the chat template that renders the
`tools`, the assistant's `tool_calls` and the tool results (the training tokens and the served prompt), the
reader that finds calls in generated text, and LMDeploy's `--tool-call-parser`. A model config names its
family's format with `model.tool_format`.

onestop reads calls itself (`read_reply`, and `ReplyStream` for a stream), for every family the same way:
the text before the first call is content, a `<think>` block is reasoning (never content, never a call),
and a call the model garbled stays content, flagged `malformed`, rather than failing the request. The
tokenizer onestop loads carries a response template (transformers' declarative parser): the family's own
where transformers can read the family's calls (Hermes/Qwen, onestop's Gemma format), so that a copy saved
from it parses calls in any `transformers serve`; else one that keeps the reply whole, control tokens
included. A deployment serves every format with the latter and reads the reply in the gateway.
"""

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field

from onestop.core.errors import OnestopError

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"


def _tool_call_blocks(start_anchor: str, end_of_turn: str) -> dict:
    """`<tool_call>{"name": ..., "arguments": {...}}</tool_call>` blocks inside the template's assistant turn."""
    return {
        "defaults": {"role": "assistant"},
        "start_anchor": start_anchor,
        "fields": {
            "reasoning_content": {"open": THINK_OPEN, "close": THINK_CLOSE, "content": "text"},
            "tool_calls": {
                # \s* swallows the newline between two calls, so it cannot open an empty content region
                "open_pattern": r"\s*<tool_call>",
                "close": "</tool_call>",
                "repeats": True,
                "content": "json",
                "transform": {"type": "function", "function": "{content}"},
            },
            # the template may end a turn with a newline after its marker; it belongs to no field
            "content": {"close_pattern": r"\s*(?:" + end_of_turn + r")\s*", "content": "text"},
        },
    }


def _whole_reply(start_anchor: str, end_of_turn: str) -> dict:
    """A response template that hands back the assistant's reply as one text, its control tokens spelled out
    (a call's markers included), without the end-of-turn token: the gateway reads calls out of it."""
    return {
        "defaults": {"role": "assistant"},
        "start_anchor_pattern": start_anchor,
        "fields": {"content": {"close_pattern": r"\s*(?:" + end_of_turn + r")\s*", "content": "text"}},
    }


class MalformedCall(ValueError):
    """The model began a tool call but did not finish it in the family's format."""


def _arguments_object(value, where: str) -> dict:
    """Arguments as a JSON object: the model may write them as an object or as a JSON string of one."""
    if isinstance(value, str):
        try:
            value = json.loads(value or "{}")
        except json.JSONDecodeError:
            raise MalformedCall(f"{where}: arguments are not JSON") from None
    if not isinstance(value, dict):
        raise MalformedCall(f"{where}: arguments are not a JSON object")
    return value


def _json_call(text: str) -> dict:
    """One `{"name": ..., "arguments"|"parameters": {...}}` object."""
    try:
        call = json.loads(text)
    except json.JSONDecodeError as err:
        raise MalformedCall(f"not JSON: {err}") from None
    if not isinstance(call, dict) or not isinstance(call.get("name"), str) or not call["name"]:
        raise MalformedCall("expected an object with a name")
    arguments = call.get("arguments", call.get("parameters", {}))
    return {"name": call["name"], "arguments": _arguments_object(arguments, call["name"])}


def _tagged_calls(text: str, open_: str, close: str) -> list[dict]:
    """Calls as `open_ JSON close` blocks, nothing but whitespace between them."""
    calls, rest = [], text
    while rest.strip():
        rest = rest.lstrip()
        if not rest.startswith(open_) or close not in rest:
            raise MalformedCall(f"expected {open_} ... {close}")
        body, rest = rest[len(open_) :].split(close, 1)
        calls.append(_json_call(body.strip()))
    return calls


def _hermes_calls(text: str) -> list[dict]:
    return _tagged_calls(text, "<tool_call>", "</tool_call>")


def _internlm2_calls(text: str) -> list[dict]:
    return _tagged_calls(text, "<|action_start|><|plugin|>", "<|action_end|>")


def _llama3_calls(text: str) -> list[dict]:
    """`<|python_tag|>`? then one JSON object per call, several separated by `;`."""
    text = text.strip().removeprefix("<|python_tag|>").strip()
    decoder, calls, position = json.JSONDecoder(), [], 0
    while position < len(text):
        try:
            value, end = decoder.raw_decode(text, position)
        except json.JSONDecodeError as err:
            raise MalformedCall(f"not JSON: {err}") from None
        calls.append(_json_call(json.dumps(value)))
        position = end
        while position < len(text) and text[position] in " \t\n;":
            position += 1
    if not calls:
        raise MalformedCall("no call after <|python_tag|>")
    return calls


def _mistral_calls(text: str) -> list[dict]:
    """`[TOOL_CALLS] [{"name", "arguments"}, ...]` (tokenizer v3), or `[TOOL_CALLS]name[ARGS]{...}` per call (v11)."""
    parts = [part.strip() for part in text.split("[TOOL_CALLS]") if part.strip()]
    calls = []
    for part in parts:
        if "[ARGS]" in part:
            name, arguments = part.split("[ARGS]", 1)
            if not re.fullmatch(r"[\w.-]+", name.strip()):
                raise MalformedCall("expected a function name before [ARGS]")
            try:
                calls.append({"name": name.strip(), "arguments": _arguments_object(json.loads(arguments), name)})
            except json.JSONDecodeError:
                raise MalformedCall(f"{name.strip()}: arguments are not JSON") from None
            continue
        try:
            listed = json.loads(part)
        except json.JSONDecodeError as err:
            raise MalformedCall(f"not JSON: {err}") from None
        for call in listed if isinstance(listed, list) else [listed]:
            calls.append(_json_call(json.dumps(call)))
    if not calls:
        raise MalformedCall("[TOOL_CALLS] without a call")
    return calls


GLM4_CALL = re.compile(r"\s*([A-Za-z_][\w.-]*)\n\s*(\{.*)", re.DOTALL)


def _glm4_calls(text: str) -> list[dict]:
    """The function name on its own line, then the arguments as JSON; a further call opens a new <|assistant|>."""
    calls = []
    for part in text.split("<|assistant|>"):
        if not part.strip():
            continue
        found = GLM4_CALL.fullmatch(part.rstrip())
        if not found:
            raise MalformedCall("expected a function name on its own line, then JSON arguments")
        try:
            arguments = json.loads(found[2])
        except json.JSONDecodeError:
            raise MalformedCall(f"{found[1]}: arguments are not JSON") from None
        calls.append({"name": found[1], "arguments": _arguments_object(arguments, found[1])})
    return calls


DEEPSEEK_CALL = re.compile(
    r"<｜tool▁call▁begin｜>(?:(?P<type>function)<｜tool▁sep｜>(?P<name>[^\n<]+)\n```(?:json)?\n(?P<fenced>.*?)\n```"
    r"|(?P<name31>[^<]+?)<｜tool▁sep｜>(?P<bare>.*?))<｜tool▁call▁end｜>",
    re.DOTALL,
)


def _deepseek_calls(text: str) -> list[dict]:
    """DeepSeek V3: `<｜tool▁calls▁begin｜>` then per call `<｜tool▁call▁begin｜>function<｜tool▁sep｜>NAME`, the
    arguments in a ```json fence, `<｜tool▁call▁end｜>`; V3.1 writes `NAME<｜tool▁sep｜>ARGUMENTS` instead."""
    body = text.strip().removeprefix("<｜tool▁calls▁begin｜>")
    if "<｜tool▁calls▁end｜>" not in body:
        raise MalformedCall("no <｜tool▁calls▁end｜>")
    body, _ = body.split("<｜tool▁calls▁end｜>", 1)
    calls, position = [], 0
    for found in DEEPSEEK_CALL.finditer(body):
        if body[position : found.start()].strip():
            raise MalformedCall("text between calls")
        name = (found["name"] or found["name31"]).strip()
        arguments = found["fenced"] if found["name"] else found["bare"]
        try:
            calls.append({"name": name, "arguments": _arguments_object(json.loads(arguments), name)})
        except json.JSONDecodeError:
            raise MalformedCall(f"{name}: arguments are not JSON") from None
        position = found.end()
    if not calls or body[position:].strip():
        raise MalformedCall("expected <｜tool▁call▁begin｜> ... <｜tool▁call▁end｜>")
    return calls


@dataclass(frozen=True)
class ToolFormat:
    name: str
    families: str
    """Who writes calls this way (documentation and `invoke models`)."""
    start_anchor: str
    """A pattern for where the template opens the assistant's turn (what the model writes comes after)."""
    end_of_turn: str
    """A pattern for the tokens that end the assistant's turn."""
    markers: tuple[str, ...]
    """What opens a call anywhere in a reply; empty for formats whose call is the reply itself (`opening`)."""
    read_calls: Callable[[str], list[dict]]
    """The calls in the text from the first marker on; raises MalformedCall."""
    opening: re.Pattern | None = None
    """For a format whose call is the reply itself: how a reply that is a call begins (matched at its start)."""
    may_open: Callable[[str], bool] | None = None
    """For the same formats: whether a reply still being written may yet begin that way."""
    own_template: dict | None = None
    """transformers' parser for the family's calls, where it can express them; saved with tokenizers."""
    lmdeploy_parser: str | None = None
    """LMDeploy's `--tool-call-parser` for the family; None where LMDeploy has none."""
    whole_reply: dict = field(init=False)

    def __post_init__(self):
        object.__setattr__(self, "whole_reply", _whole_reply(self.start_anchor, self.end_of_turn))

    @property
    def response_template(self) -> dict:
        """The template a tokenizer of this family carries: the family's own where there is one."""
        return self.own_template or self.whole_reply

    def call_start(self, text: str) -> int | None:
        """Where the first call begins in a finished reply, or None."""
        if self.opening is not None:
            return 0 if self.opening.match(text) else None
        found = [index for marker in self.markers if (index := text.find(marker)) >= 0]
        return min(found) if found else None

    def held_from(self, text: str) -> int:
        """How much of a reply still being written is content for sure: the rest may open a call."""
        if self.may_open is not None:
            return 0 if self.may_open(text) else len(text)
        start = self.call_start(text)
        if start is not None:
            return start
        # a marker's first characters at the end may become it
        return min((_before_partial(text, marker) for marker in self.markers), default=len(text))


def _llama3_may_open(text: str) -> bool:
    start = text.lstrip()
    return start.startswith(("{", "<|python_tag|>")) or "<|python_tag|>".startswith(start)


GLM4_MAY_OPEN = re.compile(r"\s*(?:[A-Za-z_][\w.-]*(?:\n\s*(?:\{.*)?)?)?", re.DOTALL)

TOOL_FORMATS = {
    format_.name: format_
    for format_ in (
        ToolFormat(
            "hermes",
            "Qwen2.5, Qwen3 and onestop's ChatML template: <tool_call> JSON blocks",
            re.escape("<|im_start|>assistant\n"),
            r"<\|im_end\|>|<\|endoftext\|>",
            ("<tool_call>",),
            _hermes_calls,
            own_template=_tool_call_blocks("<|im_start|>assistant\n", r"<\|im_end\|>|<\|endoftext\|>"),
            lmdeploy_parser="qwen2d5",
        ),
        ToolFormat(
            "onestop",
            "onestop's Gemma template (Gemma-3-270M): <tool_call> JSON blocks in the model turn",
            re.escape("<start_of_turn>model\n"),
            r"<end_of_turn>|<eos>",
            ("<tool_call>",),
            _hermes_calls,
            own_template=_tool_call_blocks("<start_of_turn>model\n", r"<end_of_turn>|<eos>"),
        ),
        ToolFormat(
            "llama3_json",
            "Llama 3.x: the reply is a JSON object {name, parameters} (after <|python_tag|>; several joined by ;)",
            re.escape("<|start_header_id|>assistant<|end_header_id|>\n\n"),
            r"<\|eot_id\|>|<\|eom_id\|>|<\|end_of_text\|>",
            (),
            _llama3_calls,
            opening=re.compile(r"\s*(?:<\|python_tag\|>|\{)"),
            may_open=_llama3_may_open,
            lmdeploy_parser="llama3",
        ),
        ToolFormat(
            "mistral",
            "Mistral: [TOOL_CALLS] followed by a JSON list of {name, arguments}",
            re.escape("[/INST]") + r"|\[/TOOL_RESULTS\]",
            r"</s>",
            ("[TOOL_CALLS]",),
            _mistral_calls,
        ),
        ToolFormat(
            "glm4",
            "GLM-4: the function name on its own line, then JSON arguments",
            re.escape("<|assistant|>"),
            r"<\|user\|>|<\|observation\|>|<\|endoftext\|>",
            (),
            _glm4_calls,
            opening=re.compile(r"\s*[A-Za-z_][\w.-]*\n\s*\{"),
            may_open=GLM4_MAY_OPEN.fullmatch,
        ),
        ToolFormat(
            "internlm2",
            "InternLM2/2.5: <|action_start|><|plugin|> JSON {name, parameters} <|action_end|>",
            re.escape("<|im_start|>assistant\n"),
            r"<\|im_end\|>|</s>",
            ("<|action_start|><|plugin|>",),
            _internlm2_calls,
            lmdeploy_parser="internlm",
        ),
        ToolFormat(
            "deepseek_v3",
            "DeepSeek V3/V3.1/R1: <｜tool▁calls▁begin｜> with one <｜tool▁call▁begin｜> block per call",
            re.escape("<｜Assistant｜>"),
            r"<｜end▁of▁sentence｜>",
            ("<｜tool▁calls▁begin｜>",),
            _deepseek_calls,
        ),
    )
}


def tool_format(name: str | None) -> ToolFormat | None:
    """The named format; None for a model config without one (then tool calls are not parsed)."""
    if name is None:
        return None
    if name not in TOOL_FORMATS:
        raise OnestopError(f"config key 'model.tool_format': unknown format {name!r}; known: {', '.join(TOOL_FORMATS)}")
    return TOOL_FORMATS[name]


def attach_response_template(tokenizer, format_name: str | None) -> None:
    """Give the tokenizer the response template of its tool format, unless it ships one of its own."""
    format_ = tool_format(format_name)
    if format_ is not None and getattr(tokenizer, "response_template", None) is None:
        tokenizer.response_template = format_.response_template


def format_of(template: dict | None) -> ToolFormat | None:
    """The format whose response template this is (a tokenizer onestop saved), else None."""
    return next((f for f in TOOL_FORMATS.values() if template in (f.own_template, f.whole_reply)), None)


@dataclass
class Reply:
    """An assistant reply as read: what the client sees as `content`, `reasoning_content` and `tool_calls`."""

    content: str
    reasoning: str | None = None
    calls: list[dict] = field(default_factory=list)
    """[{"name", "arguments": dict}]"""
    malformed: str | None = None
    """Why a call the model began could not be read (it is then left in `content`)."""


def split_thinking(text: str, thinking: bool = False, final: bool = True) -> tuple[str | None, str]:
    """(reasoning, the rest) of a reply that may open with a `<think>` block; `thinking` says the prompt already
    opened one. The rest starts after the block's closing tag. A reply still being written (`final` false)
    whose start may yet become `<think>` is held back whole."""
    stripped = text.lstrip()
    if not thinking:
        if not stripped.startswith(THINK_OPEN):
            undecided = not final and THINK_OPEN.startswith(stripped)
            return ("", "") if undecided else (None, text)
        stripped = stripped[len(THINK_OPEN) :]
    if THINK_CLOSE not in stripped:
        return stripped.strip(), ""
    reasoning, rest = stripped.split(THINK_CLOSE, 1)
    return reasoning.strip(), rest.lstrip()


def _without_end_of_turn(format_: ToolFormat, text: str) -> str:
    return re.sub(r"(?:\s*(?:" + format_.end_of_turn + r"))+\s*$", "", text)


def read_reply(format_: ToolFormat, text: str, tools_offered: bool = True, thinking: bool = False) -> Reply:
    """A finished reply read the family's way. Calls are read only when tools were offered; a call the model
    garbled is kept as content, with the reason in `malformed`."""
    reasoning, rest = split_thinking(_without_end_of_turn(format_, text), thinking)
    start = format_.call_start(rest) if tools_offered else None
    if start is None:
        return Reply(rest.strip(), reasoning or None)
    try:
        calls = format_.read_calls(rest[start:])
    except MalformedCall as err:
        return Reply(rest.strip(), reasoning or None, malformed=str(err))
    return Reply(rest[:start].strip(), reasoning or None, calls)


class ReplyStream:
    """A reply read while it is written: `feed` returns the (field, text) deltas that are certain ("content"
    or "reasoning"), holding back what may still open a call; `finish` returns the last deltas and the reply
    read whole (its calls, or why a call was malformed). What was streamed as content is always a prefix
    of the finished reply's content."""

    def __init__(self, format_: ToolFormat, tools_offered: bool = True, thinking: bool = False):
        self.format, self.tools_offered, self.thinking = format_, tools_offered, thinking
        self.text = ""
        self.sent = {"reasoning": "", "content": ""}

    def feed(self, text: str) -> list[tuple[str, str]]:
        self.text += text
        reasoning, rest = split_thinking(self.text, self.thinking, final=False)
        deltas = []
        if reasoning and not rest:  # still thinking: a closing tag may be arriving
            deltas += self._send("reasoning", reasoning[: _before_partial(reasoning, THINK_CLOSE)].rstrip())
        elif reasoning:
            deltas += self._send("reasoning", reasoning)
        end_of_turn = re.search(r"\s*(?:" + self.format.end_of_turn + ")", rest)
        rest = rest[: end_of_turn.start()] if end_of_turn else rest
        held = self.format.held_from(rest) if self.tools_offered else len(rest)
        deltas += self._send("content", rest[:held].strip())
        return deltas

    def finish(self) -> tuple[list[tuple[str, str]], Reply]:
        reply = read_reply(self.format, self.text, self.tools_offered, self.thinking)
        deltas = self._send("reasoning", reply.reasoning or "") + self._send("content", reply.content)
        return deltas, reply

    def _send(self, field_: str, sure: str) -> list[tuple[str, str]]:
        sent = self.sent[field_]
        if len(sure) <= len(sent) or not sure.startswith(sent):
            return []
        self.sent[field_] = sure
        return [(field_, sure[len(sent) :])]


def _before_partial(text: str, marker: str) -> int:
    """Where a partial `marker` at the end of `text` begins (len(text) when there is none)."""
    for length in range(min(len(marker) - 1, len(text)), 0, -1):
        if text.endswith(marker[:length]):
            return len(text) - length
    return len(text)


def opens_thinking(prompt: str) -> bool:
    """Whether the prompt leaves a `<think>` block open for the model to continue."""
    tail = prompt.rstrip()
    return tail.endswith(THINK_OPEN)


def parse_tool_calls(tokenizer, generated: str, prompt: str, tools=None) -> dict:
    """The assistant message in generated text: {"content": str, "tool_calls": [{"name", "arguments"}]}.

    Reads the text the family's way (`read_reply`) when the tokenizer carries one of onestop's response
    templates; with a template of its own, through `tokenizer.parse_response` as `transformers serve` does;
    without any, the text is content. A malformed call stays content. `arguments` are the parsed JSON object.
    """
    template = getattr(tokenizer, "response_template", None)
    format_ = format_of(template)
    if format_ is not None:
        reply = read_reply(format_, generated, tools_offered=True, thinking=opens_thinking(prompt))
        return {"content": reply.content, "tool_calls": reply.calls}
    if template is None:
        return {"content": generated, "tool_calls": []}
    try:
        parsed = tokenizer.parse_response(generated, prefix=prompt, tools=tools)
    except (ValueError, KeyError, TypeError):
        return {"content": generated, "tool_calls": []}
    calls = []
    for call in parsed.get("tool_calls") or []:
        function = call.get("function") if isinstance(call, dict) else None
        if isinstance(function, dict) and isinstance(function.get("name"), str):
            calls.append({"name": function["name"], "arguments": function.get("arguments", {})})
    return {"content": parsed.get("content") or "", "tool_calls": calls}
