"""Fault tolerance and multi-process training, through the real `invoke train` in subprocesses.

A run killed with SIGKILL mid-epoch and resumed with `resume=auto` ends with bitwise the same weights as
an uninterrupted run, with one process and with two (DDP, FSDP and DeepSpeed ZeRO-2/3); SIGTERM saves a
checkpoint first; two DDP processes on CPU end in sync; FSDP and ZeRO end with the weights DDP ends with.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import ASSETS, TINY, TINY_DATA, compose
from safetensors.torch import load_file

from onestop.core.errors import OnestopError
from onestop.core.paths import PROJECT_ROOT
from onestop.training.train import train

# 20 records, batch 2: 9 steps per epoch after the validation split, so 30 steps cross epoch boundaries.
RESUMABLE = [
    *[o for o in TINY if not o.startswith("data.batch_size")],
    "data.batch_size=2",
    "logger=csv",
    "trainer.max_steps=30",
    "trainer.max_epochs=10",
    "checkpoint.every_n_steps=3",
    "checkpoint.keep_last=2",
    "optim.lr=5e-3",
]


def invoke_cmd(*args: str) -> list[str]:
    return [str(Path(sys.executable).parent / "invoke"), *args]


def train_cmd(base: list[str], *extra: str) -> list[str]:
    """`invoke train` with `base` overrides, then `extra`; a `hardware=` in `extra` replaces the one in `base`."""
    replaced = {o.split("=", 1)[0] for o in extra if o.startswith("hardware=")}
    return invoke_cmd("train", *[o for o in base if o.split("=", 1)[0] not in replaced], *extra)


def start(run_dir: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen(
        train_cmd(RESUMABLE, *extra, f"hydra.run.dir={run_dir}"),
        cwd=PROJECT_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group: a multi-process run is killed whole, as a node dies
    )


def finish(run_dir: Path, *extra: str, base: list[str] = RESUMABLE) -> subprocess.CompletedProcess:
    result = subprocess.run(
        train_cmd(base, *extra, f"hydra.run.dir={run_dir}"),
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def wait_for_checkpoint(process: subprocess.Popen, run_dir: Path, step: int, timeout: float = 120) -> None:
    target = run_dir / "checkpoints" / f"step{step:07d}.ckpt"
    deadline = time.monotonic() + timeout
    while not target.exists():
        assert process.poll() is None, f"training ended before step {step}: {process.stderr.read()[-2000:]}"
        assert time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.02)


def adapter_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(run_dir / "adapter" / "adapter_model.safetensors")


def exported_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    """The adapter of a LoRA run, or the model of a full fine-tune."""
    adapter = run_dir / "adapter" / "adapter_model.safetensors"
    return load_file(adapter if adapter.exists() else run_dir / "model" / "model.safetensors")


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("uninterrupted") / "run"
    finish(run_dir)
    return adapter_weights(run_dir)


def assert_bitwise_equal(got: dict, expected: dict) -> None:
    assert got.keys() == expected.keys()
    for name in expected:
        assert torch.equal(got[name], expected[name]), name


@pytest.mark.slow
def test_sigkill_then_resume_auto_gives_identical_weights(tmp_path, uninterrupted):
    run_dir = tmp_path / "run"
    process = start(run_dir)
    wait_for_checkpoint(process, run_dir, 12)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL
    assert not (run_dir / "adapter").exists(), "the run was killed before it finished"
    leftovers = [p.name for p in (run_dir / "checkpoints").iterdir() if p.name.startswith(".")]
    steps = sorted(p.name for p in (run_dir / "checkpoints").glob("step*.ckpt"))
    assert len(steps) <= 2 + len(leftovers), steps  # keep_last=2 (a temp file may be mid-write)

    result = finish(run_dir, "resume=auto")
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["steps"] == 30 and metrics["resumed_from"].endswith(".ckpt")
    assert_bitwise_equal(adapter_weights(run_dir), uninterrupted)
    assert "Run directory:" in result.stdout


@pytest.mark.slow
def test_sigterm_saves_a_checkpoint_and_the_run_resumes_exactly(tmp_path, uninterrupted):
    run_dir = tmp_path / "run"
    process = start(run_dir)
    wait_for_checkpoint(process, run_dir, 6)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 2, stderr[-2000:]
    assert "stopped by SIGTERM after step" in stderr.strip().splitlines()[-1]
    assert (run_dir / "checkpoints" / "sigterm.ckpt").is_file()
    finish(run_dir, "resume=auto")
    assert_bitwise_equal(adapter_weights(run_dir), uninterrupted)
    resumed_from = json.loads((run_dir / "metrics.json").read_text())["resumed_from"]
    assert resumed_from == str(run_dir / "checkpoints" / "sigterm.ckpt")  # the one resumed, not the newest at the end


def test_resume_auto_without_checkpoints_says_so(tmp_path):
    with pytest.raises(OnestopError, match=r"resume=auto: no checkpoint in .*new/checkpoints; set hydra.run.dir"):
        train(compose(*TINY, "resume=auto", run_dir=tmp_path / "new"))
    assert not (tmp_path / "new").exists()


@pytest.fixture(scope="module")
def unbroken_adapter(tmp_path_factory):
    """The adapter an uninterrupted run ends with, by hardware; each trained once for the tests that compare."""
    adapters = {}

    def adapter(hardware: str) -> dict[str, torch.Tensor]:
        if hardware not in adapters:
            run_dir = tmp_path_factory.mktemp(hardware) / "run"
            finish(run_dir, f"hardware={hardware}")
            adapters[hardware] = adapter_weights(run_dir)
        return adapters[hardware]

    return adapter


def signal_whole_run(run_dir: Path, hardware: str, after_step: int, signum: int) -> subprocess.Popen:
    """Start a run and, once the checkpoint of `after_step` exists, signal every process of it at once."""
    process = start(run_dir, f"hardware={hardware}")
    wait_for_checkpoint(process, run_dir, after_step)
    os.killpg(process.pid, signum)
    return process


@pytest.mark.slow
@pytest.mark.parametrize("hardware", ["ddp_cpu", "fsdp_cpu", "deepspeed_zero2_cpu", "deepspeed_zero3_cpu"])
def test_two_process_run_killed_and_resumed_ends_as_an_uninterrupted_one(tmp_path, unbroken_adapter, hardware):
    """Every rank gets its own data position and random generators back, under DDP, FSDP and DeepSpeed ZeRO
    (whose checkpoints are directories of per-rank shards)."""
    run_dir = tmp_path / "run"
    signal_whole_run(run_dir, hardware, 9, signal.SIGKILL).wait()
    assert not (run_dir / "adapter").exists(), "the run was killed before it finished"

    finish(run_dir, f"hardware={hardware}", "resume=auto")
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["world_size"] == 2 and metrics["resumed_from"].endswith(".ckpt")
    assert_bitwise_equal(adapter_weights(run_dir), unbroken_adapter(hardware))
    if hardware.startswith("deepspeed"):
        # The tiny model ties its output head to the embedding: neither name of that frozen tensor is kept.
        for path in (run_dir / "checkpoints" / "last.ckpt" / "checkpoint").glob("*model_states.pt"):
            names = list(torch.load(path, weights_only=False)["module"])
            assert names and all(".lora_" in name for name in names), (path.name, names)


@pytest.mark.slow
@pytest.mark.parametrize("hardware", ["ddp_cpu", "deepspeed_zero3_cpu"])
def test_sigterm_to_every_rank_stops_them_together_and_the_run_resumes_exactly(tmp_path, unbroken_adapter, hardware):
    """As SLURM preempts a job: every process of the run gets SIGTERM at once; they agree on one step,
    save one checkpoint together, and exit."""
    run_dir = tmp_path / "run"
    process = signal_whole_run(run_dir, hardware, 6, signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 2, stderr[-2000:]
    assert "stopped by SIGTERM after step" in stderr.strip().splitlines()[-1]
    assert (run_dir / "checkpoints" / "sigterm.ckpt").exists()

    finish(run_dir, f"hardware={hardware}", "resume=auto")
    assert_bitwise_equal(adapter_weights(run_dir), unbroken_adapter(hardware))


def train_two_processes(run_dir: Path, *overrides: str) -> dict:
    finish(run_dir, *overrides, base=[*TINY, "logger=csv", "trainer.max_steps=4"])
    return json.loads((run_dir / "metrics.json").read_text())


@pytest.fixture(scope="module")
def ddp_runs(tmp_path_factory) -> dict:
    """Two-process DDP runs, by method: what the sharded strategies are compared with."""
    root = tmp_path_factory.mktemp("ddp")
    runs = {}
    for method in ("lora", "full"):
        metrics = train_two_processes(root / method, "hardware=ddp_cpu", f"method={method}")
        runs[method] = (metrics, exported_weights(root / method))
    return runs


@pytest.mark.slow
@pytest.mark.parametrize(
    ("hardware", "method", "weights_sharded"),
    [
        ("fsdp_cpu", "lora", True),
        ("fsdp_cpu", "full", True),
        ("deepspeed_zero2_cpu", "full", False),
        ("deepspeed_zero3_cpu", "lora", True),
        ("deepspeed_zero3_cpu", "full", True),
    ],
)
def test_sharded_training_ends_where_ddp_ends(tmp_path, ddp_runs, hardware, method, weights_sharded):
    """Sharding changes where the weights (or, under ZeRO-2, the gradients and optimizer state) live, not
    what training computes; the export gathers every shard."""
    ddp, replicated = ddp_runs[method]
    sharded_run = train_two_processes(tmp_path / "run", f"hardware={hardware}", f"method={method}")

    total = sharded_run["total_params"]
    assert ddp["parameters_per_rank"] == [total, total]
    held = sharded_run["parameters_per_rank"]
    if weights_sharded:
        assert len(held) == 2 and max(held) < 0.6 * total
        assert sharded_run["replicas_in_sync"] is None
    else:
        assert held == [total, total] and sharded_run["replicas_in_sync"] is True
    assert ddp["replicas_in_sync"] is True
    assert sharded_run["train_losses"] == pytest.approx(ddp["train_losses"], rel=1e-6)
    sharded = exported_weights(tmp_path / "run")
    assert sharded.keys() == replicated.keys()
    for name in replicated:
        torch.testing.assert_close(sharded[name], replicated[name], rtol=1e-5, atol=1e-6, msg=name)


@pytest.mark.slow
@pytest.mark.parametrize("hardware", ["fsdp_cpu", "deepspeed_zero3_cpu"])
def test_sharded_training_with_the_gpu_settings_trains_and_its_adapter_reloads(tmp_path, hardware):
    """hardware=fsdp's and hardware=deepspeed_zero3's bf16 mixed precision and activation checkpointing,
    on CPU ranks."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    run_dir = tmp_path / "run"
    metrics = train_two_processes(
        run_dir,
        f"hardware={hardware}",
        "hardware.precision=bf16-mixed",
        "hardware.gradient_checkpointing=true",
        "trainer.max_steps=8",
        "optim.lr=5e-3",
    )  # fmt: skip
    assert metrics["precision"] == "bf16-mixed" and metrics["steps"] == 8
    assert metrics["train_losses"][-1] < metrics["train_losses"][0]

    base = AutoModelForCausalLM.from_pretrained(ASSETS / "tiny-qwen2")
    ids = torch.arange(3, 19).unsqueeze(0)
    before = base(input_ids=ids).logits
    tuned = PeftModel.from_pretrained(base, run_dir / "adapter")
    assert not torch.allclose(tuned(input_ids=ids).logits, before), "the exported adapter changes nothing"


@pytest.mark.slow
def test_ddp_two_cpu_processes_end_in_sync(tmp_path):
    run_dir = tmp_path / "run"
    result = subprocess.run(
        invoke_cmd(
            "train",
            *TINY,
            "hardware=ddp_cpu",
            "logger=csv",
            "trainer.max_steps=4",
            f"data.path={TINY_DATA}",
            f"hydra.run.dir={run_dir}",
        ),  # fmt: skip
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["world_size"] == 2 and metrics["replicas_in_sync"] is True
    assert metrics["steps"] == 4
    assert (run_dir / "adapter" / "adapter_model.safetensors").is_file()


GPU_STRATEGIES = ["fsdp", "deepspeed_zero2", "deepspeed_zero3"]


@pytest.mark.gpu
@pytest.mark.skipif(torch.cuda.device_count() < 1, reason="needs a CUDA GPU")
@pytest.mark.parametrize("hardware", GPU_STRATEGIES)
def test_sharded_strategies_train_on_gpus(tmp_path, hardware):
    if hardware.startswith("deepspeed"):
        pytest.importorskip("deepspeed")
    run_dir = tmp_path / "run"
    result = subprocess.run(
        invoke_cmd(
            "train",
            *[o for o in TINY if o != "hardware=cpu"],
            f"hardware={hardware}",
            "logger=csv",
            "trainer.max_steps=4",
            f"hydra.run.dir={run_dir}",
        ),  # fmt: skip
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["steps"] == 4
    assert (run_dir / "adapter" / "adapter_model.safetensors").is_file()
