"""The alignment stages end to end on the tiny model: KTO on the web UI's feedback file as the UI writes it,
ORPO and SimPO (reference-free), DPO's IPO variant and KTO on preference pairs, and their bad inputs in one line."""

import csv
import json

import pytest
import yaml
from conftest import ASSETS, TINY, compose, run_invoke
from omegaconf import OmegaConf

from onestop.core.errors import OnestopError
from onestop.deploy.feedback import FeedbackStore
from onestop.training.train import train

PAIRS = ASSETS / "data" / "preference.jsonl"
TINY_MODEL = [o for o in TINY if not o.startswith("data")]
SHORT = ["logger=csv", "trainer.max_epochs=100", "trainer.log_every_n_steps=1", "scheduler.warmup_ratio=0"]


def logged(run_dir, key: str) -> list[float]:
    with open(run_dir / "csv" / "metrics.csv") as handle:
        return [float(row[key]) for row in csv.DictReader(handle) if row.get(key)]


def rated_feedback(tmp_path):
    """A feedback file written by the UI's own store: answers rated good and bad, one re-rated, one corrected."""
    store = FeedbackStore(tmp_path / "feedback")
    ask = lambda text: [{"role": "user", "content": text}]  # noqa: E731
    store.rate("a", ask("Is the Earth flat?"), {"role": "assistant", "content": "No, it is round."}, "good")
    store.rate("b", ask("Say hello politely."), {"role": "assistant", "content": "What do you want?"}, "bad")
    store.rate("c", ask("2 + 3?"), {"role": "assistant", "content": "It might be 6."}, "good")
    store.rate("c", ask("2 + 3?"), {"role": "assistant", "content": "It might be 6."}, "bad", correction="5.")
    store.rate("d", ask("Name a colour."), {"role": "assistant", "content": "Blue."}, "good")
    return store.paths()["feedback"]


def test_invoke_train_kto_on_the_uis_feedback_moves_the_rated_answers_the_intended_way(tmp_path):
    feedback = rated_feedback(tmp_path)
    run_dir = tmp_path / "run"
    result = run_invoke(
        "train", *TINY_MODEL, "stage=kto", "data=feedback", f"data.path={feedback}", "data.val_ratio=0",
        "data.batch_size=5", "optim.lr=2e-2", "trainer.max_steps=5", *SHORT, f"hydra.run.dir={run_dir}",
        env={"ONESTOP_HOME": str(tmp_path / "home")},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    # The latest rating of each reply counts: c was re-rated bad and corrected.
    assert "3 desirable and 2 undesirable answers from the latest ratings" in result.stdout
    desirable, undesirable = logged(run_dir, "train/desirable_reward"), logged(run_dir, "train/undesirable_reward")
    assert desirable[0] == undesirable[0] == 0.0  # before the first update the policy is the reference
    assert desirable[-1] > 0.01 and undesirable[-1] < -0.01, (desirable, undesirable)
    written = (run_dir / "config.yaml").read_text()
    assert "stage: kto" in written and "format: feedback" in written  # what the user asked for, as it ran


@pytest.mark.parametrize(
    ("stage", "overrides"),
    [("orpo", ["orpo.beta=0.5"]), ("simpo", []), ("dpo", ["dpo.loss_type=ipo"]), ("kto", [])],
)
def test_preference_stages_separate_the_pairs(tmp_path, stage, overrides):
    cfg = compose(
        *TINY_MODEL, f"stage={stage}", "data=preference", f"data.path={PAIRS}", "data.val_ratio=0",
        "data.batch_size=5", "optim.lr=2e-2", "trainer.max_steps=4", *SHORT, *overrides, run_dir=tmp_path / "run",
    )  # fmt: skip
    composed = OmegaConf.to_yaml(cfg)
    result = train(cfg)
    assert OmegaConf.to_yaml(cfg) == composed  # the run's choices are a plan; the config is never changed
    written = yaml.safe_load((result.run_dir / "config.yaml").read_text())
    assert cfg.data.padding_free == "auto" and written["data"]["padding_free"] is False  # what the run did
    losses = result.metrics["train_losses"]
    assert len(losses) == 4 and losses[-1] < losses[0], losses
    if stage == "kto":  # the pairs' two sides as rated answers: chosen desirable, rejected not
        desirable, undesirable = (
            logged(result.run_dir, "train/desirable_reward"),
            logged(result.run_dir, "train/undesirable_reward"),
        )
        assert desirable[-1] > 0 > undesirable[-1], (desirable, undesirable)
        return
    accuracy = logged(result.run_dir, "train/accuracy")
    assert accuracy[-1] >= 0.8 and accuracy[-1] > accuracy[0], accuracy  # 5 pairs: at least 4 now ranked right
    if stage == "dpo":  # IPO: the margin, on per-token means, moves towards 1 / (2 beta) = 5
        assert 0 < logged(result.run_dir, "train/margin")[-1] / 0.1 < 5


def test_stages_refuse_data_of_another_layout_in_one_line(tmp_path):
    with pytest.raises(OnestopError, match=r"^stage=kto: needs answers rated desirable or not \(data=unpaired"):
        train(compose(*TINY, "stage=kto", run_dir=tmp_path / "a"))
    feedback = rated_feedback(tmp_path)
    with pytest.raises(OnestopError, match=r"^stage=orpo: needs preference pairs \(data=preference\)"):
        train(compose(*TINY_MODEL, "stage=orpo", "data=feedback", f"data.path={feedback}", run_dir=tmp_path / "b"))
    with pytest.raises(OnestopError, match=r"^stage=sft: answers rated desirable or not train with stage=kto"):
        train(compose(*TINY_MODEL, "data=feedback", f"data.path={feedback}", run_dir=tmp_path / "c"))
    with feedback.open("a") as handle:
        handle.write(json.dumps({"id": "e", "rating": "meh", "messages": [], "reply": {}}) + "\n")
    with pytest.raises(OnestopError, match=rf"^{feedback}:6: not a rating of the web UI's feedback file"):
        train(compose(*TINY_MODEL, "stage=kto", "data=feedback", f"data.path={feedback}", run_dir=tmp_path / "d"))
    unpaired = tmp_path / "rated.jsonl"
    unpaired.write_text(json.dumps({"prompt": "Hi", "completion": "Hello.", "label": "yes"}) + "\n")
    with pytest.raises(OnestopError, match=rf"^{unpaired}:1: field 'label' must be true .* got 'yes'"):
        train(compose(*TINY_MODEL, "stage=kto", "data=unpaired", f"data.path={unpaired}", run_dir=tmp_path / "e"))
    assert not any((tmp_path / name).exists() for name in "abcde")
