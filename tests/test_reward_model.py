"""stage=rm end to end on the tiny model: the Bradley-Terry loss by hand, `invoke train stage=rm` ranking its
training pairs well above the untrained head, `invoke eval eval=rm` reporting it, the run scoring texts through
onestop.models.reward, a full-weight reward model loading back, and the paths that would misload a reward model
as a language model (other suites, deploy, export) refusing in one line."""

import json
import math

import pytest
import torch
from conftest import ASSETS, compose, run_invoke
from omegaconf import OmegaConf
from safetensors import safe_open

from onestop.config.compose import compose as compose_config
from onestop.core.errors import OnestopError
from onestop.deploy.export import export_run
from onestop.deploy.service import start
from onestop.evaluation.run import evaluate
from onestop.losses import pairwise_reward_loss
from onestop.models.reward import RewardModel, score
from onestop.training.train import train

PAIRS = ASSETS / "data" / "preference_rm.jsonl"  # 12 pairs: a correct, polite answer against a wrong or rude one
TINY = ["model=tiny", "hardware=cpu", "data=preference", f"data.path={PAIRS}", "data.val_ratio=0"]
SHORT = ["logger=csv", "trainer.max_epochs=100", "scheduler.warmup_ratio=0"]


def test_pairwise_reward_loss_matches_the_formula_by_hand():
    chosen, rejected = [1.0, -0.5, 2.0], [0.2, 0.5, 2.0]
    for margin in (0.0, 0.5):
        # -log sigmoid(x) = log(1 + e^-x), x = r_chosen - r_rejected - margin
        expected = [math.log1p(math.exp(-(c - r - margin))) for c, r in zip(chosen, rejected, strict=True)]
        got = pairwise_reward_loss(
            torch.tensor(chosen, dtype=torch.float64), torch.tensor(rejected, dtype=torch.float64), margin
        )
        assert got.tolist() == pytest.approx(expected, rel=1e-12)
    assert pairwise_reward_loss(torch.tensor([0.0]), torch.tensor([0.0])).item() == pytest.approx(math.log(2))


@pytest.fixture(scope="module")
def reward_run(tmp_path_factory):
    """`invoke train stage=rm` with LoRA on the 12 pairs, as a user types it."""
    run_dir = tmp_path_factory.mktemp("rm") / "run"
    result = run_invoke(
        "train", *TINY, "stage=rm", "data.batch_size=12", "optim.lr=5e-3", "trainer.max_steps=8", *SHORT,
        f"hydra.run.dir={run_dir}",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    return run_dir


def test_invoke_train_rm_then_eval_rm_ranks_the_pairs_above_chance(reward_run, tmp_path):
    written = (reward_run / "config.yaml").read_text()
    assert "stage: rm" in written  # what eval, deploy and export read to tell a reward model apart
    with safe_open(reward_run / "adapter" / "adapter_model.safetensors", "pt") as saved:
        assert any("score" in name for name in saved.keys())  # the trained head travels with the adapter

    result = run_invoke("eval", f"run_dir={reward_run}", "eval=rm", f"eval.path={PAIRS}", "logger=csv")
    assert result.returncode == 0, result.stderr[-2000:]
    results = json.loads(sorted(reward_run.glob("eval/*/results.json"))[-1].read_text())
    trained = results["metrics"]["rm"]
    assert trained["accuracy"]["value"] >= 0.75 and trained["margin"]["value"] > 0, trained
    assert "accuracy" in result.stdout and "margin" in result.stdout  # the table

    # The untrained head on the same base: chance, the level the trained one is compared with.
    base = compose_config("eval", ["model=tiny", "eval=rm", f"eval.path={PAIRS}", "logger=csv"])
    base.output_dir = str(tmp_path / "base")
    untrained = evaluate(base).metrics["rm"]
    assert untrained["accuracy"]["value"] < trained["accuracy"]["value"] - 0.25, (untrained, trained)
    print(
        f"pairwise accuracy: trained {trained['accuracy']['value']:.3f}, untrained {untrained['accuracy']['value']:.3f}"
    )

    # The run as a reward elsewhere: the same scores the evaluation saw.
    sample = results["samples"]["rm"][0]
    scorer = RewardModel.load(reward_run)
    chosen, rejected = scorer.score_replies(["Is the Earth flat?"] * 2, ["No, it is an oblate spheroid.", "Yes."])
    assert chosen == pytest.approx(sample["chosen_score"], abs=1e-4) and chosen > rejected
    text = scorer.tokenizer.apply_chat_template(
        [{"role": "user", "content": "Is the Earth flat?"}, {"role": "assistant", "content": "Yes."}], tokenize=False
    )
    assert score(reward_run, [text]) == pytest.approx([rejected], abs=1e-4)


def test_a_reward_model_run_is_never_loaded_as_a_language_model(reward_run, tmp_path):
    other = compose_config(
        "eval", [f"run_dir={reward_run}", "eval=qa", f"eval.path={ASSETS / 'eval' / 'qa.jsonl'}", "logger=csv"]
    )
    with pytest.raises(OnestopError, match=r"reward model \(stage=rm\).*eval=rm") as refused:
        evaluate(other)
    assert "\n" not in str(refused.value)
    with pytest.raises(OnestopError, match=r"not served as a chat model"):
        start(compose_config("deploy", [f"run_dir={reward_run}", "deploy=transformers", "port=0"]))
    with pytest.raises(OnestopError, match=r"not exported as a language model"):
        export_run(OmegaConf.create({"run_dir": str(reward_run), "format": "merged", "output": None}))


def test_a_language_model_run_is_not_scored_as_a_reward_model(tmp_path):
    sft = compose("model=tiny", "hardware=cpu", "data=preference", f"data.path={PAIRS}", "stage=simpo",
                  "trainer.max_steps=1", *SHORT, run_dir=tmp_path / "sft")  # fmt: skip
    run_dir = train(sft).run_dir
    cfg = compose_config("eval", [f"run_dir={run_dir}", "eval=rm", f"eval.path={PAIRS}", "logger=csv"])
    with pytest.raises(OnestopError, match=r"eval=rm scores a reward model .*stage=simpo"):
        evaluate(cfg)
    with pytest.raises(OnestopError, match=r"stage=simpo trained a language model"):
        RewardModel.load(run_dir)


def test_a_full_weight_reward_model_loads_back_with_its_head(tmp_path):
    cfg = compose(*TINY, "stage=rm", "method=full", "data.batch_size=12", "trainer.max_steps=1", *SHORT,
                  run_dir=tmp_path / "full")  # fmt: skip
    result = train(cfg)
    assert (result.run_dir / "model" / "config.json").is_file()
    in_memory = result.model.eval()
    scorer = RewardModel.load(result.run_dir)
    ids = scorer.tokenizer("Hello there.", return_tensors="pt")
    with torch.no_grad():
        expected = in_memory(**ids).logits.squeeze().item()
    assert scorer.score(["Hello there."]) == pytest.approx([expected], abs=1e-4)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["method=freeze"], r"method=freeze: stage=rm's score head is new and must train"),
        (["periodic_eval.every_n_steps=1"], r"periodic_eval.every_n_steps: a reward model does not generate"),
    ],
)
def test_a_reward_model_that_could_not_learn_or_would_be_asked_to_generate_stops_in_one_line(
    tmp_path, overrides, message
):
    cfg = compose(*TINY, "stage=rm", "trainer.max_steps=1", *SHORT, *overrides, run_dir=tmp_path / "run")
    with pytest.raises(OnestopError, match=message) as refused:
        train(cfg)
    assert "\n" not in str(refused.value) and not (tmp_path / "run").exists()  # stopped before the run began
