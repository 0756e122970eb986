"""Data stage: read records of any format, normalise, validate, tokenize with loss masks, cache, batch."""

from onestop.data.prepare import DataReport, PreparedData, prepare
from onestop.data.sft import SFTDataModule
from onestop.data.tokenize import IGNORE_INDEX, tokenize_conversation, tokenize_example

__all__ = [
    "IGNORE_INDEX",
    "DataReport",
    "PreparedData",
    "SFTDataModule",
    "prepare",
    "tokenize_conversation",
    "tokenize_example",
]
