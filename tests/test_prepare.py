"""The data stage: every format, column mapping, mixing, bad input, cache reuse, report, contamination."""

import json
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
from conftest import ASSETS, TINY_DATA, compose, run_invoke

from onestop.core.errors import OnestopError
from onestop.data.prepare import prepare
from onestop.data.tokenize import IGNORE_INDEX

DATA = ASSETS / "data"


@pytest.fixture(autouse=True)
def _fresh_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("ONESTOP_HOME", str(tmp_path / "onestop-home"))


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(ASSETS / "tiny-qwen2")


def data_cfg(*overrides: str):
    return compose("model=tiny", *overrides).data


def answers(tokenizer, example: dict) -> str:
    return tokenizer.decode([t for t in example["labels"] if t != IGNORE_INDEX])


def test_sharegpt_roles_tools_and_multi_turn(tokenizer):
    cfg = data_cfg("data=sharegpt", f"data.path={DATA / 'sharegpt.jsonl'}", "data.val_ratio=0", "data.max_seq_len=2048")
    prepared = prepare(cfg, tokenizer)
    assert prepared.report.train_records == 5
    tool_example = next(e for e in prepared.train if "Oslo" in tokenizer.decode(e["input_ids"]))
    text = tokenizer.decode(tool_example["input_ids"])
    assert '"name": "get_weather"' in text and "<tool_response>" in text and "<tools>" in text
    trained = answers(tokenizer, tool_example)
    # Both the tool call and the final answer are learned, the tool's result is not.
    assert "get_weather" in trained and "3 degrees in Oslo." in trained and "temp_c" not in trained
    two_turns = next(e for e in prepared.train if "primary colour" in tokenizer.decode(e["input_ids"]))
    assert answers(tokenizer, two_turns) == "Red.<|im_end|>\nBlue.<|im_end|>\n"


def test_messages_with_tool_calls_and_string_arguments(tokenizer):
    prepared = prepare(data_cfg("data=messages", f"data.path={DATA / 'messages.jsonl'}", "data.val_ratio=0"), tokenizer)
    assert prepared.report.train_records == 5
    tool_example = next(e for e in prepared.train if "Add 17" in tokenizer.decode(e["input_ids"]))
    assert '"arguments": {"a": 17, "b": 25}' in answers(tokenizer, tool_example)


def test_alpaca_history_and_system(tokenizer):
    cfg = data_cfg("data=alpaca", f"data.path={DATA / 'alpaca_history.jsonl'}", "data.val_ratio=0")
    prepared = prepare(cfg, tokenizer)
    example = next(e for e in prepared.train if "Oslo" in tokenizer.decode(e["input_ids"]))
    text = tokenizer.decode(example["input_ids"])
    assert text.startswith("<|im_start|>system\nYou are a weather assistant.")
    assert answers(tokenizer, example) == "Around 20 degrees.<|im_end|>\nAround 3 degrees.<|im_end|>\n"


def test_csv_with_column_mapping(tokenizer):
    cfg = data_cfg(
        "data=alpaca",
        f"data.path={DATA / 'questions.csv'}",
        "+data.columns.instruction=question",
        "+data.columns.output=answer",
        "+data.columns.input=context",
        "data.val_ratio=0",
    )
    prepared = prepare(cfg, tokenizer)
    texts = [tokenizer.decode(e["input_ids"]) for e in prepared.train]
    assert any('Summarise: "The meeting moved to Friday, 3 pm."' in t for t in texts)
    assert any("What gas do plants absorb?\n\nphotosynthesis" in t for t in texts)


def test_parquet_source(tokenizer, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [json.loads(line) for line in TINY_DATA.read_text().splitlines()]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "train.parquet")
    prepared = prepare(
        data_cfg("data=alpaca", f"data.path={tmp_path / 'train.parquet'}", "data.val_ratio=0"), tokenizer
    )
    assert prepared.report.train_records == len(rows)


def test_text_corpus_glob_trains_on_every_token(tokenizer):
    cfg = data_cfg("data=text", f"data.path={DATA / 'corpus' / '*.txt'}", "data.val_ratio=0")
    prepared = prepare(cfg, tokenizer)
    assert prepared.report.train_records == 2
    for example in prepared.train:
        assert example["labels"] == example["input_ids"]
        assert example["input_ids"][-1] == tokenizer.eos_token_id


def test_preference_pairs_tokenize_both_answers(tokenizer):
    prepared = prepare(
        data_cfg("data=preference", f"data.path={DATA / 'preference.jsonl'}", "data.val_ratio=0"), tokenizer
    )
    assert prepared.report.train_records == 5
    example = next(e for e in prepared.train if "Japan" in tokenizer.decode(e["chosen_input_ids"]))
    assert answers(tokenizer, {"labels": example["chosen_labels"]}) == "Tokyo.<|im_end|>\n"
    assert answers(tokenizer, {"labels": example["rejected_labels"]}) == "Kyoto.<|im_end|>\n"


def test_mixing_weights_and_dedup(tokenizer, tmp_path):
    duplicated = tmp_path / "dup.jsonl"
    lines = TINY_DATA.read_text().splitlines()
    duplicated.write_text("\n".join(lines[:4] + lines[:2]) + "\n")
    cfg = data_cfg(
        "data=alpaca",
        "data.path=unused",
        f"data.mix=[{{path: {TINY_DATA}, weight: 0.5}}, {{path: {duplicated}, weight: 2}}]",
        "data.val_ratio=0",
    )
    prepared = prepare(cfg, tokenizer)
    report = prepared.report
    # dup.jsonl repeats its own first two records and also repeats the first four records of TINY_DATA.
    assert report.duplicates == 6
    assert [s["used"] for s in report.sources] == [10, 0]
    assert report.train_records == 10


def test_overlength_truncate_or_drop(tokenizer):
    truncated = prepare(data_cfg(f"data.path={TINY_DATA}", "data.max_seq_len=30", "data.val_ratio=0"), tokenizer)
    dropped = prepare(
        data_cfg(f"data.path={TINY_DATA}", "data.max_seq_len=30", "data.overlength=drop", "data.val_ratio=0"), tokenizer
    )
    assert truncated.report.truncated > 0 and dropped.report.dropped_overlength == truncated.report.truncated
    assert all(len(e["input_ids"]) <= 30 for e in truncated.train)
    lost = truncated.report.dropped_no_answer_left
    assert truncated.report.train_records + lost == 20
    assert dropped.report.train_records == 20 - dropped.report.dropped_overlength


BAD_RECORDS = [
    ("alpaca", '{"instruction": "q", "output": "a"}\n{"instruction": "q2"\n', "bad.jsonl:2: malformed JSON"),
    ("alpaca", '{"instruction": "q", "output": "a"}\n{"instruction": "q2"}\n', "bad.jsonl:2: missing field 'output'"),
    (
        "sharegpt",
        '{"conversations": [{"from": "human", "value": "hi"}, {"from": "robot", "value": "x"}]}\n',
        "bad.jsonl:1: conversations[1]: unknown role 'robot'",
    ),
    (
        "messages",
        '{"messages": [{"role": "assistant", "content": "a"}, {"role": "user", "content": "q"}]}\n',
        "bad.jsonl:1: the conversation must end with an assistant answer",
    ),
    ("alpaca", "\n\n", "bad.jsonl: the file is empty"),
]


@pytest.mark.parametrize(("format_name", "content", "message"), BAD_RECORDS)
def test_bad_records_name_file_and_line(tokenizer, tmp_path, format_name, content, message):
    path = tmp_path / "bad.jsonl"
    path.write_text(content)
    with pytest.raises(OnestopError) as caught:
        prepare(data_cfg(f"data={format_name}", f"data.path={path}", "data.val_ratio=0"), tokenizer)
    assert message in str(caught.value)
    assert "\n" not in str(caught.value)


def test_on_error_skip_counts_each_reason(tokenizer, tmp_path):
    path = tmp_path / "mixed.jsonl"
    good = TINY_DATA.read_text().splitlines()[:3]
    path.write_text("\n".join([*good, '{"instruction": "q"}', '{"instruction": "", "output": "a"}']) + "\n")
    prepared = prepare(data_cfg(f"data.path={path}", "data.on_error=skip", "data.val_ratio=0"), tokenizer)
    assert prepared.report.dropped == {"missing field 'output'": 1, "empty field 'instruction'": 1}
    assert prepared.report.train_records == 3 and prepared.report.records_read == 5


def test_second_prepare_is_a_cache_hit_until_the_data_changes(tokenizer, tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_text(TINY_DATA.read_text())
    cfg = data_cfg(f"data.path={path}")
    first = prepare(cfg, tokenizer)
    second = prepare(cfg, tokenizer)
    assert not first.report.cache_hit and second.report.cache_hit
    assert list(second.train) == list(first.train) and second.val_examples == first.val_examples
    assert (first.directory / "lengths.png").stat().st_size > 1000
    path.write_text(TINY_DATA.read_text().replace("Paris", "Lyon"))
    third = prepare(cfg, tokenizer)
    assert not third.report.cache_hit and third.directory != first.directory


def test_contamination_reports_evaluation_prompts_seen_in_training(tokenizer, tmp_path):
    eval_file = tmp_path / "eval.jsonl"
    train_question = json.loads(TINY_DATA.read_text().splitlines()[0])["instruction"]
    eval_file.write_text(
        json.dumps({"question": train_question})
        + "\n"
        + json.dumps({"question": "an entirely unrelated question about submarine welding techniques"})
        + "\n"
    )
    cfg = data_cfg(
        f"data.path={TINY_DATA}", "data.contamination.ngram=4", f"data.contamination.eval_paths=[{eval_file}]"
    )
    report = prepare(cfg, tokenizer).report
    assert report.contamination[str(eval_file)] == {"samples": 2, "contaminated": 1}


def test_invoke_data_prepare_prints_the_report(tmp_path):
    result = run_invoke(
        "data.prepare", "model=tiny", "data=sharegpt", f"data.path={DATA / 'sharegpt.jsonl'}",
        env={"ONESTOP_HOME": str(tmp_path)},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "records read" in result.stdout and "Prepared data (written" in result.stdout
    again = run_invoke(
        "data.prepare", "model=tiny", "data=sharegpt", f"data.path={DATA / 'sharegpt.jsonl'}",
        env={"ONESTOP_HOME": str(tmp_path)},
    )  # fmt: skip
    assert "reused from cache" in again.stdout
    report_files = list(Path(tmp_path, "datasets").glob("*/report.json"))
    assert len(report_files) == 1 and json.loads(report_files[0].read_text())["records_read"] == 5


def test_invoke_data_prepare_bad_line_exits_2(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"instruction": "q", "output": "a"}\n{oops}\n')
    result = run_invoke("data.prepare", "model=tiny", f"data.path={bad}", env={"ONESTOP_HOME": str(tmp_path)})
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith(f"onestop data.prepare: error: {bad}:2: malformed JSON")


def test_hub_dataset_id_offline_says_how_to_use_a_local_file(tokenizer):
    with pytest.raises(OnestopError) as caught:
        prepare(data_cfg("data=alpaca", "data.path=tatsu-lab/alpaca"), tokenizer)
    message = str(caught.value)
    assert message.startswith("data.path=tatsu-lab/alpaca: cannot load it from the Hugging Face Hub")
    assert "set data.path to the local file" in message and "\n" not in message


def test_prepared_rows_are_compact_arrays_memory_mapped_from_the_cache(tokenizer, tmp_path):
    first = prepare(data_cfg(f"data.path={TINY_DATA}"), tokenizer)
    assert first.train.values["input_ids"].dtype == np.int32 and first.train.values["labels"].dtype == np.int32
    cached = prepare(data_cfg(f"data.path={TINY_DATA}"), tokenizer)
    assert cached.report.cache_hit and isinstance(cached.train.values["input_ids"], np.memmap)
    assert len(cached.train) == first.report.train_records and list(cached.val) == list(first.val)
    assert int(cached.train.lengths().sum()) == first.report.train_tokens
    assert cached.train[-1] == cached.train[len(cached.train) - 1] and cached.train[:2] == [
        cached.train[0],
        cached.train[1],
    ]


def test_preparing_in_worker_processes_gives_the_same_rows_and_report(tokenizer, tmp_path, monkeypatch):
    """Chunks tokenized in two spawned processes, taken back in order, equal one process's result; chunks of 4
    examples so the data spans several chunks, and over-long ones dropped so the counts come from the workers."""
    monkeypatch.setattr("onestop.data.prepare.TOKENIZE_CHUNK", 4)
    overrides = [f"data.path={TINY_DATA}", "data.max_seq_len=34", "data.overlength=drop", "data.cache=false"]
    alone = prepare(data_cfg(*overrides, "data.num_proc=1"), tokenizer)
    shared = prepare(data_cfg(*overrides, "data.num_proc=2"), tokenizer)
    assert alone.report.dropped_overlength > 0 and len(alone.train) > 4
    assert list(shared.train) == list(alone.train) and list(shared.val) == list(alone.val)
    assert shared.val_examples == alone.val_examples and asdict(shared.report) == asdict(alone.report)


@pytest.mark.parametrize("value", ["0", "many", "true"])
def test_num_proc_other_than_auto_or_a_positive_number_is_one_line_naming_the_key(tokenizer, value):
    with pytest.raises(OnestopError, match="config key 'data.num_proc': expected auto or a whole number >= 1"):
        prepare(data_cfg(f"data.path={TINY_DATA}", f"data.num_proc={value}"), tokenizer)
