"""The estimate says what training does: the device count and precision it trains with, the runs it refuses,
the master weights it keeps; fixes paste as overrides; every recipe fits the GPU its comment names."""

import re
from dataclasses import replace

import pytest
from conftest import TINY_DATA, compose

from onestop.core.paths import RECIPES_DIR
from onestop.selection.devices import COMMON_GPUS, GIB, Device, device_by_name
from onestop.selection.estimate import (
    ASSUMED_GPUS,
    NF4_BYTES_PER_PARAM,
    Settings,
    estimate,
    estimate_devices,
    find_fix,
    memory_breakdown,
)
from onestop.selection.probe import ModelShape
from onestop.selection.report import print_estimate

TINY_GPU = ["model=tiny", "data=alpaca", f"data.path={TINY_DATA}"]
BIG_CPU = Device("a CPU", 4096.0, 1.0, kind="cpu", bf16=True, overhead_gib=0.125)
T4 = device_by_name("t4")
PRECISIONS = ["auto", "bf16-mixed", "bf16-true", "16-mixed", "32-true"]


def test_full_fine_tuning_counts_fp32_master_weights_gradients_and_moments():
    # A model of 1M parameters, all trained: 4 + 4 + 8 bytes each under bf16-mixed, as training holds them.
    cfg = compose(*TINY_GPU, "method=full", "hardware.precision=bf16-mixed")
    result = estimate(cfg, device_by_name("h100"))
    trainable = result.shape.params_trainable
    assert trainable == result.shape.params_total
    assert result.memory.weights == 4 * trainable
    assert result.memory.gradients == 4 * trainable
    assert result.memory.optimizer == 8 * trainable
    assert result.memory.adapter == 0
    # Autocast's bf16 copy of every decoder matmul weight and of the head, kept for the backward pass.
    assert 0 < result.memory.weight_copies <= 2 * trainable
    # bf16-true is pure bf16 (2 + 2 + 4 bytes), which training keeps as asked.
    pure = estimate(compose(*TINY_GPU, "method=full", "hardware.precision=bf16-true"), device_by_name("h100"))
    assert pure.memory.weights == 2 * trainable and pure.memory.optimizer == 4 * trainable


def test_weight_copies_are_a_fixed_cost_not_activations_per_token():
    cfg = compose(*TINY_GPU, "method=full", "hardware.precision=bf16-mixed")
    h100 = device_by_name("h100")
    short, long = (estimate(cfg, h100, replace(estimate(cfg, h100).settings, seq_len=n)) for n in (64, 256))
    assert short.memory.weight_copies == long.memory.weight_copies
    assert long.memory.activations == pytest.approx(4 * short.memory.activations, rel=0.15)
    checkpointed = estimate(cfg, h100, replace(short.settings, checkpointing=True))
    assert checkpointed.memory.weight_copies < short.memory.weight_copies  # one layer recomputed at a time


def test_qlora_cannot_run_on_a_cpu_whatever_its_memory(capsys):
    cfg = compose("model=qwen7b", "method=qlora")
    on_cpu, on_gpu = estimate_devices(cfg, [BIG_CPU, device_by_name("h100")])
    assert on_cpu.memory.total < BIG_CPU.memory_gib * GIB
    assert not on_cpu.fits and on_cpu.cannot_run == "QLoRA needs a CUDA GPU" and on_cpu.fix is None
    assert on_gpu.fits and on_gpu.cannot_run is None
    print_estimate(cfg, [on_cpu, on_gpu])
    assert "no: QLoRA needs a CUDA GPU" in capsys.readouterr().out
    # Where QLoRA does not fit one GPU, sharding is not offered: each GPU would load the whole 4-bit base.
    on_t4 = estimate(cfg, T4)
    assert not on_t4.fits and "hardware=fsdp" not in (find_fix(cfg, T4, on_t4.settings) or "")


def test_qlora_counts_what_peft_raises_to_fp32():
    # prepare_model_for_kbit_training raises every weight that is not 4-bit to fp32: the embeddings, the
    # head and the norms; the residual stream (each checkpointed layer's input) is then fp32 as well.
    result = estimate(compose(*TINY_GPU, "method=qlora"), device_by_name("h100"))
    shape = result.shape
    frozen_not_4bit = shape.params_total - shape.params_trainable - shape.frozen_linear_params
    assert shape.frozen_bytes == 2 * shape.frozen_linear_params + 4 * frozen_not_4bit
    assert shape.layer_input_per_token == 4 * shape.hidden_size
    assert result.memory.weights == pytest.approx(
        shape.frozen_linear_params * NF4_BYTES_PER_PARAM + 4 * frozen_not_4bit
    )


def test_a_gpu_config_cannot_run_on_a_cpu():
    result = estimate(compose(*TINY_GPU, "hardware=gpu"), BIG_CPU)
    assert not result.fits and "needs a CUDA GPU" in result.cannot_run
    assert estimate(compose(*TINY_GPU, "hardware=cpu"), BIG_CPU).fits


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("method", ["lora", "full"])
def test_the_t4_row_never_trains_in_bf16(precision, method):
    result = estimate(compose(*TINY_GPU, f"method={method}", f"hardware.precision={precision}"), T4)
    assert not result.settings.precision.startswith("bf16")
    if precision.startswith("bf16"):
        assert result.settings.precision == "16-mixed"
        assert any("has no bf16" in note for note in result.notes)


def test_every_gpu_is_estimated_for_the_count_asked_or_an_assumed_one():
    h100 = device_by_name("h100")
    every = estimate(compose("model=qwen7b", "method=full", "hardware=fsdp"), h100)
    assert every.settings.devices == ASSUMED_GPUS
    assert any(f"estimated as {ASSUMED_GPUS} GPUs" in note for note in every.notes)
    eight = estimate(compose("model=qwen7b", "method=full", "hardware=fsdp", "hardware.devices=8"), h100)
    assert eight.settings.devices == 8 and not any("GPUs per node" in note for note in eight.notes)
    # FSDP shards weights, gradients and moments: 8 GPUs hold about a quarter of what 2 do.
    sharded = ("weights", "gradients", "optimizer")
    per_device = {n: sum(getattr(e.memory, k) for k in sharded) for n, e in ((2, every), (8, eight))}
    assert per_device[8] < per_device[2] / 3
    # This machine's own GPUs are counted, not assumed.
    here = replace(h100, name="this GPU", count=4)
    assert estimate(compose("model=qwen7b", "method=full", "hardware=fsdp"), here).settings.devices == 4


@pytest.mark.parametrize("base", [["model=qwen7b", "method=full"], ["model=qwen7b", "method=full", "hardware=gpu"]])
def test_a_sharding_fix_pastes_after_the_run_and_fits(base):
    a100 = device_by_name("a100 80")
    cfg = compose(*base)
    result = estimate(cfg, a100)
    assert not result.fits
    fix = find_fix(cfg, a100, result.settings)
    assert fix and "hardware=fsdp hardware.devices=" in fix
    fixed = compose(*base, *fix.split())
    assert fixed.hardware.strategy == "fsdp"
    after = estimate(fixed, a100)
    assert after.fits and after.settings.devices == int(re.search(r"hardware.devices=(\d+)", fix).group(1))


def _claims(path) -> list[str]:
    """The comment lines at the top of a recipe."""
    return [line for line in path.read_text().splitlines() if line.startswith("#")]


RECIPES = sorted(RECIPES_DIR.glob("*.yaml"))
SIZED = [p for p in RECIPES if any(re.search(r"\b(\d+) ?GB GPU", line) for line in _claims(p))]


def test_the_recipes_that_name_a_gpu_size_are_found():
    assert "qwen2_5_7b_qlora_24gb" in [p.stem for p in SIZED]


@pytest.mark.parametrize("recipe", SIZED, ids=lambda p: p.stem)
def test_a_recipe_fits_the_gpu_its_comment_names(recipe):
    size = next(int(m.group(1)) for line in _claims(recipe) if (m := re.search(r"\b(\d+) ?GB GPU", line)))
    gpus = [d for d in COMMON_GPUS if d.name.endswith(f" {size}GB")]
    assert gpus, f"no common GPU of {size} GB"
    cfg = compose(f"recipe={recipe.stem}")
    for gpu in gpus:
        result = estimate(cfg, gpu)
        total = result.memory.total / GIB
        assert result.fits, (
            f"{recipe.stem}: {total:.1f} GiB on {gpu.name} ({gpu.memory_gib} GiB): {result.memory.gib()}"
        )


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.stem)
def test_a_recipe_trains_on_the_gpu_count_its_comment_names(recipe):
    counts = [int(m.group(1)) for line in _claims(recipe) if (m := re.search(r"\b(\d+) GPUs\b", line))]
    for count in counts:
        cfg = compose(f"recipe={recipe.stem}")
        assert cfg.hardware.devices * cfg.hardware.num_nodes == count


def test_the_breakdown_of_a_full_fine_tune_by_hand():
    shape = ModelShape(
        params_total=1000,
        params_embedding=100,
        params_head=0,
        params_trainable=1000,
        trainable_bytes=4000,  # fp32 master weights
        frozen_bytes=0,
        frozen_linear_params=0,
        matmul_params=900,
        trainable_matmul_params=900,
        layers=3,
        hidden_size=8,
        vocab_size=10,
        attention_width=8,
        saved_per_token=10.0,
        layer_saved_per_token=3.0,
        layer_input_per_token=1.0,
        weight_copy_bytes=1500,
        head_copy_bytes=200,
    )
    settings = Settings(1, 10, 1, 1, "auto", False, False, "bf16-mixed")
    memory, _ = memory_breakdown(shape, settings, T4)
    assert (memory.weights, memory.gradients, memory.optimizer) == (4000, 4000, 8000)
    assert memory.weight_copies == 1500 + 200
    checkpointed, _ = memory_breakdown(shape, replace(settings, checkpointing=True), T4)
    assert checkpointed.weight_copies == 1500 / 3 + 200  # the recomputed layer's, and the head's
