"""Direct Preference Optimization: raise the chosen answer's likelihood over the rejected one's,
measured against a frozen reference model, with no reward model and no sampling.

loss = -log sigmoid(beta * ((log p(chosen) - log ref(chosen)) - (log p(rejected) - log ref(rejected))))

The reference is the base model itself: for an adapter method, the same weights with the adapter
switched off (no second copy in memory); for full and freeze, a frozen copy taken before training.
"""

import contextlib

import torch
import torch.nn.functional as F

from onestop.losses import sequence_logps
from onestop.training.module import CausalLMModule


class DPOModule(CausalLMModule):
    """The policy is `model`; the reference is `reference` (a frozen copy) or `model` with its adapter off."""

    def __init__(self, model, optimizer, scheduler=None, beta: float = 0.1, reference=None):
        super().__init__(model, optimizer, scheduler)
        self.beta = beta
        self.reference = [reference] if reference is not None else None  # a list: not a registered submodule

    def _reference_logps(self, batch) -> torch.Tensor:
        with torch.no_grad():
            if self.reference is not None:
                return sequence_logps(self.reference[0], batch)
            disabled = self.model.disable_adapter() if hasattr(self.model, "disable_adapter") else None
            with disabled or contextlib.nullcontext():
                return sequence_logps(self.model, batch)

    def dpo_terms(self, batch) -> dict[str, torch.Tensor]:
        policy = sequence_logps(self.model, batch)
        reference = self._reference_logps(batch)
        n = policy.size(0) // 2
        chosen_reward = self.beta * (policy[:n] - reference[:n])
        rejected_reward = self.beta * (policy[n:] - reference[n:])
        margin = chosen_reward - rejected_reward
        return {
            "loss": -F.logsigmoid(margin).mean(),
            "chosen_reward": chosen_reward.mean().detach(),
            "rejected_reward": rejected_reward.mean().detach(),
            "margin": margin.mean().detach(),
            "accuracy": (margin > 0).float().mean().detach(),
        }

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        terms = self.dpo_terms(batch)
        self.last_train_loss = float(terms["loss"].detach())
        self.train_losses.append(self.last_train_loss)  # metrics.json's per-step curve, as for SFT
        for name, value in terms.items():
            self.log(f"train/{name}", value, on_step=True, on_epoch=False)
        self.log("loss", terms["loss"], prog_bar=True, logger=False, on_step=True, on_epoch=False)
        self.log("acc", terms["accuracy"], prog_bar=True, logger=False, on_step=True, on_epoch=False)
        self.log("train/lr", self.optimizers().param_groups[0]["lr"], on_step=True, on_epoch=False)
        return terms["loss"]

    def validation_step(self, batch, batch_idx: int) -> None:
        with torch.no_grad():
            terms = self.dpo_terms(batch)
        pairs = batch["input_ids"].size(0) // 2
        # Pair-weighted sums, so the epoch value does not depend on how batches split.
        self._val_loss_sum += float(terms["loss"]) * pairs
        self._val_tokens += pairs
        self._val_accuracy_sum = getattr(self, "_val_accuracy_sum", 0.0) + float(terms["accuracy"]) * pairs
        self._val_margin_sum = getattr(self, "_val_margin_sum", 0.0) + float(terms["margin"]) * pairs

    def on_validation_epoch_end(self) -> None:
        pairs = max(self._val_tokens, 1)
        self.log("val/accuracy", getattr(self, "_val_accuracy_sum", 0.0) / pairs)
        self.log("val/margin", getattr(self, "_val_margin_sum", 0.0) / pairs)
        self._val_accuracy_sum = self._val_margin_sum = 0.0
        super().on_validation_epoch_end()
