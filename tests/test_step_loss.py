"""One optimizer step computes the same gradient whatever the batch shape: one batch of 8, 4 accumulated
batches of 2, or 2 processes × 2 accumulated batches of 2 (DDP, and DeepSpeed ZeRO-2).

Each run trains the tiny model (all weights) for one step and records the gradients the optimizer is about
to apply (after accumulation and the all-reduce across ranks, before clipping). The answers of the test
data differ in length, so normalising each micro-batch by its own token count would make them differ.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import TINY, compose

from onestop.core.paths import PROJECT_ROOT
from onestop.data.sft import SFTDataModule
from onestop.data.windows import STEP_TOKENS, StepWindowLoader, loss_tokens
from onestop.models import load_tokenizer, resolve_model_path

# What the runs share: full fine-tuning, fp32 on CPU, no clipping, the same 8 examples in the first step.
ONE_STEP = [*TINY, "method=full", "logger=none", "trainer.max_steps=1", "trainer.gradient_clip_val=null",
            "data.packing=false", "data.val_ratio=0"]  # fmt: skip
SHAPES = {
    "batch 8": ["data.batch_size=8"],
    "batch 2 x accumulate 4": ["data.batch_size=2", "trainer.accumulate_grad_batches=4"],
    "2 processes x batch 2 x accumulate 2": [
        "hardware=ddp_cpu",
        "data.batch_size=2",
        "trainer.accumulate_grad_batches=2",
    ],  # fmt: skip
    # DeepSpeed divides by the accumulation steps itself, on top of Lightning
    "DeepSpeed ZeRO-2, 2 processes x batch 2 x accumulate 2": [
        "hardware=deepspeed_zero2_cpu",
        "data.batch_size=2",
        "trainer.accumulate_grad_batches=2",
    ],  # fmt: skip
}

# Run as a script (not `invoke train`) so the gradients can be recorded; Lightning's DDP launcher starts the
# second rank by running this same script again.
RECORD_FIRST_STEP_GRADIENTS = """
import sys
from pathlib import Path

import lightning as L
import torch

from onestop.config.compose import compose
from onestop.training.train import train


class RecordGradients(L.Callback):
    recorded = False

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        engine = getattr(trainer.strategy, "deepspeed_engine", None)
        if self.recorded or (engine is not None and not engine.is_gradient_accumulation_boundary()):
            return
        self.recorded = True
        if engine is None:
            grads = {name: p.grad for name, p in pl_module.model.named_parameters() if p.grad is not None}
        else:  # ZeRO keeps gradients in its own partitions; every rank joins in gathering them
            from deepspeed.utils import safe_get_full_grad

            grads = {name: safe_get_full_grad(p) for name, p in pl_module.model.named_parameters() if p.requires_grad}
        if trainer.is_global_zero:
            recorded = {name: g.detach().float().clone() for name, g in grads.items()}
            torch.save(recorded, Path(sys.argv[1]) / "gradients.pt")


run_dir = Path(sys.argv[1])
train(compose("train", [*sys.argv[2:], f"hydra.run.dir={run_dir}"]), callbacks=[RecordGradients()])
"""


def first_step_gradients(tmp_path: Path, name: str, overrides: list[str]) -> dict[str, torch.Tensor]:
    script = tmp_path / "record_gradients.py"
    script.write_text(RECORD_FIRST_STEP_GRADIENTS)
    run_dir = tmp_path / "".join(c if c.isalnum() else "_" for c in name)
    hardware = [o for o in overrides if o.startswith("hardware=")]
    base = [o for o in ONE_STEP if not (hardware and o.startswith("hardware="))]
    result = subprocess.run(
        [sys.executable, str(script), str(run_dir), *base, *overrides],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return torch.load(run_dir / "gradients.pt", weights_only=True)


@pytest.mark.slow
def test_batch_shape_does_not_change_the_gradient(tmp_path):
    gradients = {name: first_step_gradients(tmp_path, name, overrides) for name, overrides in SHAPES.items()}
    reference = gradients["batch 8"]
    assert reference and all(g.abs().sum() > 0 for g in reference.values())
    for name, got in gradients.items():
        assert got.keys() == reference.keys(), name
        for key in reference:
            # fp32 sums taken in another order: a few ulps, far below the ~10% a per-micro-batch mean shifts them
            torch.testing.assert_close(got[key], reference[key], rtol=1e-4, atol=1e-6, msg=f"{name}: {key}")


def test_every_micro_batch_of_a_step_carries_the_steps_token_count():
    cfg = compose(*TINY, "data.batch_size=2", "data.packing=false", "data.val_ratio=0")
    tokenizer = load_tokenizer(cfg.model, resolve_model_path(cfg.model))
    data = SFTDataModule(cfg.data, tokenizer, seed=cfg.seed)
    data.setup()
    loader = StepWindowLoader(data.train_set, batch_size=2, collate_fn=data.collate, accumulate=4)
    batches = list(loader)
    windows = [batches[start : start + 4] for start in range(0, len(batches), 4)]
    assert len(windows[-1]) < 4, "the data should end in a short window, as an epoch can"
    for window in windows:
        counts = {float(batch[STEP_TOKENS]) for batch in window}
        assert counts == {float(sum(loss_tokens(batch) for batch in window))}
    per_batch = [loss_tokens(batch) for batch in batches]
    assert len(set(per_batch)) > 1, "equal micro-batch token counts would not tell the normalisations apart"

    resumed = StepWindowLoader(data.train_set, batch_size=2, collate_fn=data.collate, accumulate=4,
                               batches_done=lambda: 6)  # fmt: skip
    # A run resumed 6 batches into the epoch (in a window of 4) starts with the 2 that finish its window.
    first = next(iter(resumed))
    assert float(first[STEP_TOKENS]) == sum(per_batch[:2]), json.dumps(per_batch)
