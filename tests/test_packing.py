"""Padding-free batches and packing: examples laid end to end have the same loss and gradients as the same
examples padded; padding-free batches keep a recipe's steps, packing is a choice that changes them."""

import json

import pytest
import torch
import yaml
from conftest import ASSETS, TINY, TINY_DEFAULTS, compose

from onestop.data.batching import pad_batch
from onestop.data.packing import collate_packed, collate_padding_free, pack_examples
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


def packed(examples):
    rows = pack_examples(examples, max_seq_len=128, seed=0)
    assert 1 < len(rows) < len(examples)
    return collate_packed(rows, 0)


def padding_free(examples):
    batch = collate_padding_free(examples, 0)
    assert batch["input_ids"].shape == (1, sum(len(e["input_ids"]) for e in examples))
    assert bool(batch["token_mask"].all())  # not one pad token
    return batch


@pytest.mark.parametrize("layout", [packed, padding_free])
@pytest.mark.parametrize("make_model", [tiny_qwen2, tiny_gemma3], ids=["qwen2", "gemma3-sliding-window"])
def test_rows_of_several_examples_have_the_loss_and_gradients_of_padded_batches(examples, make_model, layout):
    model = make_model()  # fp32, every weight trainable: the strictest comparison
    unpacked_sum, unpacked_tokens, unpacked_grads = loss_and_grads(model, pad_batch(examples, 0))
    packed_sum, packed_tokens, packed_grads = loss_and_grads(model, layout(examples))
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


def test_padding_free_keeps_the_steps_and_losses_of_padded_batches_and_packing_says_what_it_changes(tmp_path, capsys):
    # Very unequal lengths: plain batches pad every short answer up to the long one beside it.
    data = tmp_path / "mixed.jsonl"
    rows = [{"instruction": f"Question {i}?", "output": "word " * (20 if i % 4 == 0 else 2)} for i in range(24)]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))

    def run(name, *extra):
        cfg = compose(
            *TINY_DEFAULTS, f"data.path={data}", "data.val_ratio=0", "logger=csv", "trainer.max_epochs=1",
            "data.batch_size=4", "method.dropout=0", "hardware.precision=32-true", *extra, run_dir=tmp_path / name,
        )  # fmt: skip
        return train(cfg).metrics

    default = run("default")  # padding-free, chosen by default
    assert "padding-free" not in capsys.readouterr().out  # exact here: nothing to say
    written = yaml.safe_load((tmp_path / "default" / "config.yaml").read_text())["data"]
    assert (written["padding_free"], written["packing"]) == (True, False)
    padded = run("padded", "data.padding_free=false")
    assert default["steps"] == padded["steps"] == 6  # 24 examples, 4 a batch: the recipe's steps
    assert default["tokens_seen"] == padded["tokens_seen"]
    # The same examples in each step: the same losses, step by step, to fp32 summation order.
    assert default["train_losses"] == pytest.approx(padded["train_losses"], rel=1e-4)
    assert default["padding"][0]["padding_fraction"] == 0.0 < padded["padding"][0]["padding_fraction"]

    capsys.readouterr()
    packed_run = run("packed", "data.packing=true", "data.max_seq_len=128")
    printed = capsys.readouterr().out
    assert "packing: 24 examples in 9 sequences of up to 128 tokens" in printed
    assert "3 optimizer steps per epoch (unpacked: 6); data.batch_size counts packed rows" in printed
    assert packed_run["steps"] == 3 < padded["steps"]
    assert packed_run["tokens_seen"] == padded["tokens_seen"]
    assert packed_run["padding"][0]["padding_fraction"] < padded["padding"][0]["padding_fraction"] / 2
    assert "train/padding_fraction" in (tmp_path / "packed" / "csv" / "metrics.csv").read_text()
