"""Examples that share a row and still never see each other: padding-free batches and sequence packing.

A padding-free batch lays one micro-batch's examples end to end in a single row (the same examples as a padded
batch, without the padding); packing fills rows of `data.max_seq_len` tokens with as many examples as fit, so
a batch of rows holds many more examples than `data.batch_size`.

Each packed row carries position ids that restart at 0 for every example. Given position ids and no
attention mask, transformers builds a block-diagonal causal mask from them (`find_packed_sequence_indices`
in `transformers.masking_utils`), so attention never crosses an example boundary; the first token of
every example gets no label, so no example is trained to predict the next one's start. The loss of such a
row is therefore the loss of the same examples padded, with no padding.
"""

import random
from collections.abc import Sequence

import torch
from omegaconf import DictConfig

from onestop.core.errors import OnestopError
from onestop.data.media import media_inputs
from onestop.data.token_rows import TokenRows
from onestop.data.tokenize import IGNORE_INDEX
from onestop.models.processor import is_vision_language_type

# Architectures whose attention mask comes from transformers' masking utilities, which read packed position
# ids when no attention mask is given (FlashAttention-2 turns the same ids into variable-length sequences).
# Checkpoints running their own code (trust_remote_code) build their own masks and would attend across the
# examples of a row. A test checks that each family's modeling code still uses those utilities.
PACKED_POSITION_MODEL_TYPES = frozenset(
    {"qwen2", "qwen2_moe", "qwen3", "qwen3_moe", "llama", "mistral", "mixtral", "gemma", "gemma2", "gemma3",
     "gemma3_text", "glm", "glm4", "phi3", "olmo2"}
)  # fmt: skip


def inexact_reasons(cfg: DictConfig, model_type: str, stage_reason: str | None = None) -> list[str]:
    """Why examples laid end to end in one row would not train exactly as the same examples padded, if they would
    not: the stage scores whole sequences (`stage_reason`, from the training stage: preference pairs are scored
    per pair), virtual tokens would sit in front of a row's first example only, a stream cuts its own blocks, and
    an architecture that builds its own mask would attend across examples."""
    reasons = [stage_reason] if stage_reason else []
    if "num_virtual_tokens" in cfg.method:
        reasons.append(f"the virtual tokens of method={cfg.method.name} would precede only a row's first example")
    if cfg.data.streaming:
        reasons.append("data.streaming already fills every row from its text")
    if is_vision_language_type(model_type):
        reasons.append(f"model={cfg.model.name} ({model_type}) reads images, batched with their examples when padded")
    if cfg.model.trust_remote_code or model_type not in PACKED_POSITION_MODEL_TYPES:
        reasons.append(f"model={cfg.model.name} ({model_type}) builds its own attention mask, blind to packed rows")
    return reasons


def resolve_packing(cfg: DictConfig, model_type: str, stage_reason: str | None = None) -> bool:
    """Whether a training run packs examples into rows of `data.max_seq_len` tokens: `data.packing` as set, or
    for `auto`, with stage=pretrain only, where packing is exact.

    Packing changes what a recipe means: `data.batch_size` then counts rows, each holding many examples, so an
    epoch has far fewer optimizer steps and each step far more examples. Supervised stages therefore pack only
    when asked (`data.packing=true`); their default batches are padding-free instead (`resolve_padding_free`).
    `true` where packing is not exact stops with one line.
    """
    requested = cfg.data.packing
    if requested is False or (requested == "auto" and cfg.stage != "pretrain"):
        return False
    reasons = inexact_reasons(cfg, model_type, stage_reason)
    if requested is True and reasons:
        raise OnestopError(f"config key 'data.packing': cannot pack exactly: {reasons[0]}; set data.packing=false")
    return not reasons


def resolve_padding_free(
    cfg: DictConfig, model_type: str, packing: bool, stage_reason: str | None = None
) -> tuple[bool, str | None]:
    """Whether each micro-batch lays its `data.batch_size` examples end to end in one row, and the line to print
    once when `auto` falls back to padded batches.

    The same examples make each step as with padding, so steps per epoch, the loss and the gradients are those
    of padded batches (tested); only padding's compute and memory go. `true` where it is not exact stops with
    one line. Packed rows have almost no padding already: with packing, batches are packed rows.
    """
    requested = cfg.data.padding_free
    if requested is False or packing or (requested == "auto" and cfg.data.streaming):  # streamed blocks are full
        return False, None
    reasons = inexact_reasons(cfg, model_type, stage_reason)
    if requested is True and reasons:
        raise OnestopError(
            f"config key 'data.padding_free': cannot lay examples end to end exactly: {reasons[0]}; "
            "set data.padding_free=false"
        )
    if reasons:
        return False, f"padding-free batches: off, {reasons[0]}; batches are padded"
    return True, None


def pack_examples(examples: Sequence[dict], max_seq_len: int, seed: int) -> "PackedRows":
    """First-fit-decreasing packing into rows of at most `max_seq_len` tokens; deterministic for a seed.

    Only the plan (which examples share a row) is made here; a row's tokens are put together when it is read,
    so packing a million examples holds no second copy of them.
    """
    lengths = examples.example_lengths() if isinstance(examples, TokenRows) else [len(e["input_ids"]) for e in examples]
    order = list(range(len(lengths)))
    random.Random(seed).shuffle(order)  # ties in length are broken by the seed, not by file order
    order.sort(key=lambda i: -lengths[i])
    rows = first_fit(order, [int(length) for length in lengths], max_seq_len)
    random.Random(seed).shuffle(rows)
    return PackedRows(examples, rows)


def first_fit(order: list[int], lengths: list[int], capacity: int) -> list[list[int]]:
    """Each item of `order` goes into the first row with room for it, a new row when none has.

    A tree over the rows keeps the most room left under each node, so finding the first row that fits takes
    log(rows) steps, not a scan of every row: a million examples pack in seconds. Rows not yet opened count
    as empty, so the first of them is where a new row opens.
    """
    leaves = 1
    while leaves < max(len(order), 1):
        leaves *= 2
    room = [capacity] * (2 * leaves)
    rows: list[list[int]] = []
    for index in order:
        length = lengths[index]
        if room[1] >= length:
            node = 1
            while node < leaves:
                node = 2 * node if room[2 * node] >= length else 2 * node + 1
        else:  # longer than a whole row: it gets a row of its own, which nothing else will fit
            node = leaves + len(rows)
        slot = node - leaves
        if slot == len(rows):
            rows.append([])
        rows[slot].append(index)
        room[node] -= length
        node //= 2
        while node:
            room[node] = max(room[2 * node], room[2 * node + 1])
            node //= 2
    return rows


class PackedRows(Sequence):
    """Packed training rows: the examples of each row, joined when the row is read."""

    def __init__(self, examples: Sequence[dict], rows: list[list[int]]):
        self.examples, self.rows = examples, rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        return join_examples([self.examples[member] for member in self.rows[index]])


def join_examples(examples: Sequence[dict]) -> dict[str, list[int]]:
    """Examples end to end in one row: position ids restart at 0 for each, and each one's first token carries
    no label, so no example learns to predict the start of the next."""
    input_ids, labels, positions = [], [], []
    for example in examples:
        input_ids += example["input_ids"]
        labels += [IGNORE_INDEX, *example["labels"][1:]]
        positions += range(len(example["input_ids"]))
    return {"input_ids": input_ids, "labels": labels, "position_ids": positions}


def collate_padding_free(examples: list[dict], pad_id: int) -> dict[str, torch.Tensor]:
    """A micro-batch of examples as one row of [1, their tokens] with no padding at all (TRL's `padding_free`,
    transformers' DataCollatorWithFlattening): the same tokens, labels and attention as the padded batch."""
    return collate_packed([join_examples(examples)], pad_id)


def collate_packed(rows: list[dict], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad packed rows; the padding is one more (unlabelled) segment, so it attends only to itself."""
    width = max(len(r["input_ids"]) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
    positions = torch.arange(width).repeat(len(rows), 1)
    token_mask = torch.zeros((len(rows), width), dtype=torch.long)
    for row, packed in enumerate(rows):
        n = len(packed["input_ids"])
        ids[row, :n] = torch.tensor(packed["input_ids"])
        labels[row, :n] = torch.tensor(packed["labels"])
        positions[row, :n] = torch.tensor(packed["position_ids"])
        positions[row, n:] = torch.arange(width - n)
        token_mask[row, :n] = 1
    return {"input_ids": ids, "labels": labels, "position_ids": positions, "token_mask": token_mask}


def model_inputs(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """What the model's forward takes: a packed batch gives position ids and, on purpose, no attention mask."""
    if "position_ids" in batch:
        # transformers detects packing only without a KV cache; a model loaded for inference would make one.
        return {"input_ids": batch["input_ids"], "position_ids": batch["position_ids"], "use_cache": False}
    return {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"], **media_inputs(batch)}


def real_token_mask(batch: dict[str, torch.Tensor]) -> torch.Tensor:
    return batch["token_mask"] if "token_mask" in batch else batch["attention_mask"]
