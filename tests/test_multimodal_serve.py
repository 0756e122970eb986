"""Serving a vision-language run: `invoke deploy`'s real gateway and `transformers serve` on 127.0.0.1 take OpenAI
image parts, and the model sees the image (it names the colour of squares it never saw, whole and streamed); the
prompt the backend builds is the training example's own tokens; a text-only model refuses an image with a 400,
never dropping it. One server start, on the LoRA run shared with tests/test_multimodal_train.py."""

import base64
import io
import json
from pathlib import Path
from types import SimpleNamespace

import pytest
from colour_squares import COLOURS, square, write_colour_set
from conftest import ASSETS, VL_RUN, compose
from fastapi.testclient import TestClient
from openai import BadRequestError, OpenAI
from transformers import AutoProcessor
from transformers.cli.serving.chat_completion import ChatCompletionHandler
from transformers.cli.serving.utils import Modality

from onestop.config.compose import compose as compose_config
from onestop.data.prepare import prepare
from onestop.deploy.gateway import GatewayState, Limits, build_app
from onestop.deploy.prompts import PromptMeter
from onestop.deploy.requests import GenerationRequest, Policy, RequestError, fit_context
from onestop.deploy.service import serving
from onestop.models import load_processor


def data_url(image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def asking(image, question: str = "What colour is the square?") -> list[dict]:
    parts = [{"type": "image_url", "image_url": {"url": data_url(image)}}, {"type": "text", "text": question}]
    return [{"role": "user", "content": parts}]


@pytest.fixture(scope="module")
def served(vl_lora_run, tmp_path_factory):
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("ONESTOP_HOME", str(tmp_path_factory.mktemp("home")))
        patch.delenv("ONESTOP_API_KEY", raising=False)
        overrides = [f"run_dir={vl_lora_run}", "deploy=transformers", "port=0", "max_images_per_request=1"]
        with serving(compose_config("deploy", overrides)) as deployment:
            yield deployment


@pytest.fixture(scope="module")
def client(served):
    return OpenAI(base_url=served.base_url, api_key="-", max_retries=0)


def test_the_served_model_names_the_colour_of_unseen_squares(served, client):
    for index, colour in enumerate(COLOURS):
        image = square(colour, seed=20_000 + index)  # never in training
        whole = client.chat.completions.create(model=served.name, messages=asking(image), max_tokens=4)
        assert whole.choices[0].message.content.strip() == colour
        stream = client.chat.completions.create(model=served.name, messages=asking(image), max_tokens=4, stream=True)
        assert "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices).strip() == colour


def test_image_parts_are_checked_at_the_gateway(served, client):
    image = square("red", seed=1)
    two = [{"role": "user", "content": asking(image)[0]["content"] + asking(image)[0]["content"][:1]}]
    with pytest.raises(BadRequestError, match=r"2 images in the request; this deployment takes at most 1"):
        client.chat.completions.create(model=served.name, messages=two, max_tokens=4)
    for url, reason in (
        ("/etc/passwd", "files are not read"),
        ("file:///etc/passwd", "files are not read"),
        ("https://example.com/a.png", "http\\(s\\) URLs are not fetched"),
        ("data:image/png;base64,bm90IGFuIGltYWdl", "not a readable image"),
    ):
        bad = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}}]}]
        with pytest.raises(BadRequestError, match=rf"messages\[0\]\.content\[0\]: .*{reason}"):
            client.chat.completions.create(model=served.name, messages=bad, max_tokens=4)


def test_the_backend_builds_the_training_examples_tokens(served, tmp_path):
    """The prompt `transformers serve` renders for an image part (its own code, on the served directory) is the
    training example's tokens up to its answer."""
    path = write_colour_set(tmp_path, 1)
    record = json.loads(path.read_text())
    cfg = compose(*VL_RUN, f"data.path={path}", "data.val_ratio=0")
    row = prepare(cfg.data, load_processor(cfg.model), seed=cfg.seed).train[0]
    answer_start = row["labels"].index(next(label for label in row["labels"] if label != -100))
    image_part, question = record["messages"][0]["content"]
    with open(tmp_path / image_part["image_url"]["url"], "rb") as handle:
        url = "data:image/png;base64," + base64.b64encode(handle.read()).decode()
    messages = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}}, question]}]
    state = json.loads(Path(served.state_file).read_text())
    engine = SimpleNamespace(
        processor=AutoProcessor.from_pretrained(state["model_dir"]), modality=Modality.VLM, use_cb=False
    )
    handler = SimpleNamespace(
        get_processor_inputs_from_messages=ChatCompletionHandler.get_processor_inputs_from_messages,
        _normalize_tools=ChatCompletionHandler._normalize_tools,
        _chat_template_kwargs=lambda body: {},
    )
    rendered = ChatCompletionHandler.render_messages(handler, engine, messages, {})
    assert rendered["input_ids"][0].tolist() == row["input_ids"][:answer_start]


def test_a_text_model_refuses_an_image_in_one_line():
    limits = Limits(1 << 20, 64, 1, 0, 30.0)
    state = GatewayState("text-model", "lmdeploy", "text-model", 1, limits, 0.0)  # refused before any backend
    body = {"model": "text-model", "messages": asking(square("red")), "max_tokens": 4}
    with TestClient(build_app(state)) as app:
        reply = app.post("/v1/chat/completions", json=body)
    assert reply.status_code == 400
    assert reply.json()["error"]["message"].startswith("messages[0].content[0]: this model does not read images")
    assistant = {"role": "assistant", "content": asking(square("red"))[0]["content"]}
    with pytest.raises(RequestError, match="images may only be in user messages"):
        GenerationRequest.parse("chat", {"messages": [assistant]}, Policy("m", reads_images=True, max_images=4))


def test_the_context_check_counts_each_images_tokens():
    meter = PromptMeter.load(str(ASSETS / "tiny-llava"), 2048)
    body = {"messages": asking(square("red")) * 3, "max_tokens": 4}
    images = meter.image_tokens(body)
    assert images == 3 * (4 - 1)  # tiny_vl: 4 tokens an image, one of them its placeholder
    text = meter.count(meter.prompts("chat", body)[0], 2048)
    meter.context_length = text + images + 4
    assert fit_context(meter, "chat", body, 64) == body
    meter.context_length -= 1
    with pytest.raises(RequestError, match=f"{text + images} in the prompt"):
        fit_context(meter, "chat", body, 64)
