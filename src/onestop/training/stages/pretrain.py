"""stage=pretrain: (continued) pretraining on raw text; the loss is on every token."""

from onestop.training.stages.base import Stage, TokenLoss

STAGE = Stage(name="pretrain", layout="text", objective=TokenLoss)
