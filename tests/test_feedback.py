"""The conversation log and the feedback store, against the tiny tool model served by the real gateway:
what they write is checked by training on it (`data=messages`, `stage=dpo data=preference`)."""

import json

import pytest
from conftest import compose, tiny_tools, tool_conversations
from openai import OpenAI

from onestop.core.errors import OnestopError
from onestop.deploy.feedback import FeedbackStore
from onestop.training.train import train

pytestmark = pytest.mark.slow  # the shared tool model: one tiny training run and one server

SCHEMAS = [tool.openai_schema() for tool in tiny_tools()]
CALL_QUESTION = [{"role": "user", "content": "What is 17 times 23?"}]
GREETING = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello!"}]


@pytest.fixture(scope="module")
def client(tool_deployment):
    return OpenAI(base_url=tool_deployment.base_url, api_key="-", max_retries=0)


def logged(tool_deployment) -> list[dict]:
    path = json.loads(tool_deployment.state_file.read_text())["conversations_log"]
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle]


def chat(client, name, messages, stream=False, **extra):
    reply = client.chat.completions.create(
        model=name, messages=messages, max_tokens=64, temperature=0, stream=stream, **extra
    )
    if not stream:
        return reply.choices[0].message.model_dump(exclude_none=True)
    return {"role": "assistant", "content": "".join(c.choices[0].delta.content or "" for c in reply if c.choices)}


def test_answered_exchanges_are_logged_streamed_or_not_and_tool_steps_with_their_results(tool_deployment, client):
    name = tool_deployment.name
    plain = chat(client, name, GREETING)
    streamed = chat(client, name, GREETING, stream=True)
    assert plain["content"] and streamed["content"] == plain["content"]

    step = chat(client, name, CALL_QUESTION, tools=SCHEMAS)
    assert step["tool_calls"] and not step.get("content")
    result = {"role": "tool", "tool_call_id": step["tool_calls"][0]["id"], "content": "391"}
    answer = chat(client, name, [*CALL_QUESTION, step, result], stream=True, tools=SCHEMAS)
    assert answer["content"]

    records = logged(tool_deployment)
    greetings = [r for r in records if r["messages"][:2] == GREETING]
    assert [g["messages"][2] for g in greetings[-2:]] == [{"role": "assistant", "content": plain["content"]}] * 2
    mine = [r for r in records if step["tool_calls"][0]["id"] in json.dumps(r)]
    (tool_record,) = mine  # the step alone is no record: the exchange carrying its result holds it
    roles = [m["role"] for m in tool_record["messages"]]
    assert roles == ["user", "assistant", "tool", "assistant"] and tool_record["tools"] == SCHEMAS
    call = tool_record["messages"][1]["tool_calls"][0]
    assert call["function"] == {"name": "calculator", "arguments": {"expression": "17 * 23"}}
    assert tool_record["messages"][3]["content"] == answer["content"]


def test_feedback_makes_datasets_that_train(tool_deployment, client, tmp_path):
    name = tool_deployment.name
    store = FeedbackStore.for_deployment(name, root=tmp_path)
    greeting = chat(client, name, GREETING)
    store.rate("r1", GREETING, greeting, "good")
    question = [{"role": "user", "content": "Divide 10 by 0."}]
    wrong = {"role": "assistant", "content": "It is 5."}  # a bad reply, as a user would rate one
    store.rate("r2", question, wrong, "good")
    sizes = store.rate("r2", question, wrong, "bad", correction="Dividing by zero is undefined.")  # re-rated
    assert sizes == {"messages": 2, "preference": 1}
    store.rate("r3", [{"role": "user", "content": "Count up."}], {"role": "assistant", "content": "1 2 3"}, "bad")

    paths = store.paths()
    rows = [json.loads(line) for line in paths["messages"].read_text().splitlines()]
    assert rows[0]["messages"] == [*GREETING, {"role": "assistant", "content": greeting["content"]}]
    assert rows[1]["messages"][-1] == {"role": "assistant", "content": "Dividing by zero is undefined."}
    (pair,) = [json.loads(line) for line in paths["preference"].read_text().splitlines()]
    assert pair == {"prompt": question, "chosen": "Dividing by zero is undefined.", "rejected": "It is 5."}
    assert len(paths["feedback"].read_text().splitlines()) == 4  # every rating kept; the latest counts

    shared = ["model=tiny", "hardware=cpu", "logger=none", "trainer.max_steps=1", "data.val_ratio=0"]
    sft = train(compose(*shared, "data=messages", f"data.path={paths['messages']}", run_dir=tmp_path / "sft"))
    dpo = train(
        compose(*shared, "stage=dpo", "data=preference", f"data.path={paths['preference']}", run_dir=tmp_path / "dpo")
    )
    for result in (sft, dpo):
        metrics = json.loads((result.run_dir / "metrics.json").read_text())
        assert metrics["data"]["records_read"] >= 1 and metrics["data"]["dropped"] == {}


def test_the_conversation_log_trains(tool_deployment, tmp_path):
    path = json.loads(tool_deployment.state_file.read_text())["conversations_log"]
    overrides = ["model=tiny", "hardware=cpu", "logger=none", "trainer.max_steps=1", "data.val_ratio=0"]
    result = train(compose(*overrides, "data=messages", f"data.path={path}", "data.max_seq_len=1024", run_dir=tmp_path))
    report = result.metrics["data"]
    assert report["train_records"] >= 2 and not report["dropped_no_answer_left"]  # the tool conversation too


def test_a_bad_rating_is_refused_in_one_line(tmp_path):
    store = FeedbackStore(tmp_path)
    with pytest.raises(OnestopError, match="rating='meh': expected good or bad"):
        store.rate("r1", tool_conversations()[0]["messages"][:1], {"content": "x"}, "meh")
    with pytest.raises(OnestopError, match="plain name"):
        FeedbackStore.for_deployment("../elsewhere")
