"""Packing: a packed batch has the same loss as its examples unpacked, and wastes less on padding."""

import json

import pytest
import torch
from conftest import ASSETS, TINY, compose

from onestop.data.batching import pad_batch
from onestop.data.packing import collate_packed, pack_examples
from onestop.data.prepare import prepare
from onestop.data.tokenize import IGNORE_INDEX
from onestop.losses import token_loss_sum
from onestop.training.train import train


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(ASSETS / "tiny-qwen2")


@pytest.fixture(scope="module")
def examples(tokenizer, tmp_path_factory):
    with pytest.MonkeyPatch.context() as patch:  # the prepared-data cache of this module only
        patch.setenv("ONESTOP_HOME", str(tmp_path_factory.mktemp("home")))
        return prepare(compose(*TINY, "data.val_ratio=0").data, tokenizer).train[:10]


def tiny_gemma3():
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    config = Gemma3TextConfig(
        vocab_size=1024, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=1, head_dim=32, sliding_window=8, layer_types=["sliding_attention", "full_attention"],
    )  # fmt: skip
    torch.manual_seed(0)
    return Gemma3ForCausalLM(config).eval()


def tiny_qwen2():
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(ASSETS / "tiny-qwen2").eval()


def loss_and_grads(model, batch) -> tuple[torch.Tensor, int, dict[str, torch.Tensor]]:
    model.zero_grad()
    loss_sum, tokens = token_loss_sum(model, batch)
    loss_sum.backward()
    return loss_sum.detach(), tokens, {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("make_model", [tiny_qwen2, tiny_gemma3], ids=["qwen2", "gemma3-sliding-window"])
def test_packed_loss_and_gradients_equal_unpacked(examples, make_model):
    model = make_model()  # fp32, every weight trainable: the strictest comparison
    packed_rows = pack_examples(examples, max_seq_len=128, seed=0)
    assert len(packed_rows) < len(examples)
    unpacked_sum, unpacked_tokens, unpacked_grads = loss_and_grads(model, pad_batch(examples, 0))
    packed_sum, packed_tokens, packed_grads = loss_and_grads(model, collate_packed(packed_rows, 0))
    assert packed_tokens == unpacked_tokens
    # fp32 sums over ~10 examples in another order: agreement to ~1e-5 relative, not bit for bit.
    torch.testing.assert_close(packed_sum, unpacked_sum, rtol=1e-5, atol=1e-4)
    assert packed_grads.keys() == unpacked_grads.keys() and len(packed_grads) > 10
    for name, grad in unpacked_grads.items():
        torch.testing.assert_close(packed_grads[name], grad, rtol=1e-4, atol=1e-5, msg=name)


def test_packing_is_deterministic_bounded_and_restarts_positions(examples):
    rows = pack_examples(examples, max_seq_len=100, seed=3)
    assert list(rows) == list(pack_examples(examples, max_seq_len=100, seed=3))
    assert all(len(r["input_ids"]) <= 100 for r in rows)
    assert sorted(len(e["input_ids"]) for e in examples) == sorted(
        len(segment) for r in rows for segment in _segments(r["position_ids"])
    )
    for row in rows:
        starts = [i for i, p in enumerate(row["position_ids"]) if p == 0]
        # No example learns to predict the first token of the next one.
        assert all(row["labels"][i] == IGNORE_INDEX for i in starts)


def _segments(positions: list[int]) -> list[list[int]]:
    segments: list[list[int]] = []
    for p in positions:
        if p == 0:
            segments.append([])
        segments[-1].append(p)
    return segments


def test_packed_training_logs_less_padding(tmp_path):
    # Very unequal lengths: plain batches pad every short answer up to the long one beside it.
    data = tmp_path / "mixed.jsonl"
    rows = [{"instruction": f"Question {i}?", "output": "word " * (20 if i % 4 == 0 else 2)} for i in range(24)]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))

    def run(name, *extra):
        cfg = compose(
            *TINY, f"data.path={data}", "data.val_ratio=0", "logger=csv", "trainer.max_epochs=1",
            "data.batch_size=4", *extra, run_dir=tmp_path / name,
        )  # fmt: skip
        return train(cfg).metrics

    plain = run("plain", "data.packing=false")
    packed = run("packed", "data.packing=true", "data.max_seq_len=128")
    assert packed["steps"] < plain["steps"]
    assert packed["tokens_seen"] == plain["tokens_seen"]
    assert packed["padding"][0]["padding_fraction"] < plain["padding"][0]["padding_fraction"] / 2, (
        packed["padding"],
        plain["padding"],
    )
    assert "train/padding_fraction" in (tmp_path / "packed" / "csv" / "metrics.csv").read_text()
