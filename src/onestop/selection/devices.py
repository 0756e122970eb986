"""Devices a run may land on: the common GPUs users rent, and this machine as it is now.

Peak figures are the vendors' dense (no sparsity) tensor throughput; a training step reaches a fraction of
it, the efficiency `invoke bench.estimate` measures (docs/benchmarks.md).
"""

# Lazy imports: torch (inside the functions that need it).

import json
import math
import os
import time
from dataclasses import asdict, dataclass, replace

from onestop.core.paths import cache_dir
from onestop.models.precision import cpu_has_native_bf16, gpu_has_native_bf16

GIB = 2**30


@dataclass(frozen=True)
class Device:
    name: str
    memory_gib: float
    """Memory one run may use on one device: GPU memory, or RAM for the CPU."""
    peak_tflops: float
    """Dense bf16 (fp16 where bf16 is missing) matmul throughput; for a CPU, measured on this machine."""
    kind: str = "gpu"
    """gpu or cpu."""
    bf16: bool = True
    """Computes bf16 natively; without it onestop trains in fp16 mixed precision (GPU) or fp32 (CPU)."""
    efficiency: float = 0.40
    """Share of the peak a training step reaches (model FLOPs utilisation)."""
    efficiency_measured: bool = False
    """Whether `efficiency` was measured by bench.estimate rather than assumed."""
    overhead_gib: float = 0.5
    """Memory a process uses beyond its tensors (CUDA context and kernels; torch and Lightning on a CPU)."""
    step_overhead_s: float = 0.03
    """Seconds a training step costs beyond its FLOPs (Python, kernel launches, the optimizer's loop): what a
    tiny model's step takes."""
    count: int = 0
    """How many of it this machine has (its own GPUs' row); 0 for a GPU it does not have, where a run asking for
    every GPU is estimated on an assumed count (onestop.selection.estimate.device_count)."""

    @property
    def precision(self) -> str:
        """The precision `hardware=auto` trains in on this device."""
        if self.kind == "gpu":
            return "bf16-mixed" if self.bf16 else "16-mixed"
        return "bf16-mixed" if self.bf16 else "32-true"

    def to_dict(self) -> dict:
        return asdict(self)


# A step of a 0.5-8B model with LoRA typically reaches 30-45% of an Ampere/Hopper card's peak; 0.40 stays
# an assumption until bench.gpu measures it on a lent GPU.
COMMON_GPUS = (
    Device("T4 16GB", 15.0, 65.0, bf16=False),
    Device("A10 24GB", 22.0, 125.0),
    Device("RTX 4090 24GB", 23.5, 165.0),
    Device("L40S 48GB", 44.5, 362.0),
    Device("A100 40GB", 39.4, 312.0),
    Device("A100 80GB", 79.1, 312.0),
    Device("H100 80GB", 79.1, 989.0),
    Device("H200 141GB", 139.8, 989.0),
)

# Measured by `invoke bench.estimate` on a 2-core CPU (docs/benchmarks.md): achieved training FLOP/s over
# the matmul peak measured below, median of its rows.
CPU_EFFICIENCY = 0.24
CPU_OVERHEAD_GIB = 0.125
CPU_STEP_OVERHEAD_S = 0.03


def device_by_name(name: str) -> Device | None:
    """A common GPU by a case-insensitive prefix of its name (`a100`, `h100 80`, `4090`)."""
    wanted = name.lower().replace("_", " ")
    return next((d for d in COMMON_GPUS if wanted in d.name.lower()), None)


def this_machine(measure_speed: bool = True, memory_limit_gib: float | None = None) -> Device:
    """The GPU this process sees (its free memory), else the CPU with the RAM available now.

    `measure_speed=False` skips timing the CPU (its peak is then 0 and time estimates are NaN);
    `memory_limit_gib` caps the memory a run may use (hardware.memory_limit_gib).
    """
    device = _this_machine(measure_speed)
    if memory_limit_gib:
        device = replace(device, memory_gib=min(device.memory_gib, memory_limit_gib))
    return device


def _this_machine(measure_speed: bool) -> Device:
    import torch

    if torch.cuda.is_available():
        free, total = torch.cuda.mem_get_info()
        name = torch.cuda.get_device_name()
        known = next((d for d in COMMON_GPUS if d.name.split()[0].lower() in name.lower()), None)
        return Device(
            f"this GPU ({name})",
            free / GIB,
            known.peak_tflops if known else 100.0,
            bf16=gpu_has_native_bf16(),
            efficiency=known.efficiency if known else 0.40,
            count=torch.cuda.device_count(),
        )
    bf16 = cpu_has_native_bf16()
    return Device(
        f"this CPU ({os.cpu_count()} cores)",
        available_ram() / GIB,
        cpu_peak_tflops(bf16) if measure_speed else 0.0,
        kind="cpu",
        bf16=bf16,
        efficiency=CPU_EFFICIENCY,
        efficiency_measured=True,
        overhead_gib=CPU_OVERHEAD_GIB,
        step_overhead_s=CPU_STEP_OVERHEAD_S,
    )


def total_ram() -> int:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def available_ram() -> int:
    """Bytes of RAM a new allocation can get now (MemAvailable), or the total where /proc is missing."""
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return total_ram()


# Matrix shapes timed for the CPU's matmul peak: square ones, and the [tokens, hidden] x [hidden, ffn] shape of
# a small model's training step, which one-socket BLAS libraries often run fastest.
PEAK_SHAPES = ((2048, 2048, 2048), (3072, 3072, 3072), (4096, 640, 2048))


def cpu_peak_tflops(bf16: bool, refresh: bool = False) -> float:
    """This CPU's matmul throughput in the dtype onestop trains in: the fastest of several shapes, measured once
    (~2 s) and cached. `refresh` measures again and keeps the higher figure: a busy machine only ever slows a
    measurement down, so the highest reading is the closest to the true ceiling."""
    import torch

    dtype = torch.bfloat16 if bf16 else torch.float32
    key = f"{os.cpu_count()}-{torch.get_num_threads()}-{dtype}"
    path = cache_dir() / "cpu_peak.json"
    try:
        cached = json.loads(path.read_text())
    except (OSError, ValueError):
        cached = {}
    if key in cached and not refresh:
        return cached[key]
    tflops = max(_matmul_tflops(torch, dtype, *shape) for shape in PEAK_SHAPES)
    cached[key] = max(tflops, cached.get(key, 0.0))
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(cached))
    except OSError:
        pass  # a read-only cache only costs the measurement again
    return cached[key]


def _matmul_tflops(torch, dtype, rows: int, inner: int, columns: int) -> float:
    """The best of five timings of one [rows, inner] x [inner, columns] matmul, after a warm-up."""
    a, b = torch.randn(rows, inner, dtype=dtype), torch.randn(inner, columns, dtype=dtype)
    a @ b  # warm-up: thread pool and kernels
    fastest = math.inf
    for _ in range(5):
        started = time.perf_counter()
        a @ b
        fastest = min(fastest, time.perf_counter() - started)
    return 2 * rows * inner * columns / fastest / 1e12
