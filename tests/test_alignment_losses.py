"""The preference losses against values computed by hand from the papers' formulas (plain floats, no torch),
the stage table against the config's choices, and the reference's cache against the model it stands for."""

import math

import pytest
import torch
from conftest import ASSETS

from onestop.config.compose import CHOICES, WHOLE_SEQUENCE_STAGES
from onestop.data.batching import pad_pairs
from onestop.losses import (
    DPO_LOSS_TYPES,
    dpo_loss,
    kto_loss,
    orpo_odds_loss,
    sequence_logps,
    simpo_loss,
)
from onestop.methods import apply_lora
from onestop.training.stages import STAGES
from onestop.training.stages.reference import Reference

# Two pairs: log-probabilities of the policy and the reference, chosen and rejected.
CHOSEN, REJECTED = [-4.0, -7.5], [-6.0, -5.0]
REF_CHOSEN, REF_REJECTED = [-5.0, -7.0], [-5.5, -5.5]
BETA = 0.1


def log_sigmoid(x: float) -> float:
    return -math.log1p(math.exp(-x))


def sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def h(i: int) -> float:
    return (CHOSEN[i] - REF_CHOSEN[i]) - (REJECTED[i] - REF_REJECTED[i])  # pair 0: 1 + 0.5, pair 1: -0.5 - 0.5


def tensors(*lists):
    return [torch.tensor(values, dtype=torch.float64) for values in lists]


def test_dpo_variants_match_the_papers_formulas():
    by_hand = {
        "sigmoid": [-log_sigmoid(BETA * h(i)) for i in range(2)],
        "ipo": [(h(i) - 1 / (2 * BETA)) ** 2 for i in range(2)],
        "hinge": [max(0.0, 1 - BETA * h(i)) for i in range(2)],
    }
    assert set(by_hand) == set(DPO_LOSS_TYPES) == set(CHOICES["dpo.loss_type"])
    for loss_type, expected in by_hand.items():
        got = dpo_loss(*tensors(CHOSEN, REJECTED, REF_CHOSEN, REF_REJECTED), BETA, loss_type)
        assert got.tolist() == pytest.approx(expected, rel=1e-12), loss_type
    assert by_hand["sigmoid"] == pytest.approx([0.6210, 0.7444], abs=1e-4)  # log(1 + e^-0.15), log(1 + e^0.1)
    smoothed = dpo_loss(*tensors(CHOSEN, REJECTED, REF_CHOSEN, REF_REJECTED), BETA, "sigmoid", label_smoothing=0.2)
    expected = [-0.8 * log_sigmoid(BETA * h(i)) - 0.2 * log_sigmoid(-BETA * h(i)) for i in range(2)]
    assert smoothed.tolist() == pytest.approx(expected, rel=1e-12)


def test_simpo_and_orpo_are_reference_free_and_match_by_hand():
    chosen_mean, rejected_mean = [-0.5, -1.2], [-0.9, -0.7]  # per-token means
    beta, ratio = 2.0, 0.5
    got = simpo_loss(*tensors(chosen_mean, rejected_mean), beta, gamma=beta * ratio)
    expected = [-log_sigmoid(beta * (c - r) - beta * ratio) for c, r in zip(chosen_mean, rejected_mean, strict=True)]
    assert got.tolist() == pytest.approx(expected, rel=1e-12)
    assert expected[0] == pytest.approx(-log_sigmoid(0.8 - 1.0))

    def log_odds(p: float) -> float:
        return p - math.log(1 - math.exp(p))

    got = orpo_odds_loss(*tensors(chosen_mean, rejected_mean), beta=0.1)
    expected = [-0.1 * log_sigmoid(log_odds(c) - log_odds(r)) for c, r in zip(chosen_mean, rejected_mean, strict=True)]
    assert got.tolist() == pytest.approx(expected, rel=1e-12)
    for stage in ("orpo", "simpo"):
        assert not STAGES[stage].reference  # no second model in memory


def test_kto_weights_desirable_and_undesirable_answers_around_the_reference_point():
    logps, ref, desirable = [-4.0, -6.0, -3.0], [-5.0, -5.0, -3.5], [True, False, False]
    kl, w_d, w_u = 0.25, 1.5, 0.5
    got = kto_loss(*tensors(logps, ref), torch.tensor(desirable), torch.tensor(kl), BETA, w_d, w_u)
    r = [p - q for p, q in zip(logps, ref, strict=True)]
    expected = [
        w_d * (1 - sigmoid(BETA * (r[0] - kl))),
        w_u * (1 - sigmoid(BETA * (kl - r[1]))),
        w_u * (1 - sigmoid(BETA * (kl - r[2]))),
    ]
    assert got.tolist() == pytest.approx(expected, rel=1e-12)
    assert expected[1] < 0.5 * w_u < expected[2]  # rated bad and already less likely: less loss than one more likely


def test_the_stage_table_is_the_configs_list_of_stages():
    assert tuple(STAGES) == CHOICES["stage"]
    assert {name for name, stage in STAGES.items() if stage.scored_whole} == set(WHOLE_SEQUENCE_STAGES)
    assert {name for name, stage in STAGES.items() if stage.reference} == {"dpo", "kto", "grpo"}


def test_reference_log_probs_are_the_base_models_and_computed_once_per_sequence():
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(ASSETS / "tiny-qwen2").eval()
    pairs = [
        {"chosen_input_ids": [5, 6, 7, 8], "chosen_labels": [-100, -100, 7, 8]},
        {"chosen_input_ids": [9, 10, 11], "chosen_labels": [-100, 10, 11]},
    ]
    for pair in pairs:
        pair["rejected_input_ids"], pair["rejected_labels"] = pair["chosen_input_ids"][::-1], pair["chosen_labels"]
    batch = pad_pairs(pairs, pad_id=0)
    base = sequence_logps(model, batch)
    policy = apply_lora(model, r=4, alpha=8, dropout=0.0, target_modules=["all-linear"])
    with torch.no_grad():
        for parameter in policy.parameters():
            if parameter.requires_grad:
                parameter.add_(0.5)  # the adapter moved away from zero: the policy is not the base any more
    assert not torch.allclose(sequence_logps(policy, batch), base)

    reference = Reference.of(policy, adapter=True)  # the base is the policy with its adapter off
    torch.testing.assert_close(reference.logps(policy, batch), base)
    assert reference.computed == 4
    reordered = pad_pairs(pairs[::-1], pad_id=0)  # the same sequences in other rows and other padding
    torch.testing.assert_close(reference.logps(policy, reordered), base[[1, 0, 3, 2]])
    assert reference.computed == 4  # from the cache
