"""Which dtype a run computes and keeps its weights in: shared by training and by the memory estimate."""

# Lazy imports: torch (inside the functions that need it).


def cpu_has_native_bf16() -> bool:
    """Whether this CPU multiplies bf16 in hardware (AVX512-BF16 or AMX); without it bf16 is slower than fp32."""
    import torch

    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def gpu_has_native_bf16() -> bool:
    """Whether the visible CUDA GPU computes bf16 in hardware (Ampere and newer). torch's default check also
    says yes where bf16 only runs emulated (a T4), far slower than fp16."""
    import torch

    return torch.cuda.is_available() and torch.cuda.is_bf16_supported(including_emulation=False)


def without_bf16(precision: str) -> str:
    """The precision a GPU without bf16 trains in when bf16 is asked for: fp16 mixed precision (fp32 weights,
    fp16 compute, a loss scaler); other precisions unchanged."""
    return "16-mixed" if str(precision).startswith("bf16") else str(precision)


def weights_dtype(precision: str, strategy: str = "auto") -> str:
    """Dtype to load base weights in: bf16 under bf16 precision (half the memory), else fp32.

    FSDP flattens frozen base weights and fp32 adapter weights into one parameter that must have a single
    dtype, so under FSDP the base stays fp32 and FSDP's mixed precision casts to bf16 for compute. Under
    bf16-mixed the weights that train are then raised to fp32 (`keep_fp32_master_weights`).
    """
    if strategy == "fsdp":
        return "float32"
    return "bfloat16" if str(precision).startswith("bf16") else "float32"


def needs_fp32_master_weights(precision: str, strategy: str = "auto") -> bool:
    """Whether the trainable weights must be fp32 for this precision and strategy: under bf16-mixed AdamW
    updates them in place, and an update below a bf16 weight's resolution (1/256 of it: lr 1e-5 on most
    weights) rounds away to nothing, so they are the fp32 master copy and autocast computes in bf16.

    Not under bf16-true (pure bf16, as asked), FSDP (already fp32 throughout) or DeepSpeed (which casts the
    module to bf16 and keeps its own fp32 master weights in the optimizer).
    """
    mixed = str(precision) in ("bf16-mixed", "bf16")  # Lightning still reads a bare `bf16` as bf16-mixed
    return mixed and strategy != "fsdp" and not str(strategy).startswith("deepspeed")


def keep_fp32_master_weights(model, precision: str, strategy: str = "auto"):
    """Raise the trainable parameters that are not fp32 to fp32 where `needs_fp32_master_weights`; frozen ones
    (LoRA's base, freeze tuning's lower layers) stay in their load dtype. Returns the model."""
    import torch

    if not needs_fp32_master_weights(precision, strategy):
        return model
    for parameter in model.parameters():
        if parameter.requires_grad and parameter.is_floating_point() and parameter.dtype != torch.float32:
            parameter.data = parameter.data.float()
    return model
