"""Peak memory per device and time of a training run, estimated from its composed config before any weight loads.

    invoke estimate model=qwen7b method=lora data.max_seq_len=2048 data.batch_size=4

The estimate sums what a training step holds at its peak, the start of the backward pass:

- weights: the frozen base in its load dtype (bf16 under bf16 precision, 4-bit NF4 for QLoRA), sharded by
  FSDP/ZeRO-3; the weights that train in fp32 under bf16-mixed (master weights: 4 bytes, then 4 for their
  gradients and 8 for AdamW's moments), as training keeps them;
- adapter weights, gradients and AdamW's two moments for the trainable parameters (sharded by ZeRO-2/3 and
  FSDP; ZeRO also keeps fp32 master weights; DDP keeps a second copy of the gradients in its buckets);
- the half-precision copies autocast makes of fp32 weights for the matmuls, which autograd keeps until the
  backward pass (one layer's with checkpointing);
- activations autograd keeps, measured on the meta device (probe.py), with or without checkpointing;
- the output head's logits and cross-entropy for every labelled token, which for a 150-260k vocabulary
  often outweigh the whole decoder;
- the framework's own overhead (CUDA context, or torch and Lightning on a CPU).

Time: FLOPs per token (2 per parameter forward; backward 4 for trainable and 2 for frozen matmul parameters
it passes through; attention products; one more forward of those layers with checkpointing) over the
device's peak times a measured efficiency, plus a per-step overhead.
"""

import math
from dataclasses import asdict, dataclass, field, replace

from omegaconf import DictConfig

from onestop.config.compose import WHOLE_SEQUENCE_STAGES
from onestop.core.errors import OnestopError
from onestop.models.heads import is_plain_head
from onestop.models.precision import weights_dtype, without_bf16
from onestop.models.zoo import architecture_config, native_config, parameter_counts
from onestop.selection.devices import COMMON_GPUS, GIB, Device
from onestop.selection.probe import ModelShape, probe

# Bytes per logit element at the peak of the loss: the head's output, its fp32 copy (cross-entropy runs in
# fp32), the saved log-softmax and the two gradients flowing back; half-precision compute keeps the first in
# 2 bytes. Checked against measured peaks by bench.estimate.
LOGIT_BYTES = {"half": 14, "float32": 12}
# Labelled positions per chunk when train.loss_chunk_size=auto chunks the head and loss: at Gemma's 262k
# vocabulary one chunk's fp32 logits are 1 GiB, against 28 GiB for 8 x 1,024 positions at once.
AUTO_LOSS_CHUNK = 1024
# NF4 weights with double quantization: 4 bits plus ~0.127 bits of constants per weight.
NF4_BYTES_PER_PARAM = 4.127 / 8
SHARDED_STRATEGIES = ("fsdp", "deepspeed_stage_3")
# GPUs taken for hardware.devices=-1 (or auto: every GPU the machine has) on a GPU the estimate does not see:
# the fewest that shard or split a batch, so a run that fits here fits on any larger count of the same GPU.
ASSUMED_GPUS = 2
STRATEGY_NAMES = {"fsdp": "FSDP", "ddp": "DDP", "deepspeed": "DeepSpeed"}


class WillNotFit(OnestopError):
    """The run's estimated peak memory exceeds the device's, or no micro-batch reaches the global batch."""


@dataclass
class MemoryBreakdown:
    weights: float
    adapter: float
    gradients: float
    optimizer: float
    activations: float
    logits: float
    overhead: float
    weight_copies: float = 0.0

    @property
    def total(self) -> float:
        return sum(asdict(self).values())

    def gib(self) -> dict[str, float]:
        return {**{k: v / GIB for k, v in asdict(self).items()}, "total": self.total / GIB}


@dataclass
class Settings:
    """The knobs of a run that decide its memory: read from the config, changed to find a fit."""

    micro_batch: int
    seq_len: int
    accumulation: int
    devices: int
    strategy: str
    checkpointing: bool
    qlora: bool
    precision: str
    loss_chunk: int | None = 0
    """Labelled positions the head and loss take at a time (train.loss_chunk_size); 0 all at once; None: `auto`,
    which `estimate` resolves."""

    def overrides(self) -> list[str]:
        return [
            f"data.batch_size={self.micro_batch}",
            f"trainer.accumulate_grad_batches={self.accumulation}",
            f"hardware.gradient_checkpointing={str(self.checkpointing).lower()}",
            f"train.loss_chunk_size={self.loss_chunk or 0}",
        ]


@dataclass
class Estimate:
    device: Device
    settings: Settings
    shape: ModelShape
    memory: MemoryBreakdown
    activations_checkpointed: float
    """Activation bytes with gradient checkpointing (shown beside the figure without it)."""
    tokens_per_step: int
    flops_per_token: float
    step_seconds: float
    run_steps: int | None
    fix: str | None = None
    """The smallest change that makes a run that does not fit, fit."""
    notes: list[str] = field(default_factory=list)
    cannot_run: str | None = None
    """Why training refuses this run on this device whatever its memory (QLoRA on a CPU), or None."""

    @property
    def fits(self) -> bool:
        return self.cannot_run is None and self.memory.total <= self.device.memory_gib * GIB

    @property
    def run_seconds(self) -> float | None:
        return self.step_seconds * self.run_steps if self.run_steps else None

    def to_dict(self) -> dict:
        return {
            "device": self.device.to_dict(),
            "settings": asdict(self.settings),
            "fits": self.fits,
            "cannot_run": self.cannot_run,
            "fix": self.fix,
            "memory_gib": self.memory.gib(),
            "activations_checkpointed_gib": self.activations_checkpointed / GIB,
            "params": {
                "total": self.shape.params_total,
                "embedding": self.shape.params_embedding,
                "trainable": self.shape.params_trainable,
            },
            "tokens_per_step": self.tokens_per_step,
            "flops_per_token": self.flops_per_token,
            "step_seconds": self.step_seconds,
            "run_steps": self.run_steps,
            "run_seconds": self.run_seconds,
            "notes": self.notes,
        }


def settings_from_config(cfg: DictConfig, device: Device, seq_len: int | None = None) -> Settings:
    """The run's settings on `device`: the precision training resolves there (its own where the config says
    auto; fp16 mixed for bf16 on a GPU without bf16, as onestop.training.hardware.resolve_precision does), its
    device count (`device_count`); `seq_len` is the longest batch the data makes (default: data.max_seq_len,
    the longest any batch can be)."""
    hardware = cfg.hardware
    precision = str(hardware.precision)
    if precision == "auto":
        precision = device.precision
    elif device.kind == "gpu" and not device.bf16:
        precision = without_bf16(precision)
    devices, _ = device_count(hardware, device)
    return Settings(
        micro_batch=int(cfg.data.batch_size),
        seq_len=int(seq_len or cfg.data.max_seq_len),
        accumulation=int(cfg.trainer.accumulate_grad_batches),
        devices=devices * int(hardware.num_nodes),
        strategy=str(hardware.strategy),
        checkpointing=bool(hardware.gradient_checkpointing or cfg.method.get("gradient_checkpointing", False)),
        qlora=bool(cfg.method.get("quantization")),
        precision=precision,
        loss_chunk=configured_loss_chunk(cfg),
    )


def device_count(hardware: DictConfig, device: Device) -> tuple[int, str | None]:
    """Devices per node the run trains on with `device`, and, where the config leaves the count to the machine
    (hardware.devices=-1 or auto: every GPU), the line saying what count was taken: the GPUs this machine has
    for its own row, ASSUMED_GPUS for a GPU it does not have. A CPU run is one process unless it names more."""
    devices = hardware.devices
    if isinstance(devices, int) and devices > 0:
        return devices, None
    if device.kind != "gpu" or str(hardware.accelerator) == "cpu":
        return 1, None
    if device.count:
        return device.count, None
    return ASSUMED_GPUS, (
        f"hardware.devices={devices} (every GPU of the machine) estimated as {ASSUMED_GPUS} GPUs per node; "
        f"give the count, e.g. hardware.devices=8, to estimate yours"
    )


def cannot_run(cfg: DictConfig, device: Device, settings: Settings) -> str | None:
    """Why training would refuse this run on `device` before any memory counts (onestop.models.loading
    and onestop.training.hardware refuse the same), or None."""
    if device.kind != "cpu":
        return None
    if settings.qlora:
        return "QLoRA needs a CUDA GPU"
    if str(cfg.hardware.accelerator) == "gpu":
        strategy = settings.strategy.split("_")[0]
        return f"{STRATEGY_NAMES.get(strategy, 'hardware=gpu')} needs a CUDA GPU"
    return None


def configured_loss_chunk(cfg: DictConfig) -> int | None:
    """train.loss_chunk_size as set, or for `auto`: None (the estimate chooses), or 0 where the loss needs the
    whole head (a stage scoring whole sequences: WHOLE_SEQUENCE_STAGES) or a fused kernel already never holds the
    logits whole."""
    train = cfg.get("train")
    chunk = train.get("loss_chunk_size", 0) if train is not None else 0
    if chunk != "auto":
        return int(chunk)
    if cfg.get("stage") in WHOLE_SEQUENCE_STAGES or train.get("liger_kernels") or train.get("cut_cross_entropy"):
        return 0
    return None


def model_shape(cfg: DictConfig, settings: Settings) -> ModelShape:
    """The meta-device probe of the run's model and method at its sequence length."""
    architecture, _ = architecture_config(cfg.model)
    load_dtype = weights_dtype(settings.precision, settings.strategy)
    if settings.qlora:
        load_dtype = "bfloat16"  # the 4-bit base computes in bf16; its NF4 storage is counted in estimate()
    autocast = {"bf16": "bfloat16", "16": "float16"}.get(settings.precision.split("-")[0])
    return probe(
        architecture, cfg.method, load_dtype, autocast, settings.seq_len, settings.precision, settings.strategy
    )


def estimate(cfg: DictConfig, device: Device, settings: Settings | None = None, run_steps: int | None = None):
    """The Estimate of the run `cfg` on `device` (with `settings` changed from the config's, when given)."""
    settings = settings or settings_from_config(cfg, device)
    shape = model_shape(cfg, settings)
    if settings.loss_chunk is None:
        settings = replace(settings, loss_chunk=auto_loss_chunk(cfg, shape, settings, device))
    memory, checkpointed = memory_breakdown(shape, settings, device)
    flops = flops_per_token(shape, settings)
    tokens = settings.micro_batch * settings.seq_len
    achieved = device.peak_tflops * 1e12 * device.efficiency or math.nan
    notes = [] if device.efficiency_measured else [f"efficiency {device.efficiency:.0%} assumed, not yet measured"]
    _, assumed = device_count(cfg.hardware, device)
    if assumed:
        notes.append(assumed)
    asked = str(cfg.hardware.precision)
    if asked.startswith("bf16") and not settings.precision.startswith("bf16"):
        notes.append(f"{device.name} has no bf16: hardware.precision={asked} trains there in {settings.precision}")
    return Estimate(
        device=device,
        settings=settings,
        shape=shape,
        memory=memory,
        activations_checkpointed=checkpointed,
        tokens_per_step=tokens * settings.accumulation * settings.devices,
        flops_per_token=flops,
        step_seconds=settings.accumulation * (tokens * flops / achieved + device.step_overhead_s),
        run_steps=run_steps,
        notes=notes,
        cannot_run=cannot_run(cfg, device, settings),
    )


def auto_loss_chunk(cfg: DictConfig, shape: ModelShape, settings: Settings, device: Device) -> int:
    """What train.loss_chunk_size=auto chooses: chunks of AUTO_LOSS_CHUNK positions when the whole head's logits
    would be the largest part of the peak and the model's head can be chunked exactly (a plain linear head);
    otherwise the head whole, which is as fast where the logits are small."""
    if not can_chunk_loss(cfg):
        return 0
    whole, _ = memory_breakdown(shape, replace(settings, loss_chunk=0), device)
    parts = {k: v for k, v in asdict(whole).items() if k != "overhead"}
    return AUTO_LOSS_CHUNK if max(parts, key=parts.get) == "logits" else 0


def memory_breakdown(shape: ModelShape, settings: Settings, device: Device) -> tuple[MemoryBreakdown, float]:
    """Peak bytes per device by kind, and the activation bytes with checkpointing for comparison."""
    world = settings.devices
    shards_weights = settings.strategy.startswith(SHARDED_STRATEGIES)
    shards_states = shards_weights or settings.strategy.startswith("deepspeed_stage_2")

    frozen = shape.frozen_bytes
    if settings.qlora:
        bf16_linear = shape.frozen_linear_params * 2
        frozen = frozen - bf16_linear + shape.frozen_linear_params * NF4_BYTES_PER_PARAM
    weights = frozen + (0 if shape.adapter else shape.trainable_bytes)
    adapter = shape.trainable_bytes if shape.adapter else 0
    gradients = shape.trainable_bytes
    optimizer = 2 * shape.trainable_bytes  # AdamW: first and second moment, in the parameter's dtype
    if settings.strategy.startswith("deepspeed"):
        # ZeRO keeps fp32 master weights and fp32 moments beside half-precision trainable parameters.
        optimizer = shape.params_trainable * 12
    if settings.strategy == "ddp" and world > 1:
        gradients *= 2  # DDP's gradient buckets are a second copy
    if shards_weights and world > 1:
        weights /= world
        adapter /= world
        # Each rank gathers one layer's full weights at a time.
        weights += (shape.frozen_bytes + shape.trainable_bytes) / max(shape.layers, 1)
    if shards_states and world > 1:
        gradients /= world
        optimizer /= world

    # Autocast's half-precision copies of fp32 weights stay saved for the backward pass; with checkpointing only
    # the recomputed layer's (and the head's) are. Under FSDP the gathered layer above stands for them.
    copies = 0.0
    if not (shards_weights and world > 1):
        decoder = shape.weight_copy_bytes
        copies = (decoder / max(shape.layers, 1) if settings.checkpointing else decoder) + shape.head_copy_bytes

    tokens = settings.micro_batch * settings.seq_len
    plain = shape.saved_per_token * tokens
    checkpointed = shape.checkpointed_per_token * tokens
    half = settings.precision.startswith(("bf16", "16"))
    positions = min(tokens, settings.loss_chunk) if settings.loss_chunk else tokens
    logits = positions * shape.vocab_size * LOGIT_BYTES["half" if half else "float32"]
    return (
        MemoryBreakdown(
            weights=weights,
            adapter=adapter,
            gradients=gradients,
            optimizer=optimizer,
            activations=checkpointed if settings.checkpointing else plain,
            logits=logits,
            overhead=device.overhead_gib * GIB,
            weight_copies=copies,
        ),
        checkpointed,
    )


def flops_per_token(shape: ModelShape, settings: Settings) -> float:
    """Training FLOPs per token: forward 2 per matmul parameter; backward 4 per trainable matmul parameter
    (input and weight gradients) and 2 per frozen one it passes through (input gradient only; none below
    the lowest layer that trains); the attention score and value products (causal: half the sequence on
    average) forward and twice that backward; with checkpointing the layers the backward passes through
    run forward twice."""
    forward = 2 * shape.matmul_params
    backward = 4 * shape.trainable_matmul_params + 2 * shape.backward_frozen_matmul_params
    per_layer_attention = 2 * settings.seq_len * shape.attention_width  # 2 products x 2 FLOPs x s/2
    attention = per_layer_attention * shape.layers
    backward_attention = 2 * per_layer_attention * shape.backward_layers
    recompute = 0.0
    if settings.checkpointing and shape.layers:
        share = shape.backward_layers / shape.layers
        decoder_forward = forward - 2 * (shape.params_head or shape.params_embedding)
        recompute = share * (decoder_forward + attention)
    return forward + backward + attention + backward_attention + recompute


def find_fix(cfg: DictConfig, device: Device, current: Settings, run_steps: int | None = None) -> str | None:
    """The first change, as pasteable overrides, that makes the run fit on `device`. Changes that keep what the
    recipe means come first: the head and loss in chunks, checkpointing, then a smaller micro-batch with more
    accumulation (the same examples per optimizer step); then, on a GPU, QLoRA for a LoRA run and sharding
    across more GPUs (not for QLoRA). None when nothing tried fits."""
    candidates: list[tuple[list[str], Settings]] = []
    kept: list[str] = []  # cheaper fixes already tried stay on in the dearer ones
    if not current.loss_chunk and can_chunk_loss(cfg):
        kept.append(f"train.loss_chunk_size={AUTO_LOSS_CHUNK}")
        current = replace(current, loss_chunk=AUTO_LOSS_CHUNK)
        candidates.append((list(kept), current))
    if not current.checkpointing:
        kept.append("hardware.gradient_checkpointing=true")
        current = replace(current, checkpointing=True)
        candidates.append((list(kept), current))
    micro = current.micro_batch
    while micro > 1:
        micro //= 2
        accumulation = math.ceil(current.micro_batch * current.accumulation / micro)
        smaller = replace(current, micro_batch=micro, accumulation=accumulation)
        candidates.append(
            ([f"data.batch_size={micro}", f"trainer.accumulate_grad_batches={accumulation}", *kept], smaller)
        )
    one = replace(current, micro_batch=1, accumulation=current.micro_batch * current.accumulation)
    one_batch = ["data.batch_size=1", f"trainer.accumulate_grad_batches={one.accumulation}", *kept]
    if device.kind == "gpu" and cfg.method.get("name") == "lora" and not current.qlora:
        candidates.append((["method=qlora", *one_batch], replace(one, qlora=True)))
    if device.kind == "gpu" and not current.qlora:  # a 4-bit base is never sharded: each GPU loads all of it
        for gpus in (2, 4, 8):
            sharded = replace(one, devices=gpus, strategy="fsdp")
            candidates.append((["hardware=fsdp", f"hardware.devices={gpus}", *one_batch], sharded))
    for change, settings in candidates:
        try:
            if estimate(cfg, device, settings, run_steps).fits:
                return " ".join(change)
        except OnestopError:
            continue
    return None


def can_chunk_loss(cfg: DictConfig) -> bool:
    """Whether the head and loss of this run can go in chunks exactly: a plain linear head, a token-level loss
    (not a stage scoring whole sequences), no virtual tokens in front, and no fused kernel doing it already."""
    train = cfg.get("train") or {}
    if cfg.get("stage") in WHOLE_SEQUENCE_STAGES or train.get("liger_kernels") or train.get("cut_cross_entropy"):
        return False
    architecture, _ = architecture_config(cfg.model)
    return is_plain_head(architecture) and "num_virtual_tokens" not in cfg.method


def estimate_devices(cfg: DictConfig, devices: list[Device], run_steps: int | None = None) -> list[Estimate]:
    """The run's estimate on each device, with the fix for those it does not fit."""
    estimates = []
    for device in devices:
        result = estimate(cfg, device, run_steps=run_steps)
        if not result.fits and not result.cannot_run:
            result.fix = find_fix(cfg, device, result.settings, run_steps)
        estimates.append(result)
    return estimates


def largest_micro_batch(cfg: DictConfig, device: Device, global_batch: int, seq_len: int | None = None):
    """The Settings with the largest micro-batch dividing `global_batch` (per device) that fits, and the
    accumulation that reaches it; None when even one sequence does not fit."""
    base = settings_from_config(cfg, device, seq_len)
    per_device = global_batch // base.devices
    if per_device < 1 or per_device * base.devices != global_batch:
        raise WillNotFit(
            f"config key 'data.global_batch_size': {global_batch} is not a multiple of the {base.devices} devices"
        )
    for micro in sorted((m for m in range(1, per_device + 1) if per_device % m == 0), reverse=True):
        settings = replace(base, micro_batch=micro, accumulation=per_device // micro)
        if estimate(cfg, device, settings).fits:
            return settings
    return None


def check_fits(cfg: DictConfig, device: Device, seq_len: int | None = None) -> Estimate:
    """The run's estimate on `device`; raises OnestopError, in one line with the fix, when it will not fit."""
    result = estimate(cfg, device, settings_from_config(cfg, device, seq_len))
    if result.fits:
        return result
    if result.cannot_run:
        raise WillNotFit(f"this run cannot train on {device.name}: {result.cannot_run}")
    fix = find_fix(cfg, device, result.settings)
    parts = sorted(result.memory.gib().items(), key=lambda kv: -kv[1])
    largest = ", ".join(f"{k} {_gib(v)}" for k, v in parts if k != "total" and v >= 0.005)[:160]
    raise WillNotFit(
        f"this run will not fit {device.name}: about {_gib(result.memory.total / GIB)} GiB at its peak ({largest}) "
        f"for {_gib(device.memory_gib)} GiB available; "
        + (f"try {fix}" if fix else "try a smaller model or more devices")
        + "; `invoke estimate` with the same overrides shows the breakdown, hardware.memory_check=false skips "
        "this check"
    )


def _gib(value: float) -> str:
    return f"{value:.2f}" if value < 10 else f"{value:.1f}"


def choose_micro_batch(cfg: DictConfig, device: Device, seq_len: int | None = None) -> Settings:
    """For data.global_batch_size: the largest micro-batch that fits `device`, written into the config
    (data.batch_size, trainer.accumulate_grad_batches)."""
    global_batch = int(cfg.data.global_batch_size)
    chosen = largest_micro_batch(cfg, device, global_batch, seq_len)
    if chosen is None:
        check_fits(cfg, device, seq_len)  # raises with the breakdown and the fix
        raise WillNotFit(f"config key 'data.global_batch_size': not even one sequence fits {device.name}")
    cfg.data.batch_size = chosen.micro_batch
    cfg.trainer.accumulate_grad_batches = chosen.accumulation
    return chosen


def serving_memory(model_cfg: DictConfig, batch: int, seq_len: int, dtype_bytes: int = 2) -> float:
    """Bytes a model needs to answer `batch` sequences of `seq_len` tokens: its weights in bf16 and the KV
    cache (keys and values of every layer for every token), plus a GPU's usual overhead."""
    architecture, _ = architecture_config(model_cfg)
    config = native_config(architecture)
    counts = parameter_counts(architecture)
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    kv_cache = 2 * config.num_hidden_layers * kv_heads * head_dim * dtype_bytes * batch * seq_len
    return counts["total"] * dtype_bytes + kv_cache + COMMON_GPUS[0].overhead_gib * GIB
