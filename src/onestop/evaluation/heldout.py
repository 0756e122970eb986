"""Scoring a model on held-out conversations: token loss, greedy answers, the normalised answer and token F1
that the `qa` suite's metrics use, and the held-out questions as a `qa` suite file."""

import json
import re
import string
from collections import Counter
from pathlib import Path

import torch

from onestop.core.files import write_text_atomic
from onestop.evaluation.generation import generate_greedy, stop_token_ids
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


def generate_answers(
    model,
    tokenizer,
    prompts: list[list[dict]],
    max_new_tokens: int = 48,
    batch_size: int = 8,
    stop: list[int] | None = None,
) -> list[str]:
    """Greedy answers to chat prompts (message lists ending with the user's turn), ending at a token of `stop`
    (default: the EOS tokens, `stop_token_ids`); batched by length (`generate_greedy`)."""
    texts = [tokenizer.apply_chat_template(p, tokenize=False, add_generation_prompt=True) for p in prompts]
    tokens = generate_greedy(
        model,
        tokenizer,
        texts,
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
        stop_ids=stop or stop_token_ids(model, tokenizer),
    )
    return [tokenizer.decode(t, skip_special_tokens=True).strip() for t in tokens]


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


def heldout_questions(conversations: list[list[dict]], path: Path) -> str | None:
    """Write the held-out conversations as a `qa` suite file; return their system prompt, if any."""
    rows = [{"prompt": c[-2]["content"], "reference": c[-1]["content"]} for c in conversations]
    write_text_atomic(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    first = conversations[0]
    return first[0]["content"] if first[0]["role"] == "system" else None
