"""stage=simpo: Simple Preference Optimization (Meng et al. 2024), reference-free: the per-token mean
log-probability is the implicit reward, and the chosen answer must beat the rejected one by a margin:

    loss = -log sigmoid(beta (mean log p(chosen) - mean log p(rejected)) - gamma),  gamma = beta * gamma_beta_ratio
"""

import torch
from omegaconf import DictConfig

from onestop.losses import simpo_loss
from onestop.training.stages.base import Stage, Terms, pair_logps


class SimPOLoss:
    def __init__(self, cfg: DictConfig, model: torch.nn.Module, reference: None = None):
        self.beta, self.gamma = cfg.simpo.beta, cfg.simpo.beta * cfg.simpo.gamma_beta_ratio

    def __call__(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> Terms:
        chosen, rejected, _, _ = pair_logps(model, batch, mean=True)
        losses = simpo_loss(chosen, rejected, self.beta, self.gamma)
        margin = (self.beta * (chosen - rejected)).detach()
        return Terms(losses.sum(), chosen.size(0), {"margin": margin.mean(), "accuracy": (margin > 0).float().mean()})


STAGE = Stage(name="simpo", layout="pairs", objective=SimPOLoss, scored_whole="preference pair")
