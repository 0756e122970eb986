"""DeepSpeed ZeRO: the strategy `hardware=deepspeed_zero2|3` builds, on GPUs or (for tests) CPU processes.

ZeRO-2 shards gradients and optimizer state and keeps a full copy of the weights on every rank; ZeRO-3
shards the weights too, so they must be gathered before anything reads them outside the engine.
Checkpoints are DeepSpeed's own: a directory per checkpoint, one shard file per rank.
"""

# Lazy imports: deepspeed, lightning (inside the functions that need them).

import contextlib
import warnings
from pathlib import Path

import torch
from lightning.pytorch.strategies import DeepSpeedStrategy, StrategyRegistry

from onestop.core.errors import OnestopError
from onestop.core.files import staged_directory

# Lightning warns when a module overrides `configure_gradient_clipping` (ours does, for FSDP), saying the
# gradients will not be clipped. Under DeepSpeed they are: Lightning hands `gradient_clip_val` to
# DeepSpeed's config, and DeepSpeed clips by the global norm across shards itself.
warnings.filterwarnings("ignore", message="Since DeepSpeed handles gradient clipping internally")


def deepspeed_strategy(name: str, accelerator: str) -> DeepSpeedStrategy:
    """A Lightning DeepSpeed strategy by its registered name (`deepspeed_stage_2`, `deepspeed_stage_3_offload`...).

    Frozen weights stay out of checkpoints: for adapters a checkpoint holds the adapter and its optimizer
    state only, as under the other strategies, and `resume=` reloads the base from the model's own files.
    """
    known = sorted(n for n in StrategyRegistry.available_strategies() if n.startswith("deepspeed"))
    if name not in known:
        raise OnestopError(f"hardware.strategy={name}: not a DeepSpeed strategy; expected one of {', '.join(known)}")
    try:
        import deepspeed  # noqa: F401
    except ImportError:
        raise OnestopError(
            f"hardware.strategy={name}: DeepSpeed is not installed; pip install -e '.[deepspeed]'"
        ) from None
    init_params = dict(StrategyRegistry[name]["init_params"])
    strategy_class = CPUDeepSpeedStrategy if accelerator == "cpu" else AtomicDeepSpeedStrategy
    return strategy_class(exclude_frozen_parameters=True, **init_params)


class AtomicDeepSpeedStrategy(DeepSpeedStrategy):
    """DeepSpeed's checkpoint directory, written beside its target and renamed into place: whole or absent.

    DeepSpeed writes checkpoints itself (Lightning's checkpoint IO is bypassed), rank by rank into one
    directory; a crash mid-write would leave a directory `resume=auto` takes for a checkpoint.
    """

    def init_deepspeed(self) -> None:
        super().init_deepspeed()
        _leave_tied_frozen_weights_out(self.model)

    def save_checkpoint(self, checkpoint: dict, filepath, storage_options=None) -> None:
        target = Path(self.broadcast(str(filepath)))
        # Rank 0 owns the staging directory; every rank writes its shard into it, then rank 0 renames it.
        staged = staged_directory(target) if self.is_global_zero else contextlib.nullcontext()
        with staged as staging:
            staging = Path(self.broadcast(str(staging) if staging else None))
            super().save_checkpoint(checkpoint, staging, storage_options)
            self.barrier("checkpoint written")
        self.barrier("checkpoint in place")


def _leave_tied_frozen_weights_out(engine) -> None:
    """DeepSpeed leaves frozen weights out of checkpoints by parameter name, and misses the second name of a
    tied weight: every LoRA checkpoint of Gemma would carry its output head, the 168M-parameter embedding
    under another name. Every name of a frozen tensor is left out."""
    frozen = {name for name, p in engine.module.named_parameters(remove_duplicate=False) if not p.requires_grad}
    module_state_dict = engine.module_state_dict

    def trainable_state_dict(*args, **kwargs):
        state = module_state_dict(*args, **kwargs)
        if state is not None and kwargs.get("exclude_frozen_parameters"):
            for name in frozen & state.keys():
                del state[name]
        return state

    engine.module_state_dict = trainable_state_dict


class CPUDeepSpeedStrategy(AtomicDeepSpeedStrategy):
    """DeepSpeed ZeRO across CPU processes over gloo: `hardware=deepspeed_zero2_cpu|deepspeed_zero3_cpu`.

    Lightning offers DeepSpeed on CUDA only; DeepSpeed itself runs on CPUs (its CPU accelerator,
    gloo). Lightning's check is skipped, and each process is given a device index (its local rank),
    which DeepSpeed reads to place the process.
    """

    @property
    def root_device(self) -> torch.device:
        return torch.device("cpu", self.local_rank)

    def setup_environment(self) -> None:
        from lightning.pytorch.strategies import DDPStrategy

        DDPStrategy.setup_environment(self)  # DeepSpeedStrategy's version refuses anything but CUDA

    def setup_distributed(self) -> None:
        from lightning.fabric.utilities.seed import reset_seed

        # Lightning's version also checks that GPU indices match local ranks; CPU devices have none.
        reset_seed()
        self.set_world_ranks()
        self._init_deepspeed_distributed()


def is_zero(trainer) -> bool:
    return isinstance(trainer.strategy, DeepSpeedStrategy)


def is_zero3(trainer) -> bool:
    return is_zero(trainer) and trainer.strategy.zero_stage_3


@contextlib.contextmanager
def gathered_parameters(model: torch.nn.Module):
    """Within the block every rank's `model` holds its full ZeRO-3 weights (a collective: all ranks enter)."""
    import deepspeed

    with deepspeed.zero.GatheredParameters(list(model.parameters()), modifier_rank=None):
        yield


def held_elements(parameter: torch.nn.Parameter) -> int:
    """Elements of a parameter this rank holds: its ZeRO-3 partition, or the whole tensor."""
    partition = getattr(parameter, "ds_tensor", None)
    return partition.numel() if partition is not None else parameter.numel()
