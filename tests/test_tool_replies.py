"""Every family's tool calls read back: each format's real output text (as the family's models write it, and
as vLLM's parsers for them read it) parsed into calls, whole and streamed; `<think>` kept out of content and
calls; a garbled call returned as content and counted; each bundled template's rendered call read back; and
one family end to end through the real gateway and `transformers serve` (the shared `tool_deployment`)."""

import json
import re
import urllib.request

import pytest
from conftest import tiny_tools
from openai import OpenAI
from test_tool_formats import TOOL_CONVERSATION, TOOLS
from transformers import AutoTokenizer

from onestop.deploy.relay import EventRelay
from onestop.deploy.replies import StreamReading, read_completion
from onestop.models.templates import bundled_template
from onestop.models.tool_formats import TOOL_FORMATS, ReplyStream, parse_tool_calls, read_reply

CALC = {"name": "calculator", "arguments": {"expression": "17 * 23"}}
CONVERT = {"name": "convert_units", "arguments": {"value": 5, "from_unit": "km", "to_unit": "mi"}}

# (format, what a model of the family writes, content, calls)
REPLIES = [
    (
        "hermes",
        'Let me compute.\n<tool_call>\n{"name": "calculator", "arguments": {"expression": "17 * 23"}}\n</tool_call>\n'
        '<tool_call>\n{"name": "convert_units", "arguments": {"value": 5, "from_unit": "km", "to_unit": "mi"}}\n'
        "</tool_call><|im_end|>",
        "Let me compute.",
        [CALC, CONVERT],
    ),
    (
        "llama3_json",
        '<|python_tag|>{"name": "calculator", "parameters": {"expression": "17 * 23"}}<|eom_id|>',
        "",
        [CALC],
    ),
    (
        "llama3_json",
        '{"name": "calculator", "parameters": {"expression": "17 * 23"}}; '
        '{"name": "convert_units", "parameters": {"value": 5, "from_unit": "km", "to_unit": "mi"}}<|eot_id|>',
        "",
        [CALC, CONVERT],
    ),
    (
        "mistral",
        '[TOOL_CALLS] [{"name": "calculator", "arguments": {"expression": "17 * 23"}}, '
        '{"name": "convert_units", "arguments": {"value": 5, "from_unit": "km", "to_unit": "mi"}}]</s>',
        "",
        [CALC, CONVERT],
    ),
    ("mistral", '[TOOL_CALLS]calculator[ARGS]{"expression": "17 * 23"}</s>', "", [CALC]),  # tokenizer v11
    ("glm4", 'calculator\n{"expression": "17 * 23"}<|observation|>', "", [CALC]),
    (
        "internlm2",
        "I will use the calculator.<|action_start|><|plugin|>\n"
        '{"name": "calculator", "parameters": {"expression": "17 * 23"}}<|action_end|><|im_end|>',
        "I will use the calculator.",
        [CALC],
    ),
    (
        "deepseek_v3",
        "<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>calculator\n```json\n"
        '{"expression": "17 * 23"}\n```<｜tool▁call▁end｜>\n<｜tool▁call▁begin｜>function<｜tool▁sep｜>convert_units\n'
        '```json\n{"value": 5, "from_unit": "km", "to_unit": "mi"}\n```<｜tool▁call▁end｜><｜tool▁calls▁end｜>'
        "<｜end▁of▁sentence｜>",
        "",
        [CALC, CONVERT],
    ),
    (  # DeepSeek V3.1 writes the name before the separator and bare JSON after it
        "deepseek_v3",
        '<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>calculator<｜tool▁sep｜>{"expression": "17 * 23"}'
        "<｜tool▁call▁end｜><｜tool▁calls▁end｜><｜end▁of▁sentence｜>",
        "",
        [CALC],
    ),
    (  # Qwen3: the thinking mentions a call; only the one after it is made
        "hermes",
        "<think>\nThe user wants a product. I should answer with <tool_call> for the calculator.\n</think>\n\n"
        '<tool_call>\n{"name": "calculator", "arguments": {"expression": "17 * 23"}}\n</tool_call><|im_end|>',
        "",
        [CALC],
    ),
    ("glm4", "\nParis is the capital of France.<|user|>", "Paris is the capital of France.", []),
    ("llama3_json", "Paris.<|eot_id|>", "Paris.", []),
]


def streamed(format_name: str, text: str, tools_offered: bool = True) -> tuple[dict, object]:
    """The reply fed a few characters at a time, as a stream's tokens arrive: the deltas joined per field.
    transformers serve streams the reply without its end-of-turn token (the whole-reply template's close)."""
    text = re.sub(r"(?:" + TOOL_FORMATS[format_name].end_of_turn + r")$", "", text)
    stream, joined = ReplyStream(TOOL_FORMATS[format_name], tools_offered), {"content": "", "reasoning": ""}
    for start in range(0, len(text), 3):
        for field, piece in stream.feed(text[start : start + 3]):
            joined[field] += piece
    rest, reply = stream.finish()
    for field, piece in rest:
        joined[field] += piece
    return joined, reply


@pytest.mark.parametrize(("name", "text", "content", "calls"), REPLIES)
def test_each_family_s_calls_are_read_whole_and_streamed(name, text, content, calls):
    reply = read_reply(TOOL_FORMATS[name], text)
    assert (reply.content, reply.calls, reply.malformed) == (content, calls, None)
    joined, streamed_reply = streamed(name, text)
    assert streamed_reply == reply and joined["content"] == content


def test_thinking_is_reasoning_never_content_and_never_a_call():
    text = "<think>\nMaybe <tool_call>{</tool_call> is wrong.\n</think>\n\nIt is 391.<|im_end|>"
    reply = read_reply(TOOL_FORMATS["hermes"], text)
    assert (reply.reasoning, reply.content, reply.calls) == (
        "Maybe <tool_call>{</tool_call> is wrong.",
        "It is 391.",
        [],
    )
    joined, _ = streamed("hermes", text)
    assert joined == {"reasoning": "Maybe <tool_call>{</tool_call> is wrong.", "content": "It is 391."}
    # the prompt opened the block (a template that prefills <think>): the reply starts inside it
    assert read_reply(TOOL_FORMATS["hermes"], "hmm</think>391", thinking=True).reasoning == "hmm"


@pytest.mark.parametrize(
    ("name", "text"),
    [
        ("hermes", 'Sure. <tool_call>\n{"name": "calculator", "arguments": {"expression": "17 *</tool_call>'),
        ("hermes", '<tool_call>\n{"name": "calculator", "arguments": {"expression": "17 * 23"}}'),  # cut short
        ("llama3_json", '{"name": "calculator", "parameters": {"expression": '),
        ("mistral", "[TOOL_CALLS] [calculator(expression='17 * 23')]"),
        ("glm4", "calculator\n{expression: 17 * 23}"),
        ("internlm2", '<|action_start|><|plugin|>\n{"parameters": {}}<|action_end|>'),  # no name
        ("deepseek_v3", "<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>calculator\n```json\n{"),
    ],
)
def test_a_garbled_call_is_content_with_the_reason(name, text):
    reply = read_reply(TOOL_FORMATS[name], text)
    assert reply.calls == [] and reply.malformed and reply.content == text.strip()
    joined, _ = streamed(name, text)
    assert joined["content"] == reply.content


def test_without_tools_offered_nothing_is_read_as_a_call():
    text = '<tool_call>\n{"name": "calculator", "arguments": {}}\n</tool_call>'
    assert read_reply(TOOL_FORMATS["hermes"], text, tools_offered=False).content == text
    assert streamed("hermes", text, tools_offered=False)[0]["content"] == text


# Each format with the bundled template that writes it (model.chat_template=NAME).
TEMPLATES = [
    ("hermes", "chatml"),
    ("onestop", "gemma"),
    ("llama3_json", "llama3"),
    ("mistral", "mistral"),
    ("glm4", "glm4"),
    ("internlm2", "internlm2"),
    ("deepseek_v3", "deepseek_v3"),
]


@pytest.fixture(scope="module")
def tiny_tokenizer():
    return AutoTokenizer.from_pretrained("tests/assets/tiny-qwen2")


@pytest.mark.parametrize(("name", "template"), TEMPLATES)
def test_each_bundled_template_renders_tools_calls_and_results_that_read_back(tiny_tokenizer, name, template):
    format_, text = TOOL_FORMATS[name], bundled_template(template)

    def render(messages, generation_prompt):
        return tiny_tokenizer.apply_chat_template(
            messages, tools=TOOLS, chat_template=text, tokenize=False, add_generation_prompt=generation_prompt
        )

    prompt, through = render(TOOL_CONVERSATION[:1], True), render(TOOL_CONVERSATION[:2], False)
    assert through.startswith(prompt) and "calculator" in prompt  # the tools are in the prompt
    reply = read_reply(format_, through[len(prompt) :])
    assert reply.calls == [CALC, CONVERT] and reply.malformed is None
    follow_up, whole = render(TOOL_CONVERSATION[:4], True), render(TOOL_CONVERSATION, False)
    assert whole.startswith(follow_up) and "3.107 mi" in follow_up  # the results go back in
    assert read_reply(format_, whole[len(follow_up) :]).content == TOOL_CONVERSATION[-1]["content"]
    # what transformers serve hands back with the whole-reply template: the reply, less its end-of-turn
    served = tiny_tokenizer.parse_response(through[len(prompt) :], format_.whole_reply, prefix=prompt)
    assert read_reply(format_, served["content"]).calls == [CALC, CONVERT]
    # a tokenizer saved with the format's template reads the same calls in evaluation
    tiny_tokenizer.response_template = format_.response_template
    assert parse_tool_calls(tiny_tokenizer, through[len(prompt) :], prompt)["tool_calls"] == [CALC, CONVERT]
    tiny_tokenizer.response_template = None


def chunk(delta: dict, finish_reason=None) -> dict:
    """A chunk as transformers serve streams it."""
    choice = {"index": 0, "delta": delta, "finish_reason": finish_reason}
    return {"id": "req", "object": "chat.completion.chunk", "model": "/m", "choices": [choice]}


def test_the_gateway_returns_calls_in_the_openai_shape_and_counts_garbled_ones():
    counted = []
    raw = next(text for name, text, _, _ in REPLIES if name == "internlm2")  # content, then a call
    payload = {"choices": [{"index": 0, "message": {"role": "assistant", "content": raw}, "finish_reason": "stop"}]}
    read = read_completion(payload, TOOL_FORMATS["internlm2"], True, lambda: counted.append(1))["choices"][0]
    assert read["finish_reason"] == "tool_calls" and read["message"]["content"] == "I will use the calculator."
    (call,) = read["message"]["tool_calls"]
    assert call["type"] == "function" and call["id"].startswith("call_")
    assert call["function"] == {"name": "calculator", "arguments": json.dumps(CALC["arguments"])}

    relay = EventRelay("demo", False, StreamReading(TOOL_FORMATS["mistral"], True, lambda: counted.append(1)))
    events = [chunk({"role": "assistant"}), *(chunk({"content": c}) for c in ["[TOOL_", "CALLS] [{", '"na']), chunk({})]
    events[-1]["choices"][0]["finish_reason"] = "stop"
    stream = b"".join(b"data: " + json.dumps(e).encode() + b"\n\n" for e in events)
    out = [json.loads(e[6:]) for e in (relay.feed(stream) + relay.finish()).decode().split("\n\n") if "{" in e]
    assert "[TOOL_CALLS]" in "".join(e["choices"][0]["delta"].get("content") or "" for e in out)  # garbled: content
    assert counted == [1] and out[-1]["choices"][0]["finish_reason"] == "stop"


def malformed_so_far(base_url: str) -> int:
    with urllib.request.urlopen(base_url.removesuffix("/v1") + "/health") as reply:
        return json.load(reply)["load"]["malformed_tool_calls"]


def test_calls_come_back_through_the_real_gateway_whole_and_streamed(tool_deployment):
    client = OpenAI(base_url=tool_deployment.base_url, api_key="-", max_retries=0)
    asked = {"model": tool_deployment.name, "temperature": 0, "tools": [t.openai_schema() for t in tiny_tools()]}
    messages = [{"role": "user", "content": "What is 17 times 23?"}]
    whole = client.chat.completions.create(messages=messages, max_tokens=128, **asked).choices[0]
    assert whole.finish_reason == "tool_calls" and whole.message.content is None
    (call,) = whole.message.tool_calls
    assert call.function.name == "calculator" and json.loads(call.function.arguments) == {"expression": "17 * 23"}
    calls, content, finish = {}, "", None
    for part in client.chat.completions.create(messages=messages, max_tokens=128, stream=True, **asked):
        delta = part.choices[0].delta if part.choices else None
        content += (delta and delta.content) or ""
        for piece in (delta and delta.tool_calls) or []:
            calls[piece.index] = piece.function
        finish = (part.choices and part.choices[0].finish_reason) or finish
    assert finish == "tool_calls" and content == ""
    assert [(c.name, json.loads(c.arguments)) for c in calls.values()] == [("calculator", {"expression": "17 * 23"})]
    # cut off by max_tokens before its </tool_call>: the call comes back as content, and is counted
    before = malformed_so_far(tool_deployment.base_url)
    cut = client.chat.completions.create(messages=messages, max_tokens=24, **asked).choices[0]
    assert cut.finish_reason == "length" and not cut.message.tool_calls
    assert cut.message.content.startswith("<tool_call>")
    assert malformed_so_far(tool_deployment.base_url) == before + 1
