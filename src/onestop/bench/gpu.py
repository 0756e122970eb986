"""`invoke bench.gpu`: every GPU path of onestop proven by one command on a briefly lent GPU machine.

invoke bench.gpu                                        # all parts, at most 8 minutes on one H100/H200
invoke bench.gpu --smoke                                # the same code path at the smallest size, on CPU
invoke bench.gpu.report runs/bench/gpu/TIME/gpu.json    # put the figures into docs/benchmarks.md (output.py)
invoke bench.gpu.wheels                                 # the wheels a GPU box without internet needs (wheels.py)

Each part runs in a child process of its own, with its own time limit, so its peak memory is its own and
a part that hangs, crashes or overruns is recorded as such while the rest still run. The model is the
Qwen2.5-0.5B architecture (its shipped config.json, the real 151,936-entry vocabulary) with random
weights and the committed tiny tokenizer, whose ids are a subset of that vocabulary: no hub is needed.
"""

# Lazy imports: torch, transformers, lightning, openai (inside the functions that need them).

import importlib.metadata
import importlib.util
import json
import os
import platform
import random
import re
import signal
import subprocess
import sys
import threading
import time
import xml.etree.ElementTree as ElementTree
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from onestop.bench.output import gpu_table, save_gpu_results
from onestop.bench.wheels import WHEELS_DIR
from onestop.config.compose import compose
from onestop.core.errors import OnestopError
from onestop.core.files import save_pretrained_atomic, write_json, write_text_atomic
from onestop.core.paths import PROJECT_ROOT
from onestop.data.packing import real_token_mask
from onestop.data.sft import SFTDataModule
from onestop.deploy.lmdeploy import run_setup
from onestop.deploy.service import serving, state_dir
from onestop.methods import method_from_config
from onestop.models import load_causal_lm, load_tokenizer, resolve_model_path
from onestop.models.precision import weights_dtype
from onestop.models.zoo import native_config
from onestop.selection.devices import GIB, this_machine
from onestop.selection.estimate import estimate, settings_from_config
from onestop.training.hardware import trainer_hardware
from onestop.training.train import train

TINY_DIR = PROJECT_ROOT / "tests" / "assets" / "tiny-qwen2"
QWEN_ARCHITECTURE = Path(__file__).parents[1] / "models" / "zoo" / "Qwen--Qwen2.5-0.5B-Instruct.json"

# What the docs promise for the LoRA fine-tune of the Qwen2.5-0.5B architecture at 2048 tokens.
TARGETS = {"lora_mfu_pct": 35.0, "lora_peak_gb": 16.0, "speedup_vs_hf": 1.5}


@dataclass(frozen=True)
class Workload:
    architecture: str
    """config.json the model is built from (random weights)."""
    seq_len: int
    batch: int
    steps: int
    warmup: int
    """First steps left out of tokens/s: compilation, autotuning and allocator growth happen there."""
    hardware: str
    """gpu or cpu."""


# Batch 2: `invoke estimate` puts its activations at 9.4 GiB without checkpointing, which with a loss that never
# holds the logits whole leaves LoRA under the 16 GB target; batch 4 would need 18.7 GiB of activations.
GPU_WORKLOAD = Workload(str(QWEN_ARCHITECTURE), seq_len=2048, batch=2, steps=16, warmup=4, hardware="gpu")
SMOKE_WORKLOAD = Workload(str(TINY_DIR / "config.json"), seq_len=128, batch=2, steps=3, warmup=1, hardware="cpu")


@dataclass(frozen=True)
class Part:
    name: str
    what: str
    limit_s: int
    needs_cuda: bool = False
    needs_package: str | None = None


# In the order they run: the figures the targets are about first, the slowest checks last, so an
# exhausted time budget costs the least.
PARTS = (
    Part("setup", "versions, device, random-weight model and packed corpus", 90),
    Part("lora_fast", "LoRA r16, packed, fast paths on", 100),
    Part("hf_lora", "the same LoRA with transformers Trainer + peft", 60),
    Part("lora", "LoRA r16, packed, fast paths off", 50),
    Part("full_fast", "full fine-tune, packed, fast paths on", 90),
    Part("full", "full fine-tune, packed, fast paths off", 55),
    Part("qlora", "QLoRA (4-bit NF4 base), a few steps", 45, needs_cuda=True, needs_package="bitsandbytes"),
    Part("fsdp", "hardware=fsdp on one GPU, a few steps", 45, needs_cuda=True),
    Part(
        "deepspeed_zero2",
        "hardware=deepspeed_zero2 on one GPU, a few steps",
        50,
        needs_cuda=True,
        needs_package="deepspeed",
    ),  # fmt: skip
    Part(
        "lmdeploy", "deploy=lmdeploy (PyTorch engine): chat and tool calls through the openai SDK", 120, needs_cuda=True
    ),  # fmt: skip
    Part("pytest_gpu", "pytest -m gpu (the gpu-marked tests)", 120),
)
PART_NAMES = tuple(p.name for p in PARTS)
GPU_BUDGET_S = 480
# A 2-core CPU takes ~20 s to import torch and Lightning in each part's process, and more when it is shared.
SMOKE_SLOWER = 4
FEW_STEPS = 4  # qlora, fsdp, deepspeed: they prove the path, tokens/s is a by-product

# The training switches that make a step faster, with their setting in the *_fast parts (the other parts set
# each one off). Only switches the composed training config has are set, and each only where it can run.
FAST_PATHS = (
    ("train.liger_kernels", True),  # Liger's RMSNorm, RoPE, SwiGLU and fused linear cross-entropy (CUDA)
    ("train.loss_chunk_size", 2048),  # where Liger's fused loss is not on: the head in chunks of positions
    ("train.compile", True),  # torch.compile of the decoder
)


def bench_gpu(
    smoke: bool = False,
    output: str | None = None,
    budget_s: float | None = None,
    parts: list[str] | None = None,
    batch: int | None = None,
    steps: int | None = None,
) -> dict:
    """Run every part (or `parts`) within `budget_s` seconds in all (default 480 on a GPU; a smoke run on a
    small CPU gets SMOKE_SLOWER times each limit, and budget); write gpu.json and gpu.md.

    Returns the results dict written to gpu.json.
    """
    unknown = sorted(set(parts or ()) - set(PART_NAMES))
    if unknown:
        raise OnestopError(f"bench.gpu --parts {','.join(unknown)}: choose from {', '.join(PART_NAMES)}")
    workload = SMOKE_WORKLOAD if smoke else GPU_WORKLOAD
    workload = replace(workload, batch=batch or workload.batch, steps=steps or workload.steps)
    if workload.steps <= workload.warmup:
        raise OnestopError(f"bench.gpu --steps {workload.steps}: more than the {workload.warmup} warm-up steps")
    if not smoke:
        import torch

        if not torch.cuda.is_available():
            # The full-size parts are sized for a GPU: on the CPU each would fail or overrun on its own, into a
            # results file that measures nothing.
            raise OnestopError(
                "bench.gpu: no CUDA GPU is visible to torch (torch.cuda.is_available() is false); run it on a "
                "GPU machine, or invoke bench.gpu --smoke for the same code path at its smallest size on the CPU"
            )
    slower = SMOKE_SLOWER if smoke else 1
    budget_s = budget_s or GPU_BUDGET_S * slower
    stamp = time.strftime("%Y-%m-%d_%H-%M-%S")
    out_dir = Path(output or f"runs/bench/gpu/{stamp}").absolute()
    out_dir.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    results = {
        "time": stamp,
        "smoke": smoke,
        "budget_s": budget_s,
        "workload": asdict(workload),
        "fast_paths": dict(FAST_PATHS),
        "environment": {},
        "parts": [],
    }
    spec = {"out_dir": str(out_dir), "smoke": smoke, "workload": asdict(workload)}
    for part in PARTS:
        if parts and part.name not in parts and part.name != "setup":
            continue
        left = budget_s - (time.monotonic() - started)
        reason = _skip_reason(part, results, left)
        limit = min(part.limit_s * slower, left)
        if reason:
            record = {"status": "skipped", "reason": reason}
        else:
            print(f"bench.gpu: {part.name} ({part.what}), up to {limit:.0f} s", flush=True)
            record = _run_child({**spec, "part": part.name}, limit)
        if part.name == "setup" and record.get("status") == "ok":
            results["environment"] = record.pop("environment")
        results["parts"].append({"name": part.name, "what": part.what, "limit_s": part.limit_s * slower, **record})
        save_gpu_results(results, out_dir)  # a machine taken back mid-run still leaves the parts done so far
    results["wall_s"] = time.monotonic() - started
    results["summary"] = summarize(results)
    save_gpu_results(results, out_dir)
    print(gpu_table(results), flush=True)
    print(json.dumps(results["summary"], indent=2), flush=True)
    print(f"Results: {out_dir / 'gpu.json'}", flush=True)
    return results


def _skip_reason(part: Part, results: dict, left: float) -> str | None:
    if part.name == "setup":
        return None
    setup = next((p for p in results["parts"] if p["name"] == "setup"), None)
    if setup is None or setup["status"] != "ok":
        return "setup did not finish"
    environment = results["environment"]
    if part.needs_cuda and not environment.get("cuda_available"):
        return "needs a CUDA GPU"
    if part.needs_package and not environment["packages"].get(part.needs_package):
        return f"{part.needs_package} is not installed (carry its wheel: invoke bench.gpu.wheels)"
    if part.name == "lmdeploy" and not environment.get("lmdeploy_wheels"):
        return f"no LMDeploy wheels in {WHEELS_DIR / 'lmdeploy'} (invoke bench.gpu.wheels downloads them)"
    if left < 20:
        return f"the {results['budget_s']:.0f} s budget was spent"
    return None


def _run_child(spec: dict, limit_s: float) -> dict:
    """One part in a fresh process group: its output streams through, its last `PART {json}` line is its result."""
    started = time.monotonic()
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false"}
    env.pop("ONESTOP_API_KEY", None)  # the benchmark's own deployment takes no key
    child = subprocess.Popen(
        [sys.executable, "-c", "from onestop.bench.gpu import run_part; run_part()"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=PROJECT_ROOT,
        env=env,
        start_new_session=True,  # its servers and workers go with it when it overruns
    )
    lines: list[str] = []

    def pump() -> None:
        for line in child.stdout:
            lines.append(line.rstrip("\n"))
            if not line.startswith("PART "):
                print(f"  {line}", end="", flush=True)

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    child.stdin.write(json.dumps(spec))
    child.stdin.close()
    try:
        child.wait(timeout=limit_s)
        timed_out = False
    except subprocess.TimeoutExpired:
        timed_out = True
        os.killpg(child.pid, signal.SIGKILL)
        child.wait()
    reader.join(timeout=10)
    seconds = time.monotonic() - started
    tail = [line for line in lines if not line.startswith("PART ")][-25:]
    results = [line for line in lines if line.startswith("PART ")]
    if timed_out:
        return {"status": "timeout", "seconds": seconds, "reason": f"over its {limit_s:.0f} s limit", "log_tail": tail}
    if child.returncode or not results:
        last = next((line for line in reversed(tail) if line.strip()), "no output")
        return {"status": "failed", "seconds": seconds, "reason": last.strip()[:300], "log_tail": tail}
    return {"status": "ok", "seconds": seconds, **json.loads(results[-1][5:])}


def run_part() -> None:
    """Entry of a part's child process: reads its spec on stdin, prints `PART {json}` with its figures."""
    spec = json.loads(sys.stdin.read())
    workload = Workload(**spec["workload"])
    out_dir = Path(spec["out_dir"])
    part = spec["part"]
    if part == "setup":
        figures = _setup(workload, out_dir)
    elif part == "hf_lora":
        figures = _hf_trainer_lora(workload, out_dir)
    elif part == "lmdeploy":
        figures = _lmdeploy(out_dir)
    elif part == "pytest_gpu":
        figures = _pytest_gpu(out_dir)
    else:
        figures = _onestop_train(part, workload, out_dir)
    print("PART " + json.dumps(figures), flush=True)


def _packages() -> dict[str, str | None]:
    names = ("torch", "transformers", "peft", "lightning", "accelerate", "bitsandbytes", "deepspeed",
             "liger-kernel", "triton", "openai", "hydra-core")  # fmt: skip
    found = {}
    for name in names:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = None
    return found


def _setup(workload: Workload, out_dir: Path) -> dict:
    """Versions and device; the random-weight model directory and the corpus every training part reads."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    cuda = torch.cuda.is_available() and workload.hardware == "gpu"
    device = this_machine()
    tokenizer = AutoTokenizer.from_pretrained(TINY_DIR)
    config = native_config(json.loads(Path(workload.architecture).read_text()))
    # The tiny tokenizer's ids (about 1k) are a subset of the architecture's vocabulary, which stays its own.
    for name in ("bos_token_id", "eos_token_id", "pad_token_id"):
        setattr(config, name, getattr(tokenizer, name))
    started = time.perf_counter()
    torch.manual_seed(0)
    with torch.device("cuda" if cuda else "cpu"):  # initialising 0.5B weights on the GPU takes a second
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model_dir = save_pretrained_atomic(model, tokenizer, out_dir / "model")
    params = sum(p.numel() for p in model.parameters())
    del model
    corpus = _write_corpus(out_dir / "corpus.jsonl", tokenizer, workload)
    lmdeploy_wheels = sorted((WHEELS_DIR / "lmdeploy").glob("lmdeploy-*.whl"))
    return {
        "environment": {
            "python": platform.python_version(),
            "packages": _packages(),
            "cuda_available": cuda,
            "cuda": torch.version.cuda,
            "device": torch.cuda.get_device_name() if cuda else f"CPU ({os.cpu_count()} cores)",
            "peak_tflops": device.peak_tflops,
            "peak_source": "vendor bf16 dense peak" if cuda else "matmul measured on this CPU",
            "model_params": params,
            "vocab_size": config.vocab_size,
            "tokenizer_size": len(tokenizer),
            "corpus": corpus,
            "lmdeploy_wheels": str(lmdeploy_wheels[0].parent) if lmdeploy_wheels else None,
        },
        "model_seconds": time.perf_counter() - started,
        "model_dir": str(model_dir),
    }


def _write_corpus(path: Path, tokenizer, workload: Workload) -> dict:
    """Documents of random words, a quarter to three quarters of a sequence long, so packing has work to do;
    enough tokens for every step of the longest part, plus a third for what packing leaves empty.

    Returns its token count and attention span (written beside it for the training parts' FLOPs).
    """
    vocabulary = [w for w in tokenizer.get_vocab() if w.isalpha() and len(w) > 2] or ["token"]
    rng = random.Random(0)
    needed = workload.steps * workload.batch * workload.seq_len * 4 // 3
    lines, lengths = [], []
    while sum(lengths) < needed:
        words = rng.randint(workload.seq_len // 4, workload.seq_len * 3 // 4)
        text = " ".join(rng.choice(vocabulary) for _ in range(words))
        length = len(tokenizer(text)["input_ids"])
        if length >= workload.seq_len:
            continue
        lines.append(json.dumps({"text": text}) + "\n")
        lengths.append(length)
    write_text_atomic(path, "".join(lines))
    # A token of a packed document attends to the tokens before it in its document only: on average
    # sum(L^2) / sum(L) / 2 of them, where an unpacked row of that length would give L / 2.
    stats = {
        "documents": len(lengths),
        "tokens": sum(lengths),
        "attention_span": sum(n * n for n in lengths) / sum(lengths),
    }
    write_json(path.with_suffix(".stats.json"), stats)
    return stats


def train_overrides(part: str, workload: Workload, out_dir: Path) -> list[str]:
    """The `invoke train` overrides of a training part: the model directory setup wrote, packed text at the
    workload's sequence length, and the fast-path switches on (`*_fast`) or off."""
    method = {"lora": "lora", "lora_fast": "lora", "full": "full", "full_fast": "full", "qlora": "qlora"}
    hardware = {"fsdp": "fsdp", "deepspeed_zero2": "deepspeed_zero2"}.get(part, workload.hardware)
    steps = FEW_STEPS if part in ("qlora", "fsdp", "deepspeed_zero2") else workload.steps
    overrides = [
        "model=qwen",
        f"model.path={out_dir / 'model'}",
        "model.name=qwen2.5-0.5b-arch-random" if workload.hardware == "gpu" else "model.name=tiny-arch-random",
        f"method={method.get(part, 'lora')}",
        "data=text",
        f"data.path={out_dir / 'corpus.jsonl'}",
        "stage=pretrain",
        "data.packing=true",
        f"data.max_seq_len={workload.seq_len}",
        f"data.batch_size={workload.batch}",
        "data.val_ratio=0",
        "data.contamination.enabled=false",
        f"trainer.max_steps={steps}",
        "trainer.log_every_n_steps=1",
        f"hardware={hardware}",
        "logger=none",
        f"hydra.run.dir={out_dir / 'runs' / part}",
        "overwrite=true",  # the benchmark's own folder: run again with the same --output, it is remade
    ]
    if part in ("fsdp", "deepspeed_zero2"):
        overrides.append("hardware.devices=1")
    if part == "full" or part == "full_fast":
        overrides.append("optim.lr=2e-5")
    on, _ = fast_path(part.endswith("_fast"), workload.hardware == "gpu")
    return overrides + on


def fast_path(wanted: bool, gpu: bool) -> tuple[list[str], dict[str, str]]:
    """Overrides setting the fast-path switches the training config has on (`wanted`) or off, and why any of
    them stays off when wanted."""
    defaults = compose("train", [])
    liger = gpu and importlib.util.find_spec("liger_kernel") is not None
    overrides, notes = [], {}
    for key, fast in FAST_PATHS:
        if _select(defaults, key) is _ABSENT:
            continue
        off = 0 if isinstance(fast, int) and not isinstance(fast, bool) else False
        value = off
        if wanted:
            if key == "train.liger_kernels" and not liger:
                notes[key] = "off: needs a CUDA GPU and liger-kernel" if not gpu else "off: liger-kernel not installed"
            elif key == "train.loss_chunk_size" and liger:
                notes[key] = "off: Liger's fused loss never holds the logits whole"
            elif key == "train.compile" and not gpu:
                notes[key] = "off in a CPU smoke run (compiling would take longer than the run)"
            else:
                value = fast
        overrides.append(f"{key}={str(value).lower()}")
    return overrides, notes


_ABSENT = object()


def _select(cfg, key: str):
    node = cfg
    for name in key.split("."):
        if name not in node:
            return _ABSENT
        node = node[name]
    return node


def _step_meter(warmup: int, cuda: bool):
    """A Lightning callback timing each optimizer step (GPU work finished) and counting its real tokens."""
    import lightning as L
    import torch

    class StepMeter(L.Callback):
        def __init__(self):
            self.steps: list[tuple[float, int]] = []
            self.losses: list[float] = []
            self.peak_gib: float | None = None

        def _sync(self):
            if cuda:
                torch.cuda.synchronize()

        def on_train_start(self, trainer, module):
            if cuda:
                torch.cuda.reset_peak_memory_stats()

        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            self._sync()
            self._started = time.perf_counter()

        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            self._sync()
            self.steps.append((time.perf_counter() - self._started, int(real_token_mask(batch).sum())))

        def on_train_end(self, trainer, module):
            if cuda:
                self.peak_gib = torch.cuda.max_memory_allocated() / GIB

        def figures(self) -> dict:
            return throughput(self.steps, warmup) | {"peak GiB": self.peak_gib}

    return StepMeter()


def throughput(steps: list[tuple[float, int]], warmup: int) -> dict:
    """tokens/s and s/step over the steps after `warmup` (all of them when there are no more)."""
    timed = steps[warmup:] or steps
    seconds = sum(s for s, _ in timed)
    tokens = sum(t for _, t in timed)
    return {
        "steps": len(steps),
        "timed steps": len(timed),
        "tok/s": tokens / seconds if seconds else None,
        "s/step": seconds / len(timed) if timed else None,
        "tokens/step": tokens / len(timed) if timed else None,
        "first step s": steps[0][0] if steps else None,
    }


def model_flops_per_token(cfg, attention_span: float | None = None) -> tuple[float, float]:
    """Model FLOPs per token of the run (no recomputation counted: MFU, not hardware utilisation) and the
    peak FLOP/s of this device. `attention_span`: the packed documents' sum(L^2)/sum(L), which counts the
    attention products packed rows really compute (default a whole row of data.max_seq_len)."""
    device = this_machine()
    settings = replace(settings_from_config(cfg, device, seq_len=round(attention_span or 0) or None),
                       checkpointing=False)  # fmt: skip
    return estimate(cfg, device, settings).flops_per_token, device.peak_tflops * 1e12


def _with_mfu(figures: dict, cfg) -> dict:
    stats = json.loads(Path(cfg.data.path).with_suffix(".stats.json").read_text())
    flops, peak = model_flops_per_token(cfg, stats["attention_span"])
    rate = figures.get("tok/s")
    return figures | {"flops/token": flops, "MFU %": 100 * flops * rate / peak if rate and peak else None}


def _onestop_train(part: str, workload: Workload, out_dir: Path) -> dict:
    """A training part through `invoke train`'s own function, timed step by step."""
    import torch

    overrides = train_overrides(part, workload, out_dir)
    cfg = compose("train", overrides)
    meter = _step_meter(workload.warmup, cuda=torch.cuda.is_available() and workload.hardware == "gpu")
    result = train(cfg, callbacks=[meter])
    figures = meter.figures()
    if part in ("qlora", "fsdp", "deepspeed_zero2"):
        figures["MFU %"] = None  # a few steps prove the path; their rate is mostly warm-up
    else:
        figures = _with_mfu(figures, cfg)
    _, notes = fast_path(part.endswith("_fast"), workload.hardware == "gpu")
    losses = result.metrics.get("train_losses") or []
    return figures | {
        "overrides": overrides,
        "switch notes": notes,
        "trainable params": result.metrics["trainable_params"],
        "total params": result.metrics["total_params"],
        "precision": result.metrics["precision"],
        "first loss": losses[0] if losses else None,
        "last loss": losses[-1] if losses else None,
    }


def _hf_trainer_lora(workload: Workload, out_dir: Path) -> dict:
    """The `lora` part's model, adapter, packed batches and precision, trained by transformers' Trainer."""
    import torch
    from transformers import Trainer, TrainerCallback, TrainingArguments, set_seed

    cfg = compose("train", train_overrides("lora", workload, out_dir))
    set_seed(cfg.seed)
    cuda = torch.cuda.is_available() and workload.hardware == "gpu"
    hardware = trainer_hardware(cfg.hardware)
    model_path = resolve_model_path(cfg.model)
    tokenizer = load_tokenizer(cfg.model, model_path)
    datamodule = SFTDataModule(cfg.data, tokenizer, seed=cfg.seed, stage=cfg.stage)
    datamodule.setup()
    model = method_from_config(cfg.method)(load_causal_lm(cfg.model, weights_dtype(hardware["precision"]), model_path))
    model.train()
    steps: list[tuple[float, int]] = []
    pending = {"tokens": 0, "peak": None}

    class CountingTrainer(Trainer):
        def compute_loss(self, model, inputs, *args, **kwargs):
            pending["tokens"] = int(inputs.pop("token_mask").sum())  # the model takes no such input
            return super().compute_loss(model, inputs, *args, **kwargs)

    class StepTimer(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            if cuda:
                torch.cuda.reset_peak_memory_stats()

        def on_step_begin(self, args, state, control, **kwargs):
            if cuda:
                torch.cuda.synchronize()
            self._started = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            if cuda:
                torch.cuda.synchronize()
            steps.append((time.perf_counter() - self._started, pending["tokens"]))

        def on_train_end(self, args, state, control, **kwargs):
            if cuda:
                pending["peak"] = torch.cuda.max_memory_allocated() / GIB

    precision = str(hardware["precision"])
    args = TrainingArguments(
        output_dir=str(out_dir / "runs" / "hf_lora"),
        per_device_train_batch_size=cfg.data.batch_size,
        max_steps=cfg.trainer.max_steps,
        learning_rate=cfg.optim.lr,
        lr_scheduler_type="cosine",
        warmup_steps=1,
        max_grad_norm=cfg.trainer.gradient_clip_val or 0.0,
        bf16=precision.startswith("bf16"),
        use_cpu=not cuda,
        logging_steps=1,
        save_strategy="no",
        eval_strategy="no",
        report_to="none",
        seed=cfg.seed,
        remove_unused_columns=False,
    )
    trainer = CountingTrainer(
        model=model, args=args, train_dataset=datamodule.train_set, data_collator=datamodule.collate,
        callbacks=[StepTimer()],
    )  # fmt: skip
    trainer.train()
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    figures = throughput(steps, workload.warmup) | {"peak GiB": pending["peak"], "precision": precision}
    return _with_mfu(figures, cfg) | {
        "first loss": losses[0] if losses else None,
        "last loss": losses[-1] if losses else None,
    }


LMDEPLOY_TOOL = {
    "type": "function",
    "function": {
        "name": "multiply",
        "description": "Multiply two integers.",
        "parameters": {
            "type": "object",
            "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
            "required": ["a", "b"],
        },
    },
}


def _lmdeploy(out_dir: Path) -> dict:
    """`invoke deploy.setup` from the carried wheels, then `invoke deploy deploy=lmdeploy` of the random-weight
    model; a chat request and a tool-call request through the openai SDK."""
    overrides = [
        "deploy=lmdeploy",
        "deploy.engine=pytorch",  # the carried wheel has no TurboMind library
        f"deploy.wheels={WHEELS_DIR / 'lmdeploy'}",
        f"deploy.env_dir={out_dir / 'lmdeploy-env'}",
        "model=qwen",
        f"model.path={out_dir / 'model'}",
        "name=bench-gpu",
        "port=0",
        "startup_timeout=100",
    ]
    cfg = compose("deploy", overrides)
    started = time.perf_counter()
    run_setup(cfg)
    setup_s = time.perf_counter() - started
    figures: dict = {"setup s": setup_s, "engine": "pytorch"}
    try:
        figures |= _ask_lmdeploy(cfg, started + setup_s)
    except Exception:
        log = state_dir() / f"{cfg.name}.log"  # LMDeploy's own output says why it did not start or answer
        print(log.read_text()[-4000:] if log.is_file() else f"no LMDeploy log at {log}", flush=True)
        raise
    return figures


def _ask_lmdeploy(cfg, started: float) -> dict:
    from openai import OpenAI

    figures = {}
    with serving(cfg) as deployment:
        figures["start s"] = time.perf_counter() - started
        client = OpenAI(base_url=deployment.base_url, api_key="-", max_retries=0, timeout=60)
        asked = time.perf_counter()
        reply = client.chat.completions.create(
            model=deployment.name, messages=[{"role": "user", "content": "Say hello."}], max_tokens=64,
            temperature=0,
        )  # fmt: skip
        seconds = time.perf_counter() - asked
        figures |= {
            "chat s": seconds,
            "completion tokens": reply.usage.completion_tokens if reply.usage else None,
            "decode tok/s": reply.usage.completion_tokens / seconds if reply.usage else None,
            "chat answered": reply.choices[0].message.content is not None,
        }
        tools_reply = client.chat.completions.create(
            model=deployment.name, messages=[{"role": "user", "content": "What is 47 times 38?"}],
            tools=[LMDEPLOY_TOOL], max_tokens=64, temperature=0,
        )  # fmt: skip
        message = tools_reply.choices[0].message
        # Random weights rarely write a well-formed call; the request must still be accepted and answered.
        figures |= {
            "tool request answered": True,
            "finish reason": tools_reply.choices[0].finish_reason,
            "tool calls": len(message.tool_calls or []),
        }
    return figures


def gpu_test_files() -> list[str]:
    """Test files holding gpu-marked tests: only they are collected, so the box needs only their imports."""
    marked = re.compile(r"^\s*@pytest\.mark\.gpu\b", re.MULTILINE)
    return sorted(
        str(path.relative_to(PROJECT_ROOT))
        for path in (PROJECT_ROOT / "tests").glob("test_*.py")
        if marked.search(path.read_text())
    )


def _pytest_gpu(out_dir: Path) -> dict:
    report = out_dir / "pytest-gpu.xml"
    files = gpu_test_files()
    child = subprocess.run(
        [sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider", f"--junitxml={report}", *files],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
    )
    print(child.stdout[-4000:], child.stderr[-2000:], flush=True)
    if not report.is_file():
        raise OnestopError(f"pytest -m gpu wrote no report (exit {child.returncode})")
    return {"files": files, "exit code": child.returncode, "tests": junit_outcomes(report)}


def junit_outcomes(report: Path) -> list[dict]:
    """Each test case of a JUnit XML report: name, outcome (passed, failed, error, skipped) and why."""
    cases = []
    for case in ElementTree.parse(report).getroot().iter("testcase"):
        outcome, why = "passed", ""
        for kind in ("failure", "error", "skipped"):
            found = case.find(kind)
            if found is not None:
                outcome = {"failure": "failed"}.get(kind, kind)
                why = " ".join((found.get("message") or found.text or "").split())[:240]
                break
        cases.append({"test": case.get("name"), "outcome": outcome, "why": why})
    return cases


def summarize(results: dict) -> dict:
    """The targets, each met, missed, or not measured (None)."""
    parts = {p["name"]: p for p in results["parts"]}

    def figure(name: str, key: str):
        part = parts.get(name, {})
        return part.get(key) if part.get("status") == "ok" else None

    fast_rate, hf_rate = figure("lora_fast", "tok/s"), figure("hf_lora", "tok/s")
    speedup = fast_rate / hf_rate if fast_rate and hf_rate else None
    mfu, peak = figure("lora_fast", "MFU %"), figure("lora_fast", "peak GiB")
    peak = peak * GIB / 1e9 if peak is not None else None  # the target is in GB
    gpu = bool(results.get("environment", {}).get("cuda_available"))
    return {
        "device": results.get("environment", {}).get("device"),
        "lora_mfu_pct": mfu,
        "lora_peak_gb": peak,
        "speedup_vs_hf": speedup,
        "targets": TARGETS,
        # CPU figures say nothing about the GPU targets: a smoke run proves the path, not the speed.
        "met": {
            "lora_mfu_pct": mfu >= TARGETS["lora_mfu_pct"] if gpu and mfu is not None else None,
            "lora_peak_gb": peak <= TARGETS["lora_peak_gb"] if gpu and peak is not None else None,
            "speedup_vs_hf": speedup >= TARGETS["speedup_vs_hf"] if gpu and speedup is not None else None,
        },
        "statuses": {name: part["status"] for name, part in parts.items()},
    }
