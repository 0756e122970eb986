"""What the gateway accepts: a generation request checked as the OpenAI API documents it, before it is forwarded.

`GenerationRequest.parse` reads a client's body against this deployment's `Policy` (the name it serves, what
its backend does with tools, its token limit, the fields its backend knows) and either refuses it with a
`RequestError` naming the field and the reason, or holds the body to forward: made into what the backend
understands (a stop string as a list, `tool_choice` done by the gateway where the backend ignores it).
"""

import json
from dataclasses import dataclass

from onestop.data.media import MediaError, open_image
from onestop.deploy.prompts import PromptMeter

ROLES = ("system", "user", "assistant", "tool")
# transformers serve reads a whole GenerationConfig from this field: it would lift any max_tokens limit
REFUSED_FIELDS = {"generation_config": "it would override this deployment's generation limits"}


class RequestError(Exception):
    def __init__(self, status: int, message: str, code: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.code = status, message, code


@dataclass(frozen=True)
class ToolSupport:
    """What the backend does with tools."""

    tool_calls: bool = False
    """It returns parsed calls (itself, or through the gateway's reading of its replies)."""
    tool_choice: bool = False
    """It honours `tool_choice` and `parallel_tool_calls` itself (LMDeploy); else the gateway does what it can."""


@dataclass(frozen=True)
class Policy:
    """What one deployment accepts."""

    served_name: str
    """The model name clients call; any other is answered 404."""
    tools: ToolSupport = ToolSupport()
    max_tokens_limit: int | None = None
    """The most max_tokens a request may ask for."""
    known_fields: frozenset | None = None
    """When given, the only top-level fields the backend accepts."""
    reads_images: bool = False
    """The served model reads images (a vision-language model served with its processor); otherwise an image
    part is refused, never dropped."""
    max_images: int | None = None
    """The most images one request may carry."""


@dataclass(frozen=True)
class GenerationRequest:
    """A checked chat or completion request: the body as the client sent it, and the body to forward."""

    kind: str
    """chat or completion"""
    body: dict
    forwarded: dict

    @property
    def stream(self) -> bool:
        return bool(self.forwarded.get("stream"))

    @property
    def tools_offered(self) -> bool:
        """Whether the model is offered tools (not when `tool_choice: none` took them away)."""
        return bool(self.forwarded.get("tools"))

    @classmethod
    def parse(cls, kind: str, body, policy: Policy) -> "GenerationRequest":
        """The request, or a RequestError with the reason."""
        if not isinstance(body, dict):
            raise RequestError(400, "request body must be a JSON object")
        if policy.known_fields is not None and (unknown := sorted(set(body) - policy.known_fields)):
            raise RequestError(400, f"unrecognised request field(s): {', '.join(f'`{k}`' for k in unknown)}")
        for key, why in REFUSED_FIELDS.items():
            if key in body:
                raise RequestError(400, f"`{key}` is not accepted here: {why}")
        _check_model(body.get("model"), policy.served_name)
        if kind == "chat":
            messages = body.get("messages")
            if not isinstance(messages, list) or not messages:
                raise RequestError(400, "`messages` is required: a non-empty list of {role, content} objects")
            images = sum(
                _check_message(message, f"messages[{index}]", policy) for index, message in enumerate(messages)
            )
            if policy.max_images is not None and images > policy.max_images:
                raise RequestError(
                    400, f"{images} images in the request; this deployment takes at most {policy.max_images} "
                    "(max_images_per_request)"
                )  # fmt: skip
        else:
            prompt = body.get("prompt")
            if not (isinstance(prompt, str) and prompt) and not (
                isinstance(prompt, list) and prompt and all(isinstance(p, str) for p in prompt)
            ):
                raise RequestError(400, "`prompt` is required: a non-empty string")
        _check_generation(body, policy.max_tokens_limit)
        stop = body.get("stop")
        forwarded = dict(body)
        if kind == "chat":
            forwarded = _tools_forwarded(forwarded, policy.tools)
        if stop in ([], "", None):
            forwarded.pop("stop", None)  # OpenAI accepts an empty stop list; transformers serve fails on it
        elif isinstance(stop, str):
            forwarded["stop"] = [stop]
        if body.get("logit_bias"):  # transformers serve fails mid-generation on a whole-number bias
            forwarded["logit_bias"] = {token: float(bias) for token, bias in body["logit_bias"].items()}
        return cls(kind, body, forwarded)


def validate(
    kind: str,
    body,
    served_name: str,
    tool_support: dict | None = None,
    max_tokens_limit: int | None = None,
    known_fields: frozenset | None = None,
) -> dict:
    """The body to forward for a request (`GenerationRequest.parse`), with the policy given field by field:
    `tool_support` as {"tool_calls": bool, "tool_choice": bool} (see ToolSupport)."""
    policy = Policy(served_name, ToolSupport(**(tool_support or {})), max_tokens_limit, known_fields)
    return GenerationRequest.parse(kind, body, policy).forwarded


def _check_model(model, served_name: str) -> None:
    if model is not None and not isinstance(model, str):
        raise RequestError(400, f"`model` must be a string, got {_shown(model)}")
    if model not in (None, served_name):
        raise RequestError(
            404, f"model {model!r} is not served here; this server serves {served_name!r}", "model_not_found"
        )


def _check_message(message, where: str, policy: Policy) -> int:
    """Checks one chat message; returns how many images it carries."""
    if not isinstance(message, dict):
        raise RequestError(400, f"{where}: expected an object with role system|user|assistant|tool")
    role = message.get("role")
    if role not in ROLES:
        raise RequestError(400, f"{where}.role: expected system, user, assistant or tool, got {_shown(role)}")
    calls = message.get("tool_calls")
    if calls is not None:
        if role != "assistant" or not isinstance(calls, list):
            raise RequestError(400, f"{where}.tool_calls: expected a list of calls, on an assistant message")
        for call_index, call in enumerate(calls):
            _check_tool_call(call, f"{where}.tool_calls[{call_index}]")
    content = message.get("content")
    if content is None:
        if role == "assistant" and calls:
            return 0
        raise RequestError(400, f"{where}.content: required (null only beside an assistant's tool_calls)")
    images = 0
    if isinstance(content, list):
        for part_index, part in enumerate(content):
            if isinstance(part, dict) and part.get("type") == "image_url":
                _check_image(part, f"{where}.content[{part_index}]", role, policy)
                images += 1
            elif not (isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str)):
                expected = "{type: text, text} or {type: image_url, image_url: {url}}" if policy.reads_images else (
                    "{type: text, text: string} (this model reads text)"
                )  # fmt: skip
                raise RequestError(400, f"{where}.content[{part_index}]: expected {expected}")
    elif not isinstance(content, str):
        raise RequestError(
            400, f"{where}.content: expected a string or a list of text parts, got {type(content).__name__}"
        )
    return images


def _check_image(part: dict, where: str, role: str, policy: Policy) -> None:
    """An image part the model will see: a `data:` URL holding a readable image, in a user message. The gateway
    reads no files and fetches nothing: a path or file:// URL would let a client read any file the server can."""
    if not policy.reads_images:
        raise RequestError(
            400, f"{where}: this model does not read images (a text model); send text parts only, or serve a "
            "vision-language run"
        )  # fmt: skip
    if role != "user":
        raise RequestError(400, f"{where}: images may only be in user messages (as in training)")
    image = part.get("image_url")
    url = image.get("url") if isinstance(image, dict) else None
    if not isinstance(url, str) or not url:
        raise RequestError(400, f"{where}: expected {{type: image_url, image_url: {{url: data:image/...;base64,...}}}}")
    if not url.startswith("data:"):
        kind = "http(s) URLs are not fetched" if url.startswith(("http://", "https://")) else "files are not read"
        raise RequestError(
            400, f"{where}: {kind} by this server; send the image inline as data:image/png;base64,... "
            f"(got {_shown(url)})"
        )  # fmt: skip
    try:
        open_image(url)
    except MediaError as err:
        raise RequestError(400, f"{where}: {err.detail}") from None


def _check_generation(body: dict, max_tokens_limit: int | None) -> None:
    """The sampling and length fields: each of the type and range the OpenAI API documents."""
    for key in ("max_tokens", "max_completion_tokens"):
        value = body.get(key)
        if value is None:
            continue
        if not _is_int(value) or value <= 0:
            raise RequestError(400, f"`{key}` must be a positive integer, got {_shown(value)}")
        if max_tokens_limit and value > max_tokens_limit:
            raise RequestError(
                400, f"`{key}` must be at most {max_tokens_limit} (this deployment's max_tokens_limit), got {value}"
            )
    for key, low, high in (
        ("temperature", 0, 2),
        ("top_p", 0, 1),
        ("presence_penalty", -2, 2),
        ("frequency_penalty", -2, 2),
    ):
        value = body.get(key)
        if value is not None and (not _is_number(value) or not low <= value <= high):
            raise RequestError(400, f"`{key}` must be a number from {low} to {high}, got {_shown(value)}")
    n = body.get("n")
    if n is not None and (not _is_int(n) or n != 1):
        raise RequestError(400, f"`n` must be 1 (this server returns one choice per request), got {_shown(n)}")
    seed = body.get("seed")
    if seed is not None and (not _is_int(seed) or not -(2**63) <= seed < 2**63):
        raise RequestError(400, f"`seed` must be a 64-bit integer, got {_shown(seed)}")
    if body.get("stream") is not None and not isinstance(body["stream"], bool):
        raise RequestError(400, f"`stream` must be true or false, got {_shown(body['stream'])}")
    for key in ("stream_options", "chat_template_kwargs", "response_format"):
        if body.get(key) is not None and not isinstance(body[key], dict):
            raise RequestError(400, f"`{key}` must be an object, got {_shown(body[key])}")
    if body.get("user") is not None and not isinstance(body["user"], str):
        raise RequestError(400, f"`user` must be a string, got {_shown(body['user'])}")
    stop = body.get("stop")
    listed = isinstance(stop, list) and all(isinstance(each, str) and each for each in stop)
    if stop is not None and not (isinstance(stop, str) or listed):
        raise RequestError(400, f"`stop` must be a string or a list of non-empty strings, got {_shown(stop)}")
    bias = body.get("logit_bias")
    if bias is not None and not (
        isinstance(bias, dict) and all(k.isdigit() and _is_number(v) and -100 <= v <= 100 for k, v in bias.items())
    ):
        raise RequestError(400, "`logit_bias` must map token ids (strings of digits) to numbers from -100 to 100")


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and value == value  # NaN is no number


def _shown(value) -> str:
    """A client's value for an error message, cut short: it may be megabytes."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _check_tool_call(call, where: str) -> None:
    function = call.get("function") if isinstance(call, dict) else None
    if not isinstance(function, dict) or not isinstance(function.get("name"), str):
        raise RequestError(400, f"{where}: expected {{type: function, function: {{name, arguments}}}}")
    arguments = function.get("arguments", "{}")
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments or "{}")
        except json.JSONDecodeError:
            raise RequestError(400, f"{where}.function.arguments: not valid JSON") from None
    if not isinstance(arguments, dict):
        raise RequestError(400, f"{where}.function.arguments: expected a JSON object")


def _tools_forwarded(body: dict, support: ToolSupport) -> dict:
    """`tools`, `tool_choice` and `parallel_tool_calls` checked, and made into what the backend understands.

    transformers serve ignores tool_choice and parallel_tool_calls without a word, so the gateway does what
    it can itself (auto: nothing to do; none: the tools are not offered; parallel_tool_calls=false: only
    the first call is returned) and refuses what it cannot (required, a named function) with a 400.
    """
    tools = body.get("tools")
    if tools is not None:
        if not isinstance(tools, list):
            raise RequestError(400, "`tools` must be a list of {type: function, function: {name, parameters}}")
        for index, tool in enumerate(tools):
            if not isinstance(tool, dict) or tool.get("type", "function") != "function":
                raise RequestError(400, f"tools[{index}]: expected an object of type 'function'")
            function = tool.get("function")
            if not isinstance(function, dict) or not isinstance(function.get("name"), str) or not function["name"]:
                raise RequestError(400, f"tools[{index}]: expected {{type: function, function: {{name, parameters}}}}")
            if not isinstance(function.get("parameters", {}), dict):
                raise RequestError(400, f"tools[{index}].function.parameters: expected a JSON schema object")
        if tools and not support.tool_calls:
            raise RequestError(
                400,
                "`tools`: this deployment cannot return tool calls (its model has no tool-call parser; set "
                "model.tool_format, or serve with deploy=lmdeploy)",
            )
    names = [t["function"]["name"] for t in tools or []]
    choice = body.get("tool_choice")
    parallel = body.get("parallel_tool_calls")
    if parallel is not None and not isinstance(parallel, bool):
        raise RequestError(400, f"`parallel_tool_calls` must be true or false, got {parallel!r}")
    if isinstance(choice, dict):
        name = (choice.get("function") or {}).get("name") if choice.get("type") == "function" else None
        if not isinstance(name, str):
            raise RequestError(
                400, "`tool_choice`: expected auto, none, required or {type: function, function: {name}}"
            )
        if name not in names:
            offered = ", ".join(names) or "none"
            raise RequestError(400, f"`tool_choice`: function {name!r} is not in `tools` ({offered})")
    elif choice not in (None, "auto", "none", "required"):
        raise RequestError(400, f"`tool_choice` must be auto, none, required or a named function, got {choice!r}")
    if choice is not None and not names:
        raise RequestError(400, "`tool_choice` is set but `tools` is empty")
    if support.tool_choice:
        return body
    forwarded = {k: v for k, v in body.items() if k not in ("tool_choice", "parallel_tool_calls")}
    if tools:
        forwarded["tools"] = [_as_rendered(tool, index) for index, tool in enumerate(tools)]
    if choice == "none":
        forwarded.pop("tools", None)
    elif choice == "required" or isinstance(choice, dict):
        raise RequestError(
            400,
            "`tool_choice`: this backend (transformers serve) cannot force a tool call; use auto or none, "
            "or serve with deploy=lmdeploy",
        )
    return forwarded


def _as_rendered(tool: dict, index: int) -> dict:
    """A tool as the chat template should see it: the template prints what it is given, so a `strict: false`
    flag (the OpenAI Agents SDK sends one) would put words in the prompt that training never had."""
    function = dict(tool["function"])
    strict = function.pop("strict", None)
    if strict:
        raise RequestError(
            400,
            f"tools[{index}].function.strict: this backend (transformers serve) cannot enforce a strict schema; "
            "send strict: false (onestop checks arguments when it runs a tool)",
        )
    return {**tool, "function": function}


class ClientGone(Exception):
    """The client disconnected before its request body arrived whole."""


async def read_body(request, limit: int) -> bytes:
    """The request body, read no further than `limit` bytes (413 beyond)."""
    too_large = RequestError(
        413, f"request body is larger than {limit} bytes (this deployment's max_request_bytes)", "request_too_large"
    )
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise too_large
    received = bytearray()
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            raise ClientGone()
        received += message.get("body", b"")
        if len(received) > limit:
            raise too_large
        if not message.get("more_body"):
            return bytes(received)


def parse_body(raw: bytes):
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise RequestError(400, f"request body is not valid UTF-8 (byte {err.start}); JSON must be UTF-8") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise RequestError(400, f"request body is not valid JSON: {err}") from None
    except RecursionError:
        raise RequestError(400, "request body is not valid JSON: nested too deeply") from None


def one_prompt(prompt):
    """transformers serve completes one prompt string per request."""
    if isinstance(prompt, list):
        if len(prompt) != 1:
            raise RequestError(400, f"`prompt`: this backend completes one string per request, got {len(prompt)}")
        return prompt[0]
    return prompt


def fit_context(meter: PromptMeter | None, kind: str, body: dict, max_tokens_limit: int) -> dict:
    """The body with its prompt checked against the model's context (400 `context_length_exceeded` when
    prompt + max_tokens do not fit) and its logit_bias against the vocabulary; a body without max_tokens
    gets what fits, at most max_tokens_limit."""
    asked = body.get("max_completion_tokens") or body.get("max_tokens")
    vocabulary = len(meter.tokenizer) if meter else None
    if meter and (outside := [t for t in body.get("logit_bias") or {} if int(t) >= vocabulary]):
        raise RequestError(400, f"`logit_bias`: token {outside[0]} is not in this model's {vocabulary} tokens")
    if meter is None:
        return body if asked else {**body, "max_tokens": max_tokens_limit}
    context = meter.context_length
    try:
        texts = meter.prompts(kind, body)
    except Exception as err:  # noqa: BLE001 - a chat template raises whatever its author chose
        raise RequestError(400, f"`messages`: the model's chat template refused them: {err}") from None
    room = asked or max_tokens_limit
    images = meter.image_tokens(body) if kind == "chat" else 0
    longest = 0
    for text in texts:
        if not images and len(text.encode()) + room < context:
            continue  # every token covers at least one byte (the sentencepiece space aside): no need to count
        tokens = meter.count(text, context, special=kind != "chat") + images
        if tokens + (asked or 1) > context:
            what = f"{tokens} in the prompt" + (f" + {asked} in max_tokens" if asked else "")
            raise RequestError(
                400,
                f"this model's maximum context length is {context} tokens; the request asks for {what}",
                "context_length_exceeded",
            )
        longest = max(longest, tokens)
    return body if asked else {**body, "max_tokens": min(max_tokens_limit, context - longest)}
