"""What a training stage declares, and the two kinds of objective stages share: a loss per labelled token, or
a loss per whole sequence scored by its log-probability."""

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import torch
from omegaconf import DictConfig

from onestop.losses import sequence_logps_and_lengths, token_loss_sum
from onestop.training.fastpaths import head_loss
from onestop.training.stages.reference import Reference


@dataclass
class Terms:
    """One micro-batch's loss: `loss_sum` summed over `count` units (labelled tokens, pairs, answers), and the
    values logged beside it (each as train/NAME per step and val/NAME weighted by `count`)."""

    loss_sum: torch.Tensor
    count: int
    logged: dict[str, torch.Tensor] = field(default_factory=dict)


class Objective(Protocol):
    """A stage's batch -> loss: (the policy being trained, a collated batch) -> Terms."""

    def __call__(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> Terms: ...


@dataclass(frozen=True)
class Stage:
    """One training stage: what `stage=NAME` trains, what it needs loaded and which data it reads."""

    name: str
    layout: str
    """The data its loss reads (onestop.data.sft.LAYOUTS): tokens, text, pairs or rated."""
    objective: Callable[[DictConfig, torch.nn.Module, Reference | None], Objective]
    """Builds the batch -> loss from the run's config, the policy and the reference (None without one)."""
    reference: bool = False
    """A frozen reference model's log-probabilities enter the loss (the base with the adapter off for adapter
    methods, a frozen copy otherwise), cached once per distinct sequence."""
    scored_whole: str | None = None
    """What the loss scores as a whole (`preference pair`, `rated answer`); None: a loss per labelled token.
    Such losses take the whole output head (no chunked loss) and padded batches (examples laid end to end in
    one row would not be scored apart)."""
    load_model: Callable | None = None
    """What trains, from (model node, dtype, path, quantization=...) when not the causal LM
    (onestop.models.load_causal_lm): a reward model's score head on it (onestop.models.reward.load_reward_model)."""

    @property
    def one_row_inexact(self) -> str | None:
        """Why examples laid end to end in one row would not train exactly as padded ones, if they would not."""
        return f"stage={self.name} scores each {self.scored_whole} as a whole" if self.scored_whole else None


class TokenLoss:
    """Next-token cross-entropy over the labelled tokens, summed; the step's mean is taken over every labelled
    token of the optimizer step (onestop.training.module)."""

    def __init__(self, cfg: DictConfig, model: torch.nn.Module, reference: Reference | None = None):
        self.head_loss = head_loss(cfg.train, model)  # the train node's fast path for the output head

    def __call__(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> Terms:
        loss_sum, tokens = token_loss_sum(model, batch, self.head_loss)
        return Terms(loss_sum, tokens)


def pair_logps(
    model: torch.nn.Module, batch: dict[str, torch.Tensor], mean: bool = False
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Chosen and rejected answers' log-probabilities (summed, or per-token means), and their labelled token
    counts, from a batch of 2N rows: the N chosen answers, then the N rejected ones (onestop.data.batching)."""
    logps, lengths = sequence_logps_and_lengths(model, batch)
    if mean:
        logps = logps / lengths.clamp(min=1)
    n = logps.size(0) // 2
    return logps[:n], logps[n:], lengths[:n], lengths[n:]
