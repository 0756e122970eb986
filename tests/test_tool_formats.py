"""Tool calls agree from training to serving: per offline family, the training tokens of a conversation
with tools equal the prompt `transformers serve` builds, and a call the template writes is the call the
serving parser reads back. The gateway's checks of `tools`, `tool_choice` and `parallel_tool_calls`."""

import json

import pytest
from conftest import compose
from transformers.cli.serving.utils import BaseHandler, Modality

from onestop.data.tokenize import IGNORE_INDEX, tokenize_conversation
from onestop.deploy.relay import EventRelay, first_tool_call_only
from onestop.deploy.requests import RequestError, validate
from onestop.models import load_tokenizer, resolve_model_path
from onestop.models.tool_formats import TOOL_FORMATS, parse_tool_calls, tool_format

CALCULATOR = {
    "type": "function",
    "function": {
        "name": "calculator",
        "description": "Evaluate an arithmetic expression.",
        "parameters": {
            "type": "object",
            "properties": {"expression": {"type": "string", "description": "Arithmetic, e.g. 2 * (3 + 4)."}},
            "required": ["expression"],
        },
    },
}
CONVERT = {
    "type": "function",
    "function": {
        "name": "convert_units",
        "description": "Convert a value between units.",
        "parameters": {
            "type": "object",
            "properties": {
                "value": {"type": "number"},
                "from_unit": {"type": "string"},
                "to_unit": {"type": "string"},
            },
            "required": ["value", "from_unit", "to_unit"],
        },
    },
}
TOOLS = [CALCULATOR, CONVERT]


def call(name: str, arguments: dict, call_id: str = "call_1") -> dict:
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}


TOOL_CONVERSATION = [
    {"role": "user", "content": "What is 17 times 23, and 5 km in miles?"},
    {
        "role": "assistant",
        "content": "",
        "tool_calls": [
            call("calculator", {"expression": "17 * 23"}),
            call("convert_units", {"value": 5, "from_unit": "km", "to_unit": "mi"}, "call_2"),
        ],
    },
    {"role": "tool", "tool_call_id": "call_1", "content": "391"},
    {"role": "tool", "tool_call_id": "call_2", "content": "5 km = 3.107 mi"},
    {"role": "assistant", "content": "17 * 23 = 391, and 5 km is 3.107 mi."},
]


# The families whose tokenizers are here offline (the Gemma one is converted from its GGUF once: slow).
@pytest.fixture(scope="module", params=["tiny", pytest.param("gemma3_270m", marks=pytest.mark.slow)])
def family_tokenizer(request):
    cfg = compose(f"model={request.param}")
    return load_tokenizer(cfg.model, resolve_model_path(cfg.model))


def as_a_client_sends(messages: list[dict]) -> list[dict]:
    """OpenAI clients send tool-call arguments as JSON strings."""
    sent = json.loads(json.dumps(messages))
    for message in sent:
        for tool_call in message.get("tool_calls") or []:
            tool_call["function"]["arguments"] = json.dumps(tool_call["function"]["arguments"])
    return sent


def served_prompt_ids(tokenizer, messages: list[dict], tools: list[dict]) -> list[int]:
    """The prompt token ids `transformers serve` builds for a chat request (its own message conversion)."""
    inputs = BaseHandler.get_processor_inputs_from_messages(as_a_client_sends(messages), Modality.LLM)
    encoded = tokenizer.apply_chat_template(
        inputs, add_generation_prompt=True, tools=tools, tokenize=True, return_dict=True
    )
    return list(encoded["input_ids"])


def training_prefixes(tokenizer, messages: list[dict], tools: list[dict]) -> list[list[int]]:
    """Training's token ids up to the start of each trained (assistant) span."""
    tokens = tokenize_conversation(tokenizer, messages, max_seq_len=4096, tools=tools)
    labels = tokens["labels"]
    starts = [i for i in range(1, len(labels)) if labels[i] != IGNORE_INDEX and labels[i - 1] == IGNORE_INDEX]
    return [list(tokens["input_ids"][:start]) for start in starts]


def test_training_tokens_equal_the_served_prompt_at_every_assistant_turn(family_tokenizer):
    tokenizer = family_tokenizer
    prefixes = training_prefixes(tokenizer, TOOL_CONVERSATION, TOOLS)
    assert len(prefixes) == 2  # the call turn and the answer after the tool results
    assert prefixes[0] == served_prompt_ids(tokenizer, TOOL_CONVERSATION[:1], TOOLS)
    assert prefixes[1] == served_prompt_ids(tokenizer, TOOL_CONVERSATION[:4], TOOLS)


def test_a_rendered_call_is_parsed_back_with_the_same_name_and_arguments(family_tokenizer):
    tokenizer = family_tokenizer
    prompt = tokenizer.apply_chat_template(
        TOOL_CONVERSATION[:1], tools=TOOLS, tokenize=False, add_generation_prompt=True
    )
    through = tokenizer.apply_chat_template(TOOL_CONVERSATION[:2], tools=TOOLS, tokenize=False)
    generated = through[len(prompt) :]
    parsed = parse_tool_calls(tokenizer, generated, prompt, TOOLS)
    expected = [
        {"name": c["function"]["name"], "arguments": c["function"]["arguments"]}
        for c in TOOL_CONVERSATION[1]["tool_calls"]
    ]
    assert parsed == {"content": "", "tool_calls": expected}
    follow_up_prompt = tokenizer.apply_chat_template(
        TOOL_CONVERSATION[:4], tools=TOOLS, tokenize=False, add_generation_prompt=True
    )
    full = tokenizer.apply_chat_template(TOOL_CONVERSATION, tools=TOOLS, tokenize=False)
    plain = parse_tool_calls(tokenizer, full[len(follow_up_prompt) :], follow_up_prompt, TOOLS)
    assert plain == {"content": TOOL_CONVERSATION[-1]["content"], "tool_calls": []}


def test_saved_tokenizers_carry_the_response_template(family_tokenizer, tmp_path):
    from transformers import AutoTokenizer

    family_tokenizer.save_pretrained(tmp_path)
    reloaded = AutoTokenizer.from_pretrained(tmp_path)
    assert reloaded.response_template == family_tokenizer.response_template is not None


def test_every_model_option_names_a_known_tool_format():
    for option in ("tiny", "gemma3_270m", "qwen", "qwen7b", "llama3_8b", "mistral_7b", "glm4_9b", "internlm2_5_7b"):
        assert tool_format(compose(f"model={option}").model.tool_format) in TOOL_FORMATS.values()
    assert compose("model=deepseek").model.tool_format is None


SUPPORT = {"tool_calls": True, "tool_choice": False}
CHAT = {"messages": [{"role": "user", "content": "hi"}], "tools": TOOLS}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"tools": {"name": "x"}}, "`tools` must be a list"),
        ({"tools": [{"type": "retrieval"}]}, r"tools\[0\]: expected an object of type 'function'"),
        ({"tools": [{"type": "function", "function": {"parameters": {}}}]}, r"tools\[0\]: expected"),
        ({"tools": [{"type": "function", "function": {"name": "f", "parameters": "x"}}]}, "parameters"),
        ({"tool_choice": "sometimes"}, "`tool_choice` must be"),
        ({"tool_choice": {"type": "function", "function": {"name": "search"}}}, "'search' is not in `tools`"),
        ({"tool_choice": "required"}, "cannot force a tool call"),
        ({"tool_choice": {"type": "function", "function": {"name": "calculator"}}}, "cannot force a tool call"),
        ({"tool_choice": "auto", "tools": []}, "`tools` is empty"),
        ({"parallel_tool_calls": "no"}, "`parallel_tool_calls` must be true or false"),
        ({"tools": [{"type": "function", "function": {"name": "f", "strict": True}}]}, "cannot enforce a strict"),
        (
            {"messages": [{"role": "assistant", "tool_calls": [call("calculator", "{oops")]}]},
            r"messages\[0\].tool_calls\[0\].function.arguments: not valid JSON",
        ),
    ],
)
def test_the_gateway_refuses_tool_requests_it_cannot_serve(change, message):
    with pytest.raises(RequestError, match=message) as refused:
        validate("chat", {**CHAT, **change}, "demo", SUPPORT)
    assert refused.value.status == 400


def test_the_gateway_forwards_what_transformers_serve_understands():
    assert validate("chat", {**CHAT, "tool_choice": "auto", "parallel_tool_calls": True}, "demo", SUPPORT) == CHAT
    strict_off = [{**t, "function": {**t["function"], "strict": False}} for t in TOOLS]
    assert validate("chat", {**CHAT, "tools": strict_off}, "demo", SUPPORT)["tools"] == TOOLS
    offered_none = validate("chat", {**CHAT, "tool_choice": "none"}, "demo", SUPPORT)
    assert "tools" not in offered_none and "tool_choice" not in offered_none
    with pytest.raises(RequestError, match="cannot return tool calls"):
        validate("chat", CHAT, "demo", {"tool_calls": False, "tool_choice": False})
    lmdeploy = {"tool_calls": True, "tool_choice": True}
    forced = {**CHAT, "tool_choice": "required", "parallel_tool_calls": False}
    assert validate("chat", forced, "demo", lmdeploy) == forced  # LMDeploy honours both itself


def test_parallel_tool_calls_false_keeps_one_call_also_when_streamed():
    calls = [call("calculator", "{}", "a"), call("convert_units", "{}", "b")]
    payload = {"choices": [{"message": {"role": "assistant", "tool_calls": calls}}]}
    assert first_tool_call_only(payload)["choices"][0]["message"]["tool_calls"] == calls[:1]
    relay = EventRelay("demo", single_tool_call=True)
    events = [
        {"model": "/tmp/x@main", "choices": [{"delta": {"tool_calls": [{"index": 0, "function": {"name": "a"}}]}}]},
        {"model": "/tmp/x@main", "choices": [{"delta": {"tool_calls": [{"index": 1, "function": {"name": "b"}}]}}]},
    ]
    stream = b"".join(b"data: " + json.dumps(e).encode() + b"\n\n" for e in events) + b"data: [DONE]\n\n"
    out = relay.feed(stream[:37]) + relay.feed(stream[37:]) + relay.flush()  # split mid-event on purpose
    received = [json.loads(line[6:]) for line in out.decode().split("\n\n") if line.startswith("data: {")]
    assert [e["model"] for e in received] == ["demo", "demo"]
    assert received[0]["choices"][0]["delta"]["tool_calls"][0]["function"]["name"] == "a"
    assert received[1]["choices"][0]["delta"]["tool_calls"] is None
    assert out.endswith(b"data: [DONE]\n\n")


def test_a_backend_error_event_that_is_not_json_reaches_the_client_as_a_json_error():
    broken = b'data: {"error": "json parser could not parse region as JSON.\nContent: \'{"expr\'"}\n\n'
    out = EventRelay("demo", single_tool_call=False).feed(broken)
    error = json.loads(out.decode().removeprefix("data: "))["error"]
    assert error["type"] == "backend_error" and error["message"].startswith("json parser could not parse region")
