"""Optimizer-step windows: every micro-batch of one optimizer step learns how many labelled tokens the
whole step holds.

A step's loss is the mean over all of its labelled tokens, across gradient accumulation and across ranks
(the gradient-accumulation fix transformers made in 2024). Dividing each micro-batch by its own token
count instead would weight a token in a short-answer batch more than one in a long-answer batch, so
`data.batch_size=8` would train differently from `batch_size=2` with `accumulate_grad_batches=4`, and
two processes differently from one. The loader reads ahead one window of micro-batches, counts their
labelled tokens and hands the count to each of them; training sums it over ranks.
"""

from collections.abc import Callable, Iterator
from itertools import islice

import torch
from torch.utils.data import DataLoader

from onestop.data.tokenize import IGNORE_INDEX

STEP_TOKENS = "step_loss_tokens"


def loss_tokens(batch: dict[str, torch.Tensor]) -> int:
    """Labelled next-token targets in a batch: what its summed loss is a sum over."""
    return int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())


class StepWindowLoader(DataLoader):
    """A DataLoader whose batches carry `step_loss_tokens`: the labelled tokens of this rank's micro-batches
    in the same optimizer step.

    Windows start where Lightning's do: every `accumulate` batches from the start of the epoch, the last
    one possibly shorter. `batches_done` tells, when iteration starts, how far into the epoch a resumed run
    begins (checkpoints fall on step boundaries, so it is a whole number of windows).
    """

    def __init__(self, *args, accumulate: int = 1, batches_done: Callable[[], int] = lambda: 0, **kwargs):
        super().__init__(*args, **kwargs)
        self.accumulate = max(int(accumulate), 1)
        self.batches_done = batches_done

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        position = self.batches_done()
        batches = super().__iter__()
        while window := list(islice(batches, self.accumulate - position % self.accumulate)):
            total = torch.tensor(sum(loss_tokens(batch) for batch in window), dtype=torch.float32)
            for batch in window:
                batch[STEP_TOKENS] = total
                yield batch
            position += len(window)
