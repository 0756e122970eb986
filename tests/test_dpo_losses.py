"""A DPO run's metrics.json holds its per-step training losses, as an SFT run's does."""

import csv

import pytest
from conftest import ASSETS, TINY, compose

from onestop.training.train import train

PAIRS = ASSETS / "data" / "preference.jsonl"


def test_dpo_records_each_steps_loss_in_metrics(tmp_path):
    overrides = [o for o in TINY if not o.startswith("data")] + ["stage=dpo", "data=preference", f"data.path={PAIRS}"]
    overrides += ["data.val_ratio=0", "logger=csv", "trainer.max_steps=3", "trainer.log_every_n_steps=1"]
    result = train(compose(*overrides, run_dir=tmp_path / "run"))
    with open(tmp_path / "run" / "csv" / "metrics.csv") as handle:
        logged = [float(row["train/loss"]) for row in csv.DictReader(handle) if row.get("train/loss")]
    losses = result.metrics["train_losses"]
    assert len(losses) == 3 and losses == pytest.approx(logged, rel=1e-5)
    assert losses[-1] == result.metrics["train_loss"]
