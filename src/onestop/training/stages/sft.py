"""stage=sft: supervised fine-tuning; the loss is the answers' next-token cross-entropy."""

from onestop.training.stages.base import Stage, TokenLoss

STAGE = Stage(name="sft", layout="tokens", objective=TokenLoss)
