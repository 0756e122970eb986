"""Collating tokenized examples into padded batches: single answers, chosen/rejected preference pairs, or answers
rated desirable or not."""

import torch

from onestop.data.tokenize import IGNORE_INDEX


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


def pad_pairs(examples: list[dict], pad_id: int) -> dict[str, torch.Tensor]:
    """One batch of 2N rows: the N chosen answers, then the N rejected ones, right-padded."""
    rows = [{"input_ids": e[f"{side}_input_ids"], "labels": e[f"{side}_labels"]} for side in ("chosen", "rejected")
            for e in examples]  # fmt: skip
    return pad_batch(rows, pad_id)


def pad_rated(examples: list[dict], pad_id: int) -> dict[str, torch.Tensor]:
    """Answers rated desirable or not, right-padded, with `desirable` [N] (1 or 0). Preference pairs are rated
    answers too: each chosen answer desirable, each rejected one not (2N rows)."""
    if "chosen_input_ids" in examples[0]:
        examples = [
            {"input_ids": e[f"{side}_input_ids"], "labels": e[f"{side}_labels"], "desirable": [int(side == "chosen")]}
            for side in ("chosen", "rejected")
            for e in examples
        ]
    batch = pad_batch(examples, pad_id)
    batch["desirable"] = torch.tensor([e["desirable"][0] for e in examples], dtype=torch.long)
    return batch
