"""Data stage: read records, turn them into conversations, tokenize with loss masks, batch."""

from onestop.data.sft import SFTDataModule, tokenize_conversation

__all__ = ["SFTDataModule", "tokenize_conversation"]
