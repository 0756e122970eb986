"""stage=grpo: its loss against values computed by hand (plain floats), the verifiable rewards, and a run on the
tiny model whose reward rises within a dozen steps; a bad reward stops in one line."""

import csv
import json
import math

import pytest
import torch
from conftest import ASSETS, compose, run_invoke
from omegaconf import OmegaConf
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from onestop.core.errors import OnestopError
from onestop.losses import grpo_advantages, grpo_loss
from onestop.training.rewards import rewards_from_config, score
from onestop.training.train import train

PROMPTS = ASSETS / "data" / "prompts.jsonl"
TINY_GRPO = ["model=tiny", "hardware=cpu", "stage=grpo", "data=prompts", f"data.path={PROMPTS}"]

# One group of two answers, two tokens each; the second answer ended after one token (its second is masked).
LOGPS = [[-1.0, -2.0], [-0.5, -3.0]]
OLD = [[-1.5, -2.0], [-0.5, -2.0]]  # the sampling policy: ratios e^0.5, 1 / 1, e^-1
REF = [[-1.2, -1.8], [-0.7, -2.5]]
MASK = [[1, 1], [1, 0]]
REWARDS = [1.0, 0.0]
EPS, BETA = 0.2, 0.1


def by_hand(loss_type: str) -> tuple[float, int, float, float]:
    mean = sum(REWARDS) / 2
    std = math.sqrt(sum((r - mean) ** 2 for r in REWARDS) / (2 - 1))  # unbiased, as torch.std
    advantages = [(r - mean) / (std + 1e-4) for r in REWARDS]
    per_token, kls, clipped = [], [], 0
    for i in range(2):
        row = []
        for t in range(2):
            if not MASK[i][t]:
                continue
            ratio = math.exp(LOGPS[i][t] - OLD[i][t])
            unclipped, clip = ratio * advantages[i], min(max(ratio, 1 - EPS), 1 + EPS) * advantages[i]
            clipped += clip < unclipped
            delta = REF[i][t] - LOGPS[i][t]
            kl = math.exp(delta) - delta - 1
            kls.append(kl)
            row.append(-min(unclipped, clip) + BETA * kl)
        per_token.append(row)
    tokens = sum(map(len, per_token))
    if loss_type == "grpo":
        loss, count = sum(sum(row) / len(row) for row in per_token), 2
    elif loss_type == "dapo":
        loss, count = sum(map(sum, per_token)), tokens
    else:  # dr_grpo, max_new_tokens = 2
        loss, count = sum(map(sum, per_token)) / 2, 2
    return loss, count, sum(kls) / tokens, clipped / tokens


@pytest.mark.parametrize("loss_type", ["grpo", "dapo", "dr_grpo"])
def test_grpo_loss_matches_values_computed_by_hand(loss_type):
    t = lambda values: torch.tensor(values, dtype=torch.float64)  # noqa: E731
    advantages = grpo_advantages(t(REWARDS), group_size=2)
    assert advantages.tolist() == pytest.approx([0.70701, -0.70701], abs=1e-5)  # +-0.5 / (sqrt(0.5) + 1e-4)
    loss, count, kl, clipped = grpo_loss(
        t(LOGPS), t(OLD), advantages, t(MASK), EPS, EPS, t(REF), BETA, loss_type, max_new_tokens=2
    )
    expected = by_hand(loss_type)
    assert (float(loss), count, float(kl), float(clipped)) == pytest.approx(expected, rel=1e-9)
    assert float(clipped) == pytest.approx(1 / 3)  # only the first token's ratio e^0.5 is past 1.2
    # Without the clip the first token's term is e^0.5 A instead of 1.2 A; without beta the KL only is logged.
    unclipped, _, _, _ = grpo_loss(t(LOGPS), t(OLD), advantages, t(MASK), 10.0, 10.0, None, 0.0, "dapo")
    clipped_sum, _, _, _ = grpo_loss(t(LOGPS), t(OLD), advantages, t(MASK), EPS, EPS, None, 0.0, "dapo")
    assert float(clipped_sum - unclipped) == pytest.approx((math.exp(0.5) - 1.2) * 0.70701, abs=1e-5)


def test_advantages_without_scaling_and_for_a_group_with_no_signal():
    rewards = torch.tensor([1.0, 0.0, 0.0, 0.5, 0.5, 0.5])
    assert grpo_advantages(rewards, 3, scale=False).tolist() == pytest.approx(
        [2 / 3, -1 / 3, -1 / 3, 0, 0, 0], abs=1e-6
    )
    assert grpo_advantages(rewards, 3)[3:].tolist() == [0.0, 0.0, 0.0]  # equal rewards: no gradient


def rl(**overrides):
    return compose(*TINY_GRPO, *(f"rl.{k}={v}" for k, v in overrides.items())).rl


def test_built_in_rewards_and_a_users_function(tmp_path, monkeypatch):
    (tmp_path / "my_rewards.py").write_text(
        "def short(prompt, completion, **fields):\n    return 1.0 if len(completion.split()) <= 2 else 0.0\n"
        "def broken(prompt, completion, **fields):\n    return 1 / 0 if 'x' in completion else float('nan')\n"
    )
    monkeypatch.chdir(tmp_path)  # a user's module is importable from the working directory
    chosen = rl(
        rewards="[exact_match,number_match,format,my_rewards:short,my_rewards:broken]",
        reward_weights="[1,2,0.5,1,1]",
        format_pattern="'[a-z ]+'",
    )
    completions = ["Paris.", "The answer is 1,234", "#### 42", "x y z"]
    records = [
        {"answer": "paris"},
        {"answer": "#### 1234"},
        {"answer": "Natalia sold 42 clips. #### 42"},
        {"answer": "x"},
    ]
    per_reward, totals, failures = score(rewards_from_config(chosen), ["q"] * 4, completions, records)
    assert per_reward["exact_match"] == [1, 0, 0, 0]
    assert per_reward["number_match"] == [0, 1, 1, 0]
    assert per_reward["format"] == [0, 0, 0, 1]
    assert per_reward["my_rewards:short"] == [1, 0, 1, 0]
    assert totals == [2.0, 2.0, 3.0, 0.5]
    assert failures == {"my_rewards:broken": 4}  # raised or NaN: 0 for that answer, counted, never fatal


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"rewards": "[exact_mtch]"}, "config key 'rl.rewards': unknown reward 'exact_mtch'; expected one of"),
        ({"rewards": "[no_such_module:f]"}, "config key 'rl.rewards': cannot import reward 'no_such_module:f'"),
        ({"rewards": "[format]"}, "config key 'rl.format_pattern'"),
        ({"reward_weights": "[1,2]"}, "config key 'rl.reward_weights': 2 weights for 1 rewards"),
    ],
)
def test_bad_reward_settings_name_their_key(overrides, message):
    with pytest.raises(OnestopError, match=message.replace("(", r"\(")) as error:
        rewards_from_config(rl(**overrides))
    assert "\n" not in str(error.value)


def logged(run_dir, key: str) -> list[float]:
    with open(run_dir / "csv" / "metrics.csv") as handle:
        return [float(row[key]) for row in csv.DictReader(handle) if row.get(key)]


def test_invoke_train_grpo_raises_a_verifiable_reward(tmp_path):
    # The task: answer in lowercase letters only, checked by the format reward. The random tiny model writes
    # such an answer ~20% of the time; 12 steps of 2 prompts x 8 samples took it to 1.0 (measured: 22 s).
    run_dir = tmp_path / "run"
    result = run_invoke(
        "train", *TINY_GRPO, "method=full", "optim.lr=3e-2", "data.batch_size=2", "rl.num_generations=8",
        "rl.max_new_tokens=2", "rl.rewards=[format]", "rl.format_pattern='[a-z]+'", "trainer.max_steps=12",
        "logger=csv", "trainer.log_every_n_steps=1", "scheduler.warmup_ratio=0", "trainer.max_epochs=100",
        f"hydra.run.dir={run_dir}", env={"ONESTOP_HOME": str(tmp_path / "home")},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    rewards = logged(run_dir, "train/reward")
    assert len(rewards) == 12
    assert "step 12/12" in result.stdout and f"reward {rewards[-1]:.3f}, " in result.stdout, result.stdout  # progress
    first, last = sum(rewards[:3]) / 3, sum(rewards[-3:]) / 3
    assert last > first + 0.3 and last >= 0.8, rewards
    assert logged(run_dir, "train/reward_format") == rewards
    for key in (
        "train/reward_std",
        "train/zero_std_fraction",
        "train/kl",
        "train/completion_length",
        "train/generation_seconds",
        "train/reward_seconds",
    ):
        assert len(logged(run_dir, key)) == 12, key
    assert logged(run_dir, "train/kl")[0] == 0.0  # before the first update the policy is the reference
    assert (run_dir / "model" / "config.json").is_file()
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["steps"] == 12 and metrics["data"]["train_records"] == 12


def test_invoke_train_grpo_with_a_bad_reward_stops_in_one_line(tmp_path):
    run_dir = tmp_path / "run"
    result = run_invoke(
        "train", *TINY_GRPO, "rl.rewards=[exact_mtch]", "trainer.max_steps=1", "logger=none",
        f"hydra.run.dir={run_dir}", env={"ONESTOP_HOME": str(tmp_path / "home")},
    )  # fmt: skip
    assert result.returncode != 0
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("onestop train: error: config key 'rl.rewards': unknown reward 'exact_mtch'"), last
    assert "Traceback" not in result.stderr
    assert not run_dir.exists()  # stopped before the run directory was made


def test_grpo_starts_from_an_sft_runs_adapter(tmp_path):
    sft = train(
        compose("model=tiny", "hardware=cpu", "data=alpaca", f"data.path={ASSETS / 'alpaca_small.jsonl'}",
                "data.batch_size=4", "trainer.max_steps=1", "logger=none", "optim.lr=1e-2", run_dir=tmp_path / "sft")
    )  # fmt: skip
    cfg = compose(
        *TINY_GRPO, f"init_from={sft.run_dir}", "trainer.max_steps=1", "logger=none", "data.batch_size=1",
        "rl.num_generations=2", "rl.max_new_tokens=2", "rl.rewards=[contains]", run_dir=tmp_path / "grpo",
    )  # fmt: skip
    result = train(cfg)
    assert (result.run_dir / "adapter" / "adapter_config.json").is_file()
    assert OmegaConf.load(result.run_dir / "config.yaml").init_from == str(sft.run_dir)
    # The new adapter sits on the base with the SFT adapter merged in: that is also the reference (adapter off).
    base = AutoModelForCausalLM.from_pretrained(ASSETS / "tiny-qwen2").model.layers[0].self_attn.q_proj.weight
    started = result.model.get_base_model().model.layers[0].self_attn.q_proj.base_layer.weight
    assert started.shape == base.shape and not torch.equal(started, base)


def test_grpo_refuses_data_without_prompts_in_one_line(tmp_path):
    cfg = compose(
        "model=tiny", "hardware=cpu", "stage=grpo", "data=alpaca", f"data.path={ASSETS / 'alpaca_small.jsonl'}",
        run_dir=tmp_path / "run",
    )  # fmt: skip
    with pytest.raises(OnestopError) as error:
        train(cfg)
    assert str(error.value) == "stage=grpo: needs prompts (data=prompts); got data.format=alpaca"


def test_a_resumed_grpo_run_samples_and_ends_as_an_unbroken_one(tmp_path):
    # Checkpoints hold the RNG states (TrainingPosition): the resumed run draws the same answers from step 4 on.
    steps = [
        *TINY_GRPO, "method=full", "optim.lr=3e-2", "data.batch_size=2", "rl.num_generations=4", "rl.max_new_tokens=2",
        "rl.rewards=[format]", "rl.format_pattern='[a-z]+'", "scheduler.warmup_ratio=0", "scheduler.min_lr_ratio=1.0",
        "logger=csv", "trainer.log_every_n_steps=1", "checkpoint.every_n_steps=3", "trainer.max_epochs=100",
    ]  # fmt: skip
    unbroken = train(compose(*steps, "trainer.max_steps=6", run_dir=tmp_path / "unbroken"))
    train(compose(*steps, "trainer.max_steps=3", run_dir=tmp_path / "resumed"))
    resumed = train(compose(*steps, "trainer.max_steps=6", "resume=auto", run_dir=tmp_path / "resumed"))
    assert resumed.metrics["resumed_from"].endswith(".ckpt")
    assert logged(resumed.run_dir, "train/reward") == logged(unbroken.run_dir, "train/reward")[3:]
    expected = load_file(unbroken.run_dir / "model" / "model.safetensors")
    got = load_file(resumed.run_dir / "model" / "model.safetensors")
    assert all(torch.equal(got[name], expected[name]) for name in expected)
