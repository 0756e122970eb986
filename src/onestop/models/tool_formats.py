"""How each model family writes a tool call, and how a server reads it back.

Three things must agree for a tool-use fine-tune to work once served: the chat template that renders the
`tools` and the assistant's `tool_calls` (the training tokens and the served prompt), the response
template that transformers' `tokenizer.parse_response` and `transformers serve` use to read calls out of
generated text, and LMDeploy's `--tool-call-parser`. A model config names its family's format with
`model.tool_format`; the tokenizer onestop loads carries the matching response template, so every
adapter, export and serving copy saved from it parses calls the way the model was trained to write them.
"""

from dataclasses import dataclass

from onestop.core.errors import OnestopError


def _tool_call_blocks(start_anchor: str, end_of_turn: str) -> dict:
    """`<tool_call>{"name": ..., "arguments": {...}}</tool_call>` blocks inside the template's assistant turn."""
    return {
        "defaults": {"role": "assistant"},
        "start_anchor": start_anchor,
        "fields": {
            "reasoning_content": {"open": "<think>", "close": "</think>", "content": "text"},
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


@dataclass(frozen=True)
class ToolFormat:
    name: str
    families: str
    """Who writes calls this way (documentation and `invoke models`)."""
    response_template: dict | None
    """transformers' declarative parser for generated text; None where transformers has none for the family."""
    lmdeploy_parser: str | None
    """LMDeploy's `--tool-call-parser` for the family; None where LMDeploy has none."""


TOOL_FORMATS = {
    format_.name: format_
    for format_ in (
        ToolFormat(
            "hermes",
            "Qwen2.5, Qwen3 and onestop's ChatML template: <tool_call> JSON blocks",
            _tool_call_blocks("<|im_start|>assistant\n", r"<\|im_end\|>|<\|endoftext\|>"),
            "qwen2d5",
        ),
        ToolFormat(
            "onestop",
            "onestop's Gemma template (Gemma-3-270M): <tool_call> JSON blocks in the model turn",
            _tool_call_blocks("<start_of_turn>model\n", r"<end_of_turn>|<eos>"),
            None,
        ),
        ToolFormat("llama3_json", "Llama 3.x: a bare JSON object {name, parameters}", None, "llama3"),
        ToolFormat("mistral", "Mistral: [TOOL_CALLS] followed by a JSON list", None, None),
        ToolFormat("glm4", "GLM-4: the function name on its own line, then JSON arguments", None, None),
        ToolFormat("internlm2", "InternLM2/2.5: <|action_start|><|plugin|> JSON <|action_end|>", None, "internlm"),
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
    if format_ is not None and format_.response_template and getattr(tokenizer, "response_template", None) is None:
        tokenizer.response_template = format_.response_template


def parse_tool_calls(tokenizer, generated: str, prompt: str, tools=None) -> dict:
    """The assistant message in generated text: {"content": str, "tool_calls": [{"name", "arguments"}]}.

    Reads the text with the tokenizer's response template, exactly as `transformers serve` does; text the
    template cannot read (a malformed call) stays content, and a tokenizer without a template returns the
    text as content. `arguments` are the parsed JSON object.
    """
    template = getattr(tokenizer, "response_template", None)
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
