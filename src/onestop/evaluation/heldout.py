"""Scoring a model on held-out conversations: token loss, greedy answers, exact match and token F1, and
the held-out questions as a `qa` suite file."""

import json
import re
import string
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import torch

from onestop.core.files import write_text_atomic
from onestop.losses import token_loss_sum


@torch.no_grad()
def heldout_loss(model, dataloader) -> float:
    """Mean next-token loss over the answer tokens of every batch (token-weighted, not batch-weighted)."""
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for batch in dataloader:
        batch = {k: v.to(model.device) for k, v in batch.items()}
        loss_sum, tokens = token_loss_sum(model, batch)
        total, count = total + float(loss_sum), count + tokens
    model.train(was_training)
    return total / max(count, 1)


def stop_token_ids(model, tokenizer) -> list[int]:
    """Every token that ends an answer: the generation config's EOS ids and the tokenizer's."""
    configured = model.generation_config.eos_token_id
    ids = set(configured if isinstance(configured, list) else [configured]) | {tokenizer.eos_token_id}
    return sorted(i for i in ids if i is not None)


@torch.no_grad()
def generate_answers(
    model,
    tokenizer,
    prompts: list[list[dict]],
    max_new_tokens: int = 48,
    batch_size: int = 8,
    stop: list[int] | None = None,
) -> list[str]:
    """Greedy answers to chat prompts (message lists ending with the user's turn), ending at a token of `stop`
    (default: the EOS tokens, `stop_token_ids`)."""
    was_training, use_cache = model.training, model.config.use_cache
    model.eval()
    model.config.use_cache = True
    side, tokenizer.padding_side = tokenizer.padding_side, "left"
    answers = []
    try:
        for start in range(0, len(prompts), batch_size):
            texts = [
                tokenizer.apply_chat_template(p, tokenize=False, add_generation_prompt=True)
                for p in prompts[start : start + batch_size]
            ]
            encoded = tokenizer(texts, add_special_tokens=False, padding=True, return_tensors="pt").to(model.device)
            output = model.generate(
                **encoded,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                eos_token_id=stop or stop_token_ids(model, tokenizer),
                pad_token_id=tokenizer.pad_token_id,
            )
            new_tokens = output[:, encoded["input_ids"].shape[1] :]
            answers += [t.strip() for t in tokenizer.batch_decode(new_tokens, skip_special_tokens=True)]
    finally:
        tokenizer.padding_side = side
        model.config.use_cache = use_cache
        model.train(was_training)
    return answers


def normalize_answer(text: str) -> str:
    """Lowercase, drop punctuation and backticks, collapse whitespace."""
    text = text.lower().replace("`", "")
    text = "".join(ch if ch not in string.punctuation or ch in "-_=/." else " " for ch in text)
    return re.sub(r"\s+", " ", text.replace(". ", " ")).strip(" .")


def token_f1(prediction: str, reference: str) -> float:
    """Harmonic mean of token precision and recall after normalisation (SQuAD-style)."""
    pred, ref = normalize_answer(prediction).split(), normalize_answer(reference).split()
    common = sum((Counter(pred) & Counter(ref)).values())
    if not pred or not ref or not common:
        return float(pred == ref)
    precision, recall = common / len(pred), common / len(ref)
    return 2 * precision * recall / (precision + recall)


@dataclass
class AnswerScores:
    exact_match: float
    """Fraction of answers equal to the reference after normalisation."""
    token_f1: float
    """Mean token F1 against the reference."""


def score_answers(predictions: list[str], references: list[str]) -> AnswerScores:
    n = max(len(references), 1)
    exact = sum(normalize_answer(p) == normalize_answer(r) for p, r in zip(predictions, references, strict=True))
    f1 = sum(token_f1(p, r) for p, r in zip(predictions, references, strict=True))
    return AnswerScores(exact_match=exact / n, token_f1=f1 / n)


def heldout_questions(conversations: list[list[dict]], path: Path) -> str | None:
    """Write the held-out conversations as a `qa` suite file; return their system prompt, if any."""
    rows = [{"prompt": c[-2]["content"], "reference": c[-1]["content"]} for c in conversations]
    write_text_atomic(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    first = conversations[0]
    return first[0]["content"] if first[0]["role"] == "system" else None
