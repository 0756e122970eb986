"""Turn the `hardware` config node into Lightning Trainer arguments, resolving `auto`."""

import os

import torch
from omegaconf import DictConfig

from onestop.core.errors import OnestopError
from onestop.methods.freeze import decoder_layers
from onestop.models.precision import (
    cpu_has_native_bf16,
    gpu_has_native_bf16,
    keep_fp32_master_weights,
    without_bf16,
)
from onestop.training.rendezvous import TimedDDPStrategy
from onestop.training.sharding import fsdp_strategy
from onestop.training.zero import deepspeed_strategy


def trainer_hardware(hardware: DictConfig) -> dict:
    """`accelerator`, `devices` and `precision` for `lightning.Trainer`."""
    has_gpu = torch.cuda.is_available()
    strategy = str(hardware.strategy)
    if strategy.startswith("deepspeed") and hardware.accelerator != "cpu" and not has_gpu:
        stage = "zero3" if "stage_3" in strategy else "zero2"
        raise OnestopError(
            f"hardware.strategy={strategy}: no CUDA GPU is visible for DeepSpeed; on CPU use "
            f"hardware=deepspeed_{stage}_cpu"
        )
    if strategy.startswith("fsdp") and hardware.accelerator != "cpu" and not has_gpu:
        raise OnestopError(
            f"hardware.strategy={strategy}: no CUDA GPU is visible for FSDP; on CPU use hardware=fsdp_cpu"
        )
    if hardware.accelerator == "gpu" and not has_gpu:
        raise OnestopError("hardware=gpu: no CUDA GPU is visible; use hardware=cpu or hardware=auto")
    return {
        "accelerator": hardware.accelerator,
        "devices": hardware.devices,
        "num_nodes": hardware.num_nodes,
        "strategy": hardware.strategy,
        "precision": resolve_precision(hardware),
    }


def resolve_precision(hardware: DictConfig) -> str:
    """The precision the run trains in: `auto` resolved for the device; on a GPU without native bf16 (a T4) a
    bf16 precision becomes fp16 mixed precision, which `invoke estimate` shows for such a GPU too."""
    precision = str(hardware.precision)
    on_gpu = torch.cuda.is_available() and hardware.accelerator != "cpu"
    if precision == "auto":
        if on_gpu:
            return "bf16-mixed" if gpu_has_native_bf16() else "16-mixed"
        return "bf16-mixed" if cpu_has_native_bf16() else "32-true"
    if on_gpu and not gpu_has_native_bf16():
        return without_bf16(precision)
    return precision


def share_cores(hardware: DictConfig) -> None:
    """Intra-op threads for CPU processes training side by side on this machine: the cores this process may run
    on (os.sched_getaffinity, which a container's cpuset narrows and os.cpu_count, what Lightning divides, does
    not), shared among them. One process keeps torch's own choice (one thread per core); OMP_NUM_THREADS wins."""
    processes = hardware.devices if isinstance(hardware.devices, int) else 1
    if hardware.accelerator != "cpu" or processes < 2 or "OMP_NUM_THREADS" in os.environ:
        return
    threads = max(1, len(os.sched_getaffinity(0)) // processes)
    os.environ["OMP_NUM_THREADS"] = str(threads)  # the ranks Lightning starts read it; so does its own check
    torch.set_num_threads(threads)


def shards_weights(hardware: DictConfig) -> bool:
    """Whether the strategy leaves each rank only part of the weights (FSDP, DeepSpeed ZeRO-3)."""
    strategy = str(hardware.strategy)
    return strategy == "fsdp" or strategy.startswith("deepspeed_stage_3")


def build_strategy(hardware: DictConfig, model):
    """The Lightning strategy; FSDP wraps (and, with gradient checkpointing, recomputes) each decoder layer. DDP and
    FSDP meet the other processes within `hardware.rendezvous_timeout_s` (see `rendezvous.py`)."""
    strategy = str(hardware.strategy)
    if strategy.startswith("deepspeed"):
        return deepspeed_strategy(strategy, hardware.accelerator)
    if strategy == "ddp":
        return TimedDDPStrategy(rendezvous_timeout_s=hardware.rendezvous_timeout_s)
    if strategy != "fsdp":
        return strategy

    layer_types = {type(decoder_layers(model)[0])}
    return fsdp_strategy(
        layer_types, hardware.accelerator, hardware.gradient_checkpointing, hardware.rendezvous_timeout_s
    )


def prepare_model_for_hardware(model, hardware: DictConfig):
    """fp32 master weights for what trains under bf16-mixed (`keep_fp32_master_weights`), and gradient
    checkpointing, as the hardware node asks."""
    keep_fp32_master_weights(model, resolve_precision(hardware), str(hardware.strategy))
    if hardware.gradient_checkpointing and hardware.strategy != "fsdp":
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if hasattr(model, "enable_input_require_grads"):
            model.enable_input_require_grads()  # adapters on a frozen base still need grads at the input
    return model
