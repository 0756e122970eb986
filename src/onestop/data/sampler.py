"""The training order: shuffled by (seed, epoch), sharded across ranks, able to start mid-epoch (exact resume)."""

import torch
from torch.utils.data import Sampler


class ResumableSampler(Sampler[int]):
    """A shuffled order fixed by (seed, epoch), sharded across ranks, that can start mid-epoch.

    Lightning calls `set_epoch` before each epoch's iteration; `resume_at = (epoch, batches_done)`,
    set from a checkpoint, makes the first iteration of that epoch skip the batches already trained on.
    """

    def __init__(self, size: int, batch_size: int, seed: int, rank: int = 0, world_size: int = 1, resume_at=None):
        self.size, self.batch_size, self.seed = size, batch_size, seed
        self.rank, self.world_size = rank, world_size
        self.epoch = 0
        self.resume_at = resume_at

    @classmethod
    def for_trainer(cls, size: int, batch_size: int, seed: int, trainer, resume_at=None) -> "ResumableSampler":
        """The sampler of this process's rank of `trainer` (rank 0 of 1 without one)."""
        rank, world_size = (trainer.global_rank, trainer.world_size) if trainer else (0, 1)
        return cls(size, batch_size, seed, rank=rank, world_size=world_size, resume_at=resume_at)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _order(self) -> list[int]:
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        order = torch.randperm(self.size, generator=generator).tolist()
        if self.world_size > 1:
            order = order[: len(order) - len(order) % self.world_size][self.rank :: self.world_size]
        return order

    def __iter__(self):
        order = self._order()
        if self.resume_at is not None:
            epoch, batches_done = self.resume_at
            self.resume_at = None
            if epoch == self.epoch:
                order = order[batches_done * self.batch_size :]
        return iter(order)

    def __len__(self) -> int:
        return len(self._order())
