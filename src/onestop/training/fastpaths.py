"""The `train` node's fast paths: a memory-light loss, Liger's kernels, torch.compile.

Each is a switch that changes speed or memory, never the loss (tests compare each with the plain path).
"""

# Lazy imports: liger_kernel (inside the functions that need it).

import importlib.util

import torch
from omegaconf import DictConfig

from onestop.core.errors import OnestopError
from onestop.losses import ChunkedHeadLoss, CutCrossEntropyHeadLoss, HeadLoss, LigerHeadLoss, has_plain_head

# (switch, the package it needs, the optional dependency group that installs it)
GPU_SWITCHES = (("liger_kernels", "liger_kernel", "liger"), ("cut_cross_entropy", "cut_cross_entropy", "cce"))


def on_cuda(hardware: DictConfig) -> bool:
    return torch.cuda.is_available() and hardware.accelerator != "cpu"


def check_gpu_switches(train_cfg: DictConfig, hardware: DictConfig) -> None:
    """A GPU-only switch on a machine or config without CUDA, or without its package, stops here in one line."""
    wanted = [(key, package, extra) for key, package, extra in GPU_SWITCHES if train_cfg[key]]
    for key, package, extra in wanted:
        if not on_cuda(hardware):
            where = "hardware.accelerator=cpu" if hardware.accelerator == "cpu" else "no CUDA GPU is visible"
            raise OnestopError(f"config key 'train.{key}': runs on a CUDA GPU only, and {where}; set train.{key}=false")
        if importlib.util.find_spec(package) is None:
            raise OnestopError(f"config key 'train.{key}': {package} is not installed; pip install -e \".[{extra}]\"")


def apply_liger_kernels(model, train_cfg: DictConfig):
    """Liger's RMSNorm, RoPE and SwiGLU kernels patched into the loaded model (before any adapter wraps it)."""
    if not train_cfg.liger_kernels:
        return model
    from liger_kernel.transformers import _apply_liger_kernel_to_instance
    from liger_kernel.transformers.monkey_patch import MODEL_TYPE_TO_APPLY_LIGER_FN

    family = model.config.model_type
    if family not in MODEL_TYPE_TO_APPLY_LIGER_FN:
        raise OnestopError(
            f"config key 'train.liger_kernels': Liger has no kernels for {family} models; set train.liger_kernels=false"
        )
    # The loss is onestop's own (token_loss_sum); Liger's fused cross-entropy enters it as the head loss.
    _apply_liger_kernel_to_instance(
        model=model, rope=True, rms_norm=True, swiglu=True, cross_entropy=False, fused_linear_cross_entropy=False
    )
    return model


def head_loss(train_cfg: DictConfig, model) -> HeadLoss | None:
    """The head loss the `train` node asks for: Liger's or cut-cross-entropy's fused kernel, or chunks of
    `train.loss_chunk_size` positions; None computes the head whole."""
    fused = train_cfg.liger_kernels or train_cfg.cut_cross_entropy
    if not (fused or train_cfg.loss_chunk_size):
        return None
    if not has_plain_head(model):
        if train_cfg.liger_kernels and not train_cfg.loss_chunk_size:
            return None  # Liger's other kernels still apply; the head runs whole
        key = "loss_chunk_size" if train_cfg.loss_chunk_size else "cut_cross_entropy"
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        raise OnestopError(
            f"config key 'train.{key}': the loss of this model ({base.config.model_type}, or virtual tokens in "
            f"front) needs its whole logits; set train.{key}={'0' if key == 'loss_chunk_size' else 'false'}"
        )
    if fused and train_cfg.loss_chunk_size:
        raise OnestopError(
            "config key 'train.loss_chunk_size': a fused kernel (train.liger_kernels or train.cut_cross_entropy) "
            "already never holds the logits whole; set train.loss_chunk_size=0"
        )
    if train_cfg.liger_kernels:
        return LigerHeadLoss()
    if train_cfg.cut_cross_entropy:
        return CutCrossEntropyHeadLoss()
    return ChunkedHeadLoss(train_cfg.loss_chunk_size)


def compile_decoder(model, train_cfg: DictConfig):
    """torch.compile the decoder: the loss calls it directly, and the head stays eager (its shape follows the
    number of labelled tokens, which would recompile at every step)."""
    if train_cfg.compile:
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        base.get_decoder().compile()
    return model
