"""Every fine-tuning method trains the tiny model (the training loss falls) and its output reloads exactly."""

import csv
import inspect
import re

import pytest
import torch
from conftest import TINY, TINY_DATA, compose, run_invoke
from peft import PeftModel
from transformers import AutoModelForCausalLM

from onestop.core.errors import OnestopError
from onestop.data.packing import model_inputs
from onestop.methods import apply_lora, lora_arguments
from onestop.models import load_causal_lm
from onestop.training.train import train

METHODS = {
    "lora": ["method=lora"],
    "lora-rslora-all-linear": ["method=lora", "method.use_rslora=true", "method.target_modules=[all-linear]"],
    "dora": ["method=dora"],
    "full": ["method=full", "optim.lr=1e-3"],
    "freeze-layers": ["method=freeze", "method.trainable_layers=1", "optim.lr=1e-3"],
    "freeze-modules": ["method=freeze", "method.trainable_modules=[mlp]", "optim.lr=1e-3"],
    "prompt-tuning": ["method=ptuning", "method.kind=prompt", "method.num_virtual_tokens=8", "optim.lr=0.3"],
    "p-tuning": ["method=ptuning", "method.kind=p_tuning", "method.num_virtual_tokens=8", "optim.lr=3e-2"],
    "prefix-tuning": ["method=ptuning", "method.kind=prefix", "method.num_virtual_tokens=8", "optim.lr=0.1"],
}


def train_losses(run_dir) -> list[float]:
    with open(run_dir / "csv" / "metrics.csv") as handle:
        return [float(row["train/loss"]) for row in csv.DictReader(handle) if row.get("train/loss")]


@pytest.mark.parametrize("method", METHODS, ids=list(METHODS))
def test_method_lowers_training_loss_and_reloads_exactly(method, tmp_path):
    # One fixed batch, seen every step: any method that learns must lower its loss on it.
    fixed = tmp_path / "fixed.jsonl"
    fixed.write_text("".join(TINY_DATA.read_text().splitlines(keepends=True)[:4]))
    cfg = compose(
        *TINY,
        f"data.path={fixed}",
        f"data.val_path={fixed}",
        "logger=csv",
        "optim.lr=1e-2",
        "trainer.max_steps=12",
        "trainer.max_epochs=100",
        "trainer.log_every_n_steps=1",
        "scheduler.warmup_ratio=0",
        *METHODS[method],
        run_dir=tmp_path / "run",
    )
    result = train(cfg)
    losses = train_losses(result.run_dir)
    assert len(losses) == 12
    assert losses[-1] < losses[0] - 0.1 and min(losses[-3:]) < min(losses[:3]), losses

    batch = next(iter(result.datamodule.val_dataloader()))
    inputs = model_inputs(batch)  # a padding-free batch: position ids, no attention mask
    if (result.run_dir / "adapter").is_dir():
        reloaded = PeftModel.from_pretrained(load_causal_lm(cfg.model), result.run_dir / "adapter")
    else:
        reloaded = AutoModelForCausalLM.from_pretrained(result.run_dir / "model")
    with torch.no_grad():
        expected = result.model.eval()(**inputs).logits
        got = reloaded.eval()(**inputs).logits
    torch.testing.assert_close(got, expected)


def test_qlora_on_cpu_fails_in_one_line_before_loading(tmp_path):
    result = run_invoke("train", *TINY, "method=qlora", "logger=none", f"hydra.run.dir={tmp_path / 'run'}")
    assert result.returncode == 2
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("onestop train: error: method=qlora: a 4-bit base needs a CUDA GPU")
    assert not (tmp_path / "run").exists()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_qlora_trains_on_a_gpu(tmp_path):
    pytest.importorskip("bitsandbytes")
    cfg = compose(
        *[o for o in TINY if o != "hardware=cpu"],
        "hardware=gpu",
        "method=qlora",
        "logger=csv",
        "trainer.max_steps=12",
        "trainer.log_every_n_steps=1",
        "optim.lr=1e-2",
        run_dir=tmp_path / "run",
    )
    result = train(cfg)
    losses = train_losses(result.run_dir)
    assert sum(losses[-3:]) < sum(losses[:3])
    assert (result.run_dir / "adapter" / "adapter_model.safetensors").is_file()


def test_gradient_checkpointing_trains_to_the_same_weights(tmp_path):
    def run(name, *extra):
        cfg = compose(*TINY, "logger=none", "trainer.max_steps=3", *extra, run_dir=tmp_path / name)
        return train(cfg).model

    plain = run("plain")
    recomputed = run("recomputed", "hardware.gradient_checkpointing=true")
    assert recomputed.get_base_model().is_gradient_checkpointing
    for (name, expected), (_, got) in zip(plain.named_parameters(), recomputed.named_parameters(), strict=True):
        if expected.requires_grad:
            torch.testing.assert_close(got, expected, msg=name)


@pytest.mark.parametrize(
    ("hardware", "message"),
    [
        ("fsdp", "no CUDA GPU is visible for FSDP; on CPU use hardware=fsdp_cpu"),
        ("deepspeed_zero2", "no CUDA GPU is visible for DeepSpeed; on CPU use hardware=deepspeed_zero2_cpu"),
        ("deepspeed_zero3", "no CUDA GPU is visible for DeepSpeed; on CPU use hardware=deepspeed_zero3_cpu"),
    ],
)
def test_gpu_strategies_without_a_gpu_fail_in_one_line(tmp_path, hardware, message):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    cpu_defaults = [o for o in TINY if not o.startswith("hardware=")]
    cfg = compose(*cpu_defaults, f"hardware={hardware}", "logger=none", run_dir=tmp_path / "run")
    with pytest.raises(OnestopError, match=re.escape(message)):
        train(cfg)
    assert not (tmp_path / "run").exists()


def test_an_unknown_deepspeed_strategy_names_the_known_ones(tmp_path):
    cfg = compose(
        *TINY,
        "hardware=deepspeed_zero3_cpu",
        "hardware.strategy=deepspeed_stage_4",
        "logger=none",
        run_dir=tmp_path / "run",
    )  # fmt: skip
    with pytest.raises(OnestopError, match="hardware.strategy=deepspeed_stage_4: not a DeepSpeed strategy") as error:
        train(cfg)
    assert "deepspeed_stage_3_offload" in str(error.value)
    assert not (tmp_path / "run").exists()


def test_qloras_lora_half_takes_every_argument_lora_declares():
    """The estimate applies QLoRA's LoRA half by itself: every field apply_lora takes reaches it, and only those."""
    node = compose("method=qlora", "method.use_rslora=true", "method.r=4").method
    arguments = lora_arguments(node)
    assert set(arguments) == set(inspect.signature(apply_lora).parameters) - {"model"}
    assert arguments["r"] == 4 and arguments["use_rslora"] is True
