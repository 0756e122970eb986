"""SFT data: loss only on the assistant's answer and end-of-turn marker; bad records named by file:line."""

import pytest
from conftest import ASSETS, compose
from transformers import AutoTokenizer

from onestop.core.errors import OnestopError
from onestop.data.batching import pad_batch
from onestop.data.records import read_records
from onestop.data.sft import SFTDataModule
from onestop.data.tokenize import IGNORE_INDEX, tokenize_conversation
from onestop.models.templates import bundled_template

CONVERSATION = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "What is onestop?"},
    {"role": "assistant", "content": "A one-stop LLM tool."},
    {"role": "user", "content": "Does it need a GPU?"},
    {"role": "assistant", "content": "No, a laptop CPU works."},
]


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(ASSETS / "tiny-qwen2")


def trained_text(tokenizer, example) -> list[str]:
    """The labelled tokens, decoded run by run."""
    runs, current = [], []
    for token, label in zip(example["input_ids"], example["labels"], strict=True):
        if label == IGNORE_INDEX:
            if current:
                runs.append(tokenizer.decode(current))
            current = []
        else:
            assert label == token
            current.append(token)
    if current:
        runs.append(tokenizer.decode(current))
    return runs


def test_labels_cover_only_assistant_turns_and_their_end_of_turn(tokenizer):
    example = tokenize_conversation(tokenizer, CONVERSATION, max_seq_len=512)
    assert trained_text(tokenizer, example) == [
        "A one-stop LLM tool.<|im_end|>\n",
        "No, a laptop CPU works.<|im_end|>\n",
    ]
    assert example["labels"][0] == IGNORE_INDEX and not example["truncated"]


def test_gemma_template_trains_the_model_turn_through_end_of_turn(tokenizer):
    tokenizer = AutoTokenizer.from_pretrained(ASSETS / "tiny-qwen2")
    tokenizer.chat_template = bundled_template("gemma")
    example = tokenize_conversation(tokenizer, CONVERSATION[:3], max_seq_len=512)
    text = tokenizer.decode(example["input_ids"])
    assert text.startswith("<start_of_turn>user\nBe brief.\n\nWhat is onestop?<end_of_turn>\n<start_of_turn>model\n")
    assert trained_text(tokenizer, example) == ["A one-stop LLM tool.<end_of_turn>\n"]


def test_truncation_is_counted_and_answerless_examples_are_dropped_and_counted(tokenizer, tmp_path):
    long_prompt = "word " * 300
    data = tmp_path / "data.jsonl"
    data.write_text(
        '{"instruction": "Say hi.", "output": "Hi."}\n'
        f'{{"instruction": "{long_prompt}", "output": "Too late."}}\n'
        '{"instruction": "Say bye.", "output": "Bye."}\n'
    )
    cfg = compose("model=tiny", "data=alpaca", f"data.path={data}", "data.val_ratio=0", "model.max_seq_len=64")
    module = SFTDataModule(cfg.data, tokenizer)
    module.setup()
    assert module.report.truncated == 1
    assert module.report.dropped_no_answer_left == 1
    assert module.report.train_records == 2
    assert "1 truncated" in module.report.summary() and "1 dropped" in module.report.summary()


def test_validation_split_by_ratio_is_seeded(tokenizer):
    cfg = compose("model=tiny", "data=alpaca", f"data.path={ASSETS / 'alpaca_small.jsonl'}", "data.val_ratio=0.25")
    first, second = SFTDataModule(cfg.data, tokenizer, seed=1), SFTDataModule(cfg.data, tokenizer, seed=1)
    first.setup()
    second.setup()
    assert (first.report.train_records, first.report.val_records) == (15, 5)
    assert first.val_conversations == second.val_conversations


def test_batches_pad_to_the_longest_example(tokenizer):
    short = tokenize_conversation(tokenizer, CONVERSATION[1:3], 512)
    long = tokenize_conversation(tokenizer, CONVERSATION, 512)
    batch = pad_batch([short, long], tokenizer.pad_token_id)
    assert batch["input_ids"].shape == (2, len(long["input_ids"]))
    assert int(batch["attention_mask"][0].sum()) == len(short["input_ids"])
    assert (batch["labels"][0, len(short["input_ids"]) :] == IGNORE_INDEX).all()


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"instruction": "a", "output": "b"}\n{"instruction": "c", "output": \n', "data.jsonl:2: malformed JSON"),
        ('{"instruction": "a", "output": "b"}\n{"instruction": "c"}\n', "data.jsonl:2: missing field 'output'"),
        ('{"instruction": "a", "output": ""}\n', "data.jsonl:1: field 'output' must be a non-empty string"),
        ("[1, 2]", "data.jsonl[0]: expected a JSON object"),
        ("  \n", "data.jsonl: the file is empty"),
    ],
)
def test_bad_records_name_file_and_line(tmp_path, tokenizer, content, message):
    data = tmp_path / "data.jsonl"
    data.write_text(content)
    cfg = compose("model=tiny", "data=alpaca", f"data.path={data}")
    with pytest.raises(OnestopError, match=None) as caught:
        SFTDataModule(cfg.data, tokenizer).setup()
    assert message in str(caught.value) and "\n" not in str(caught.value)


def test_json_list_files_are_read_with_positions(tmp_path):
    data = tmp_path / "data.json"
    data.write_text('[{"instruction": "a", "output": "b"}, {"instruction": "c", "output": "d"}]')
    records = read_records(data)
    assert [r.where for r in records] == [f"{data}[0]", f"{data}[1]"]
