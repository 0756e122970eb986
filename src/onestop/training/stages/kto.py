"""stage=kto: Kahneman-Tversky Optimization (Ethayarajh et al. 2024) on single answers rated desirable or not,
such as the web UI's thumbs up and down (data=feedback) or data=unpaired, against a frozen reference:

    r = log p(answer) - log ref(answer)
    desirable: w_d (1 - sigmoid(beta (r - z)))    undesirable: w_u (1 - sigmoid(beta (z - r)))

The reference point z estimates KL(policy || reference) as the batch's mean r, clamped at 0 and not
differentiated. (TRL estimates it on mismatched prompt/answer pairs of the batch instead; both are
estimates of the same quantity, and z only shifts where the sigmoid is centred.)
"""

import torch
from omegaconf import DictConfig

from onestop.losses import kto_loss, sequence_logps_and_lengths
from onestop.training.stages.base import Stage, Terms
from onestop.training.stages.reference import Reference


class KTOLoss:
    def __init__(self, cfg: DictConfig, model: torch.nn.Module, reference: Reference):
        self.reference, self.cfg = reference, cfg.kto

    def __call__(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> Terms:
        logps, _ = sequence_logps_and_lengths(model, batch)
        ref = self.reference.logps(model, batch)
        rewards = (logps - ref).detach()
        kl = rewards.mean().clamp(min=0)
        desirable = batch["desirable"].bool()
        losses = kto_loss(
            logps, ref, desirable, kl, self.cfg.beta, self.cfg.desirable_weight, self.cfg.undesirable_weight
        )
        logged = {"kl": kl}
        if desirable.any():
            logged["desirable_reward"] = self.cfg.beta * rewards[desirable].mean()
        if (~desirable).any():
            logged["undesirable_reward"] = self.cfg.beta * rewards[~desirable].mean()
        return Terms(losses.sum(), logps.size(0), logged)


STAGE = Stage(name="kto", layout="rated", objective=KTOLoss, reference=True, scored_whole="rated answer")
