"""Which dtype a run computes and keeps its weights in: shared by training and by the memory estimate."""

# Lazy imports: torch (inside the functions that need it).


def cpu_has_native_bf16() -> bool:
    """Whether this CPU multiplies bf16 in hardware (AVX512-BF16 or AMX); without it bf16 is slower than fp32."""
    import torch

    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def weights_dtype(precision: str, strategy: str = "auto") -> str:
    """Dtype to load base weights in: bf16 under bf16 precision (half the memory), else fp32.

    FSDP flattens frozen base weights and fp32 adapter weights into one parameter that must have a single
    dtype, so under FSDP the base stays fp32 and FSDP's mixed precision casts to bf16 for compute.
    """
    if strategy == "fsdp":
        return "float32"
    return "bfloat16" if str(precision).startswith("bf16") else "float32"
