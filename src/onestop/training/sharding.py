"""Fully sharded training (FSDP): the strategy `hardware=fsdp` builds, and reading weights back out of shards.

Under FSDP (and DeepSpeed ZeRO-3, see `zero.py`) no rank holds the whole model: after training, every
rank takes part in gathering the full weights before anything is exported. Under FSDP parameter names
also carry the wrappers' components that a checkpoint's clean names do not.
"""

# Lazy imports: torch (inside the functions that need them).

import contextlib

import torch
from lightning.pytorch.strategies import FSDPStrategy
from lightning.pytorch.strategies import fsdp as lightning_fsdp

from onestop.training.rendezvous import BoundedRendezvous
from onestop.training.zero import gathered_parameters, held_elements, is_zero3

# The attribute under which FSDP and activation checkpointing keep the module they wrap: one more
# component in the names of everything inside it.
_WRAPPED_MODULE_ATTRIBUTES = ("_fsdp_wrapped_module", "_checkpoint_wrapped_module")


def clean_name(name: str) -> str:
    """A parameter name as the unwrapped model (and a full state dict) spells it."""
    for attribute in _WRAPPED_MODULE_ATTRIBUTES:
        name = name.replace(f"{attribute}.", "")
    return name


def _innermost(module: torch.nn.Module) -> torch.nn.Module:
    while True:
        inner = next((module._modules[a] for a in _WRAPPED_MODULE_ATTRIBUTES if a in module._modules), None)
        if inner is None:
            return module
        module = inner


def fsdp_strategy(
    layer_types: set[type], accelerator: str, activation_checkpointing: bool, rendezvous_timeout_s: float
) -> FSDPStrategy:
    """One FSDP unit per decoder layer; full (not sharded) checkpoints, so `resume=` and exports read one file."""
    strategy_class = CPUFSDPStrategy if accelerator == "cpu" else ShardedStrategy
    strategy = strategy_class(
        auto_wrap_policy=layer_types,
        activation_checkpointing_policy=layer_types if activation_checkpointing else None,
        state_dict_type="full",
        use_orig_params=True,  # adapters: frozen and trainable weights share the flat parameters
    )
    strategy.rendezvous_timeout_s = rendezvous_timeout_s
    return strategy


@contextlib.contextmanager
def _gather_without_offload():
    """Lightning gathers full state dicts with `offload_to_cpu=True`; on shards that already live on the CPU
    that copy-and-free crashes the process (torch 2.13, gloo), so on a CPU they are gathered in place."""
    from torch.distributed.fsdp import FullOptimStateDictConfig, FullStateDictConfig, StateDictType
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

    def in_place(module, world_size: int, rank0_only: bool = True):
        return FSDP.state_dict_type(
            module=module,
            state_dict_type=StateDictType.FULL_STATE_DICT,
            state_dict_config=FullStateDictConfig(offload_to_cpu=False, rank0_only=rank0_only),
            optim_state_dict_config=FullOptimStateDictConfig(offload_to_cpu=False, rank0_only=rank0_only),
        )

    original = lightning_fsdp._get_full_state_dict_context
    lightning_fsdp._get_full_state_dict_context = in_place
    try:
        yield
    finally:
        lightning_fsdp._get_full_state_dict_context = original


class ShardedStrategy(BoundedRendezvous, FSDPStrategy):
    """Lightning's FSDP strategy, wrapping the module once per run, meeting the other processes within
    `rendezvous_timeout_s` (`BoundedRendezvous`).

    `trainer.validate` after `trainer.fit` sets the strategy up again; Lightning would then see the
    already-wrapped decoder layers and skip the root wrapper, leaving the embeddings as empty shard views.
    The root wrapper of the first setup is kept and handed back instead.
    """

    _root = None

    def _setup_model(self, model: torch.nn.Module) -> torch.nn.Module:
        if self._root is None or self._root.module is not model:
            self._root = self._wrap(model)
        return self._root

    def _wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        return super()._setup_model(model)


class CPUFSDPStrategy(ShardedStrategy):
    """FSDP across CPU processes over gloo: `hardware=fsdp_cpu`, the sharded code path without GPUs.

    Lightning offers FSDP on CUDA only (it checks the strategy's exact class, so a subclass passes);
    on a CPU, FSDP must be given its device explicitly and full state dicts are gathered in place.
    """

    def _wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        from torch.distributed.fsdp import FullyShardedDataParallel

        wrapped = FullyShardedDataParallel(
            module=model,
            cpu_offload=self.cpu_offload,
            mixed_precision=self.mixed_precision_config,
            sharding_strategy=self.sharding_strategy,
            device_id=torch.device("cpu"),
            **self.kwargs,
        )
        lightning_fsdp._setup_activation_checkpointing(wrapped, self._activation_checkpointing_kwargs)
        return wrapped

    def lightning_module_state_dict(self) -> dict:
        with _gather_without_offload():
            return super().lightning_module_state_dict()

    def optimizer_state(self, optimizer) -> dict:
        with _gather_without_offload():
            return super().optimizer_state(optimizer)

    def load_checkpoint(self, checkpoint_path, weights_only=None) -> dict:
        with _gather_without_offload():
            return super().load_checkpoint(checkpoint_path, weights_only=weights_only)


def is_sharded(trainer) -> bool:
    """Whether FSDP trains: gradients are then clipped, and weights gathered, through FSDP's wrapper."""
    return isinstance(trainer.strategy, FSDPStrategy)


def weights_sharded(trainer) -> bool:
    """Whether each rank holds only part of the weights (FSDP, ZeRO-3), rather than a replica."""
    return is_sharded(trainer) or is_zero3(trainer)


@contextlib.contextmanager
def full_parameters(trainer, model: torch.nn.Module):
    """Within the block, rank 0's `model` holds its full, unwrapped weights, so `save_pretrained` works as usual.

    With sharded weights every rank must enter (gathering is a collective). Under FSDP the other ranks
    hold nothing useful, and FSDP and activation-checkpoint wrappers are lifted out of the module tree
    meanwhile, because peft finds adapter weights by module name and the wrappers add components to
    those names. Under ZeRO-3 every rank holds the full weights in the block. Otherwise it changes nothing.
    """
    if is_zero3(trainer):
        with gathered_parameters(model):
            yield
        return
    if not is_sharded(trainer):
        yield
        return
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

    on_gpu = trainer.strategy.root_device.type == "cuda"  # on a CPU, offloading crashes (see above)
    with FSDP.summon_full_params(trainer.strategy.model, writeback=False, rank0_only=True, offload_to_cpu=on_gpu):
        lifted = _lift_wrappers(model)
        try:
            yield
        finally:
            for parent, name, wrapper in reversed(lifted):
                setattr(parent, name, wrapper)


def _lift_wrappers(model: torch.nn.Module) -> list[tuple[torch.nn.Module, str, torch.nn.Module]]:
    """Put each wrapped module where its wrapper was; returns (parent, name, wrapper) to put the wrappers back."""
    lifted = []
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            inner = _innermost(child)
            if inner is not child:
                lifted.append((parent, name, child))
                setattr(parent, name, inner)
    return lifted


def parameters_per_rank(trainer, model: torch.nn.Module) -> list[int]:
    """How many parameter elements each rank holds: all of them under DDP and ZeRO-2, about 1/world_size
    under FSDP and ZeRO-3."""
    local = torch.tensor(sum(held_elements(p) for p in model.parameters()), device=trainer.strategy.root_device)
    return [int(n) for n in trainer.strategy.all_gather(local).reshape(-1)]
