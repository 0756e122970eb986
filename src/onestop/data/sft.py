"""Supervised fine-tuning data: chat-formatted, tokenized, loss only on the assistant's tokens."""

import random
from dataclasses import dataclass

import lightning as L
import torch
from omegaconf import DictConfig
from torch.utils.data import DataLoader

from onestop.data.alpaca import alpaca_to_messages
from onestop.data.records import read_records
from onestop.errors import OnestopError

IGNORE_INDEX = -100
FORMATS = {"alpaca": alpaca_to_messages}


def tokenize_conversation(tokenizer, messages: list[dict], max_seq_len: int) -> dict:
    """Token ids of a conversation in the model's chat template, and labels that train only the answers.

    Every assistant turn is located by rendering the conversation up to it (with the generation prompt)
    and up to its end: the characters in between are the answer plus the template's end-of-turn marker,
    so the model learns to stop. Tokens outside those spans get label -100.

    Returns:
        `input_ids`, `labels` (lists of ints) and `truncated` (bool).
    """
    text = tokenizer.apply_chat_template(messages, tokenize=False)
    spans = []
    for index, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        before = tokenizer.apply_chat_template(messages[:index], tokenize=False, add_generation_prompt=True)
        through = tokenizer.apply_chat_template(messages[: index + 1], tokenize=False)
        if not (text.startswith(through) and through.startswith(before)):
            raise OnestopError(
                "the chat template does not render conversations prefix by prefix; set model.chat_template"
            )
        spans.append((len(before), len(through)))
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    labels = [
        token if any(start <= begin < end for start, end in spans) else IGNORE_INDEX
        for token, (begin, _) in zip(encoded["input_ids"], encoded["offset_mapping"], strict=True)
    ]
    input_ids = encoded["input_ids"]
    truncated = len(input_ids) > max_seq_len
    return {"input_ids": input_ids[:max_seq_len], "labels": labels[:max_seq_len], "truncated": truncated}


@dataclass
class DataReport:
    """What happened to every record; printed before training and saved in metrics.json."""

    train_records: int = 0
    val_records: int = 0
    truncated: int = 0
    dropped_no_answer_left: int = 0
    train_tokens: int = 0
    max_len: int = 0

    def summary(self) -> str:
        line = (
            f"data: {self.train_records} train / {self.val_records} validation conversations, "
            f"{self.train_tokens} train tokens, longest {self.max_len}"
        )
        if self.truncated or self.dropped_no_answer_left:
            line += (
                f"; {self.truncated} truncated to max_seq_len, "
                f"{self.dropped_no_answer_left} dropped (no answer token left after truncation)"
            )
        return line


def pad_batch(examples: list[dict], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad to the longest example in the batch (not to max_seq_len: short data trains fast)."""
    width = max(len(e["input_ids"]) for e in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    for row, example in enumerate(examples):
        n = len(example["input_ids"])
        ids[row, :n] = torch.tensor(example["input_ids"])
        labels[row, :n] = torch.tensor(example["labels"])
        mask[row, :n] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


class SFTDataModule(L.LightningDataModule):
    """Train and validation conversations from a `data` config node, tokenized for one tokenizer."""

    def __init__(self, data_cfg: DictConfig, tokenizer, seed: int = 42):
        super().__init__()
        if data_cfg.format not in FORMATS:
            raise OnestopError(
                f"config key 'data.format': unknown format {data_cfg.format!r}; known: {', '.join(FORMATS)}"
            )
        self.cfg = data_cfg
        self.tokenizer = tokenizer
        self.seed = seed
        self.report = DataReport()
        self.train_set: list[dict] = []
        self.val_set: list[dict] = []
        self.val_conversations: list[list[dict]] = []

    def setup(self, stage: str | None = None) -> None:
        if self.train_set:
            return
        to_messages = FORMATS[self.cfg.format]
        train = [to_messages(r, self.cfg.system_prompt) for r in read_records(self.cfg.path)]
        if self.cfg.val_path:
            val = [to_messages(r, self.cfg.system_prompt) for r in read_records(self.cfg.val_path)]
        else:
            random.Random(self.seed).shuffle(train)
            n_val = round(len(train) * self.cfg.val_ratio)
            val, train = train[:n_val], train[n_val:]
        if not train:
            raise OnestopError(f"{self.cfg.path}: no training records left after the validation split")
        self.val_conversations = val
        self.train_set = self._tokenize(train)
        self.val_set = self._tokenize(val)
        self.report.train_records, self.report.val_records = len(self.train_set), len(self.val_set)
        self.report.train_tokens = sum(len(e["input_ids"]) for e in self.train_set)

    def _tokenize(self, conversations: list[list[dict]]) -> list[dict]:
        kept = []
        for messages in conversations:
            example = tokenize_conversation(self.tokenizer, messages, self.cfg.max_seq_len)
            self.report.truncated += example["truncated"]
            if all(label == IGNORE_INDEX for label in example["labels"]):
                self.report.dropped_no_answer_left += 1
                continue
            self.report.max_len = max(self.report.max_len, len(example["input_ids"]))
            kept.append(example)
        return kept

    def collate(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        return pad_batch(examples, self.tokenizer.pad_token_id)

    def train_dataloader(self) -> DataLoader:
        generator = torch.Generator().manual_seed(self.seed)
        return DataLoader(
            self.train_set,
            batch_size=self.cfg.batch_size,
            shuffle=True,
            generator=generator,
            collate_fn=self.collate,
            num_workers=self.cfg.num_workers,
        )

    def val_dataloader(self) -> DataLoader:
        return DataLoader(
            self.val_set,
            batch_size=self.cfg.batch_size,
            collate_fn=self.collate,
            num_workers=self.cfg.num_workers,
        )
