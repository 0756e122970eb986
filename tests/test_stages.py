"""Training stages on the tiny model: DPO on preference pairs, (continued) pretraining on raw text."""

import csv

import pytest
from conftest import ASSETS, TINY, compose

from onestop.core.errors import OnestopError
from onestop.training.train import train

DATA = ASSETS / "data"
TINY_MODEL = [o for o in TINY if not o.startswith("data")]


def logged(run_dir, key: str) -> list[float]:
    with open(run_dir / "csv" / "metrics.csv") as handle:
        return [float(row[key]) for row in csv.DictReader(handle) if row.get(key)]


def dpo_run(tmp_path, *overrides):
    pairs = DATA / "preference.jsonl"
    cfg = compose(
        *TINY_MODEL,
        "stage=dpo",
        "data=preference",
        f"data.path={pairs}",
        f"data.val_path={pairs}",
        "data.batch_size=5",
        "logger=csv",
        "trainer.max_steps=10",
        "trainer.max_epochs=100",
        "trainer.log_every_n_steps=1",
        "scheduler.warmup_ratio=0",
        *overrides,
        run_dir=tmp_path / "run",
    )
    return train(cfg)


@pytest.mark.parametrize("method", ["lora", "full"])
def test_dpo_prefers_the_chosen_answers(tmp_path, method):
    lr = "optim.lr=2e-2" if method == "lora" else "optim.lr=1e-3"
    result = dpo_run(tmp_path, f"method={method}", lr)
    margins = logged(result.run_dir, "train/margin")
    # Before the first update the policy is the reference, so every reward is exactly zero.
    assert margins[0] == 0.0
    assert margins[-1] > 0.05, margins
    assert logged(result.run_dir, "train/accuracy")[-1] == 1.0
    assert logged(result.run_dir, "val/accuracy")[-1] == 1.0
    assert result.metrics["val_loss"] < 0.69  # below -log sigmoid(0): the pairs are separated


def test_dpo_needs_preference_data_and_sft_refuses_it(tmp_path):
    with pytest.raises(OnestopError, match=r"stage=dpo: needs preference pairs \(data=preference\)"):
        train(compose(*TINY, "stage=dpo", run_dir=tmp_path / "a"))
    with pytest.raises(OnestopError, match="stage=sft: preference pairs train with stage=dpo"):
        train(compose(*TINY_MODEL, "data=preference", f"data.path={DATA / 'preference.jsonl'}", run_dir=tmp_path / "b"))


def test_continued_pretraining_on_raw_text_lowers_the_loss(tmp_path):
    corpus = DATA / "corpus" / "*.txt"
    cfg = compose(
        *TINY_MODEL,
        "stage=pretrain",
        "data=text",
        f"data.path={corpus}",
        f"data.val_path={corpus}",
        "method=full",
        "optim.lr=3e-3",
        "logger=csv",
        "trainer.max_steps=10",
        "trainer.max_epochs=100",
        "trainer.log_every_n_steps=1",
        run_dir=tmp_path / "run",
    )
    result = train(cfg)
    losses = logged(result.run_dir, "train/loss")
    assert losses[-1] < losses[0] - 0.5, losses
    assert (result.run_dir / "model" / "model.safetensors").is_file()


def test_pretrain_stage_refuses_conversations_in_one_line(tmp_path):
    with pytest.raises(OnestopError) as error:
        train(compose(*TINY, "stage=pretrain", run_dir=tmp_path / "run"))
    assert str(error.value) == "stage=pretrain: needs raw text (data=text); got data.format=alpaca"
    assert not (tmp_path / "run").exists()


def test_pretraining_from_scratch_with_a_tokenizer_trained_on_the_corpus(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    corpus = DATA / "corpus" / "*.txt"
    cfg = compose(
        *TINY_MODEL,
        "stage=pretrain",
        "data=text",
        f"data.path={corpus}",
        "data.val_ratio=0",
        "model.from_scratch=true",
        "model.train_tokenizer=300",
        "+model.config_overrides.num_hidden_layers=1",
        "method=full",
        "optim.lr=3e-3",
        "logger=csv",
        "trainer.max_steps=8",
        "trainer.max_epochs=100",
        "trainer.log_every_n_steps=1",
        run_dir=tmp_path / "run",
    )
    result = train(cfg)
    losses = logged(result.run_dir, "train/loss")
    assert losses[-1] < losses[0] - 0.5, losses
    tokenizer = AutoTokenizer.from_pretrained(result.run_dir / "model")
    model = AutoModelForCausalLM.from_pretrained(result.run_dir / "model")
    assert len(tokenizer) <= 300 + len(tokenizer.all_special_tokens)
    assert model.config.num_hidden_layers == 1 and model.config.vocab_size == len(tokenizer)
    assert tokenizer.decode(tokenizer("The quick brown fox")["input_ids"]) == "The quick brown fox"
