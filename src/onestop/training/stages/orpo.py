"""stage=orpo: Odds Ratio Preference Optimization (Hong et al. 2024), reference-free: supervised fine-tuning on
the chosen answers plus a penalty on the odds of the rejected ones, in one stage and one model in memory:

    loss = NLL(chosen tokens) - beta log sigmoid(log odds(chosen) - log odds(rejected)),
    log odds(p) = p - log(1 - exp(p)), p the answer's per-token mean log-probability
"""

import torch
from omegaconf import DictConfig

from onestop.losses import orpo_odds_loss
from onestop.training.stages.base import Stage, Terms, pair_logps


class ORPOLoss:
    def __init__(self, cfg: DictConfig, model: torch.nn.Module, reference: None = None):
        self.beta = cfg.orpo.beta

    def __call__(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> Terms:
        chosen_sum, rejected_sum, chosen_len, rejected_len = pair_logps(model, batch)
        chosen, rejected = chosen_sum / chosen_len.clamp(min=1), rejected_sum / rejected_len.clamp(min=1)
        nll = -chosen_sum.sum() / chosen_len.sum().clamp(min=1)  # the chosen answers' token cross-entropy
        odds = orpo_odds_loss(chosen, rejected, self.beta)
        n = chosen.size(0)
        return Terms(
            nll * n + odds.sum(),
            n,
            {"nll": nll.detach(), "odds_loss": odds.mean().detach(), "accuracy": (chosen > rejected).float().mean()},
        )


STAGE = Stage(name="orpo", layout="pairs", objective=ORPOLoss, scored_whole="preference pair")
