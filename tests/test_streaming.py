"""Streaming raw text: lazy reading, blocks identical to tokenizing the corpus whole, exact resume."""

import json
import shutil

import pytest
import torch
from conftest import ASSETS, TINY, compose
from safetensors.torch import load_file

from onestop.data.streaming import TextBlockStream
from onestop.training.train import train

TINY_MODEL = [o for o in TINY if not o.startswith("data")]


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(ASSETS / "tiny-qwen2")


@pytest.fixture
def corpus(tmp_path):
    (tmp_path / "a.jsonl").write_text(
        "".join(json.dumps({"body": f"Document {i} says the sky is {i % 3} shades of blue."}) + "\n" for i in range(40))
    )
    (tmp_path / "b.txt").write_text("".join(f"Line {i} of a long plain text file.\n" for i in range(60)))
    return [str(tmp_path / "a.jsonl"), str(tmp_path / "b.txt")]


def expected_blocks(tokenizer, paths, block_size):
    ids = []
    for line in open(paths[0]):
        ids += tokenizer(json.loads(line)["body"], add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    for line in open(paths[1]):
        ids += tokenizer(line, add_special_tokens=False)["input_ids"]
    ids.append(tokenizer.eos_token_id)
    return [ids[i : i + block_size] for i in range(0, len(ids) - block_size + 1, block_size)]


def test_blocks_match_the_tokenized_corpus(tokenizer, corpus):
    stream = TextBlockStream(corpus, tokenizer, block_size=32, text_field="body")
    blocks = [b["input_ids"] for b in stream]
    assert blocks == expected_blocks(tokenizer, corpus, 32)
    assert all(b["labels"] == b["input_ids"] for b in stream)


def test_reading_is_lazy(tokenizer, corpus):
    stream = TextBlockStream(corpus, tokenizer, block_size=16, text_field="body")
    first = next(iter(stream))
    assert len(first["input_ids"]) == 16
    total = sum(len(b) for b in expected_blocks(tokenizer, corpus, 1))
    assert stream.tokens_read < total / 10  # one block's worth was read, not the corpus


def test_skip_blocks_resumes_the_stream(tokenizer, corpus):
    whole = [b["input_ids"] for b in TextBlockStream(corpus, tokenizer, 32, "body")]
    stream = TextBlockStream(corpus, tokenizer, 32, "body")
    stream.skip_blocks = 5
    assert [b["input_ids"] for b in stream] == whole[5:]
    assert [b["input_ids"] for b in stream] == whole  # the skip applies once, to the resumed pass


def test_streamed_training_resumes_exactly(tmp_path, corpus):
    def run(name, *extra):
        cfg = compose(
            *TINY_MODEL, "stage=pretrain", "data=text", "data.streaming=true", f"data.path={tmp_path / '*.*'}",
            "+data.columns.text=body", "data.max_seq_len=32", "data.batch_size=2", "method=lora", "optim.lr=1e-2",
            "logger=csv", "trainer.max_steps=12", "checkpoint.every_n_steps=2", "checkpoint.keep_last=10",
            *extra, run_dir=tmp_path / name,
        )  # fmt: skip
        return train(cfg)

    whole = run("whole")
    assert whole.metrics["steps"] == 12 and whole.metrics["tokens_seen"] == 12 * 2 * 32
    (tmp_path / "resumed" / "checkpoints").mkdir(parents=True)
    shutil.copy(tmp_path / "whole" / "checkpoints" / "step0000006.ckpt", tmp_path / "resumed" / "checkpoints")
    run("resumed", "resume=auto")
    expected = load_file(tmp_path / "whole" / "adapter" / "adapter_model.safetensors")
    got = load_file(tmp_path / "resumed" / "adapter" / "adapter_model.safetensors")
    assert all(torch.equal(got[k], expected[k]) for k in expected)
