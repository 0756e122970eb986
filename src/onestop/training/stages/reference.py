"""The frozen reference of DPO and KTO: log-probabilities of each sequence under the model before training,
computed once per distinct sequence and kept for every later epoch."""

import contextlib
import copy
import hashlib

import torch

from onestop.losses import sequence_logps_and_lengths


class Reference:
    """For an adapter method, the policy itself with its adapter switched off (no second copy in memory); for
    full and freeze, a frozen copy of the base taken before the method applies (`frozen`)."""

    def __init__(self, frozen: torch.nn.Module | None = None):
        self.frozen = [frozen] if frozen is not None else None  # a list: never a submodule of the trained module
        self.cache: dict[bytes, float] = {}
        self.computed = 0  # sequences the reference scored; the rest came from the cache

    @classmethod
    def of(cls, model: torch.nn.Module, adapter: bool) -> "Reference":
        """The reference of `model` before its method applies: `adapter` methods switch their adapter off."""
        return cls(None if adapter else copy.deepcopy(model).eval().requires_grad_(False))

    def logps(self, policy: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Summed log-probability of each row's labelled tokens under the reference."""
        keys = [_row_key(ids, labels, mask) for ids, labels, mask in _rows(batch)]
        if not all(key in self.cache for key in keys):
            with torch.no_grad():
                values = self._score(policy, batch)
            self.cache.update(zip(keys, values.tolist(), strict=True))
            self.computed += len(keys)
            return values
        return torch.tensor([self.cache[key] for key in keys], device=batch["input_ids"].device)

    @contextlib.contextmanager
    def network(self, policy: torch.nn.Module):
        """The reference as a module to call, for a loss that needs more than summed log-probabilities (per-token
        ones: stage=grpo's KL); nothing is cached."""
        if self.frozen is not None:
            frozen = self.frozen[0]
            device = next(policy.parameters()).device
            if next(frozen.parameters()).device != device:
                frozen.to(device)
            yield frozen
            return
        disabled = policy.disable_adapter() if hasattr(policy, "disable_adapter") else None
        with disabled or contextlib.nullcontext():
            yield policy

    def _score(self, policy: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        if self.frozen is not None:
            frozen = self.frozen[0]
            if next(frozen.parameters()).device != batch["input_ids"].device:
                frozen.to(batch["input_ids"].device)
            return sequence_logps_and_lengths(frozen, batch)[0]
        disabled = policy.disable_adapter() if hasattr(policy, "disable_adapter") else None
        with disabled or contextlib.nullcontext():
            return sequence_logps_and_lengths(policy, batch)[0]


def _rows(batch: dict[str, torch.Tensor]):
    return zip(batch["input_ids"], batch["labels"], batch["attention_mask"], strict=True)


def _row_key(ids: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor) -> bytes:
    """A row's tokens and labels without its padding: the same sequence in any batch has the same key."""
    real = mask.bool()
    digest = hashlib.blake2b(ids[real].cpu().numpy().tobytes(), digest_size=16)  # 16 bytes, not the sequence
    digest.update(labels[real].cpu().numpy().tobytes())
    return digest.digest()
