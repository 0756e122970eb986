"""Prompts for online RL (stage=grpo, data=prompts): each record a `prompt` (text, or a message list ending
with the user) or `messages`, plus any other fields (`answer`, ...) that travel to the reward functions.

    {"prompt": "What is 6 * 7?", "answer": "42"}
    {"messages": [{"role": "user", "content": "Capital of France? One word."}], "answer": "Paris"}

The prompt is rendered with the model's chat template and its generation prompt, as served; batches hold the
prompts' tokens padded on the left (where generation continues), their text and the other fields.
"""

import hashlib
import json
from pathlib import Path

import lightning as L
import torch
from omegaconf import DictConfig
from torch.utils.data import DataLoader

from onestop.core.errors import OnestopError
from onestop.data.prepare import DataReport
from onestop.data.records import read_records
from onestop.data.sampler import ResumableSampler
from onestop.data.tokenize import render

PROMPT_FIELDS = ("prompt", "messages")


def prompt_messages(fields: dict, where: str) -> tuple[list[dict], dict]:
    """The conversation to continue and the record's other fields."""
    key = next((k for k in PROMPT_FIELDS if k in fields), None)
    if key is None:
        raise OnestopError(f"{where}: data=prompts needs a 'prompt' or 'messages' field; got {', '.join(fields)}")
    value = fields[key]
    messages = [{"role": "user", "content": value}] if isinstance(value, str) else list(value)
    if not messages or messages[-1].get("role") != "user":
        raise OnestopError(f"{where}: the prompt's messages must end with a user turn")
    return messages, {k: v for k, v in fields.items() if k not in PROMPT_FIELDS}


class PromptDataModule(L.LightningDataModule):
    """Training prompts of a `data` node (data.path: one file or a hub id); no validation split (a run's reward
    on its own samples is what it logs)."""

    def __init__(self, data_cfg: DictConfig, tokenizer, seed: int = 42):
        super().__init__()
        self.cfg, self.tokenizer, self.seed = data_cfg, tokenizer, seed
        self.report = DataReport()
        self.train_set: list[dict] = []
        self.val_set: list[dict] = []
        self.prepared = None  # nothing is prepared into the cache: prompts are tokenized as read
        self.sampler: ResumableSampler | None = None
        self.resume_at: tuple[int, int] | None = None

    def setup(self, stage: str | None = None) -> None:
        if self.train_set:
            return
        if self.cfg.format != "prompts":
            raise OnestopError(f"stage=grpo: needs prompts (data=prompts); got data.format={self.cfg.format}")
        records = read_records(self.cfg.path)
        digest = hashlib.blake2b(digest_size=16)
        lengths = []
        for record in records:
            messages, fields = prompt_messages(record.fields, record.where)
            text = render(self.tokenizer, messages, add_generation_prompt=True)
            ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
            digest.update(json.dumps(record.fields, sort_keys=True, default=str).encode())
            if len(ids) > self.cfg.max_seq_len:
                self.report.drop("prompt longer than data.max_seq_len")
                continue
            self.train_set.append({"prompt": text, "input_ids": ids, "fields": fields})
            lengths.append(len(ids))
        if not self.train_set:
            raise OnestopError(f"config key 'data.path': no usable prompts in {self.cfg.path}")
        ordered = sorted(lengths)
        self.report.sources = [{"path": str(self.cfg.path), "format": "prompts", "records": len(records)}]
        self.report.records_read = len(records)
        self.report.train_records = len(self.train_set)
        self.report.train_tokens = sum(lengths)
        self.report.tokens_p50 = ordered[len(ordered) // 2]
        self.report.tokens_p95 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.95))]
        self.report.max_len = ordered[-1]
        self.report.max_seq_len = int(self.cfg.max_seq_len)
        self.report.fingerprint = digest.hexdigest()
        print(f"data=prompts: {len(self.train_set)} prompts from {Path(str(self.cfg.path)).name}", flush=True)

    def collate(self, examples: list[dict]) -> dict:
        """Prompt tokens padded on the left, with their text and other fields."""
        longest = max(len(e["input_ids"]) for e in examples)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        ids = torch.full((len(examples), longest), pad, dtype=torch.long)
        mask = torch.zeros((len(examples), longest), dtype=torch.long)
        for row, example in enumerate(examples):
            n = len(example["input_ids"])
            ids[row, longest - n :] = torch.tensor(example["input_ids"])
            mask[row, longest - n :] = 1
        return {
            "input_ids": ids,
            "attention_mask": mask,
            "prompts": [e["prompt"] for e in examples],
            "fields": [e["fields"] for e in examples],
        }

    def resume_from(self, epoch: int, batches_done: int) -> None:
        self.resume_at = (epoch, batches_done)
        if self.sampler is not None:
            self.sampler.resume_at = self.resume_at

    def train_dataloader(self) -> DataLoader:
        self.sampler = ResumableSampler.for_trainer(
            len(self.train_set), self.cfg.batch_size, self.seed, self.trainer, self.resume_at
        )
        return DataLoader(
            self.train_set,
            batch_size=self.cfg.batch_size,
            sampler=self.sampler,
            collate_fn=self.collate,
            generator=torch.Generator().manual_seed(self.seed),
        )
