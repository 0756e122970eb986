"""stage=dpo: Direct Preference Optimization (Rafailov et al. 2023). Raise the chosen answer's likelihood over
the rejected one's, measured against a frozen reference model, with no reward model and no sampling:

    h = (log p(chosen) - log ref(chosen)) - (log p(rejected) - log ref(rejected))
    sigmoid: -log sigmoid(beta h)    ipo: (h - 1 / (2 beta))^2 on per-token means    hinge: max(0, 1 - beta h)

`dpo.loss_type` picks the variant (onestop.losses.dpo_loss).
"""

import torch
from omegaconf import DictConfig

from onestop.losses import dpo_loss
from onestop.training.stages.base import Stage, Terms, pair_logps
from onestop.training.stages.reference import Reference


class DPOLoss:
    def __init__(self, cfg: DictConfig, model: torch.nn.Module, reference: Reference):
        self.reference, self.cfg = reference, cfg.dpo

    def __call__(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> Terms:
        chosen, rejected, chosen_len, rejected_len = pair_logps(model, batch)
        ref = self.reference.logps(model, batch)
        n = chosen.size(0)
        ref_chosen, ref_rejected = ref[:n], ref[n:]
        if self.cfg.loss_type == "ipo":  # IPO compares per-token means (as in TRL)
            chosen, rejected = chosen / chosen_len.clamp(min=1), rejected / rejected_len.clamp(min=1)
            ref_chosen, ref_rejected = ref_chosen / chosen_len.clamp(min=1), ref_rejected / rejected_len.clamp(min=1)
        beta = self.cfg.beta
        losses = dpo_loss(
            chosen, rejected, ref_chosen, ref_rejected, beta, self.cfg.loss_type, self.cfg.label_smoothing
        )
        chosen_reward, rejected_reward = (
            beta * (chosen - ref_chosen).detach(),
            beta * (rejected - ref_rejected).detach(),
        )
        margin = chosen_reward - rejected_reward
        return Terms(
            losses.sum(),
            n,
            {
                "chosen_reward": chosen_reward.mean(),
                "rejected_reward": rejected_reward.mean(),
                "margin": margin.mean(),
                "accuracy": (margin > 0).float().mean(),
            },
        )


STAGE = Stage(name="dpo", layout="pairs", objective=DPOLoss, reference=True, scored_whole="preference pair")
