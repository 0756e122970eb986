"""Memory and time estimates before anything loads: the arithmetic, the meta-device probe against the real
model, the pre-flight refusal, the micro-batch chosen for a global batch, and the two commands."""

import json
import math
from dataclasses import replace

import pytest
import torch
import yaml
from conftest import TINY, TINY_DATA, compose, run_invoke, saved_tensor_bytes

from onestop.config.groups import list_group_options
from onestop.methods import method_from_config
from onestop.models import load_causal_lm
from onestop.selection.devices import GIB, Device, device_by_name
from onestop.selection.estimate import (
    LOGIT_BYTES,
    NF4_BYTES_PER_PARAM,
    Settings,
    estimate,
    find_fix,
    flops_per_token,
    memory_breakdown,
    settings_from_config,
)
from onestop.selection.probe import ModelShape, probe

TINY_AUTO = ["model=tiny", "data=alpaca", f"data.path={TINY_DATA}"]  # precision chosen per device
CPU = Device("test CPU", 16.0, 1.0, kind="cpu", bf16=False, efficiency=0.5, overhead_gib=0.25)
SHAPE = ModelShape(
    params_total=1_100_000,
    params_embedding=100_000,
    params_head=0,
    params_trainable=100_000,
    trainable_bytes=400_000,  # fp32 adapter
    frozen_bytes=2_000_000,  # 1M frozen bf16 parameters
    frozen_linear_params=800_000,
    matmul_params=1_000_000,
    trainable_matmul_params=100_000,
    layers=4,
    hidden_size=64,
    vocab_size=1000,
    attention_width=64,
    saved_per_token=1000.0,
    layer_saved_per_token=200.0,
    layer_input_per_token=128.0,
    backward_frozen_matmul_params=900_000,
    backward_layers=4,
    adapter=True,
)
SETTINGS = Settings(
    micro_batch=2,
    seq_len=100,
    accumulation=1,
    devices=1,
    strategy="auto",
    checkpointing=False,
    qlora=False,
    precision="bf16-mixed",
)


def test_breakdown_adds_up_by_hand():
    memory, checkpointed = memory_breakdown(SHAPE, SETTINGS, CPU)
    tokens = 2 * 100
    assert memory.weights == 2_000_000
    assert memory.adapter == 400_000  # an adapter: far smaller than the frozen base
    assert memory.gradients == 400_000
    assert memory.optimizer == 800_000  # AdamW: two moments per trainable parameter
    assert memory.activations == 1000 * tokens
    assert memory.logits == tokens * 1000 * LOGIT_BYTES["half"]
    assert memory.overhead == 0.25 * GIB
    # Checkpointing keeps each layer's input, what lies outside the layers, and one layer being recomputed.
    assert checkpointed == tokens * (4 * 128 + (1000 - 4 * 200) + 200)
    assert memory.total == pytest.approx(
        2_000_000 + 400_000 * 4 + 200_000 + tokens * 1000 * LOGIT_BYTES["half"] + 0.25 * GIB
    )


def test_qlora_stores_the_decoder_linears_in_four_bits():
    memory, _ = memory_breakdown(SHAPE, replace(SETTINGS, qlora=True), CPU)
    assert memory.weights == pytest.approx(2_000_000 - 800_000 * 2 + 800_000 * NF4_BYTES_PER_PARAM)


def test_sharding_divides_what_each_strategy_shards():
    full = replace(SHAPE, trainable_bytes=2_000_000, frozen_bytes=0, params_trainable=1_000_000, adapter=False)
    alone, _ = memory_breakdown(full, SETTINGS, CPU)
    assert alone.adapter == 0 and alone.weights == 2_000_000  # full fine-tuning trains the weights themselves
    ddp, _ = memory_breakdown(full, replace(SETTINGS, devices=4, strategy="ddp"), CPU)
    assert ddp.weights == alone.weights and ddp.gradients == 2 * alone.gradients  # DDP's buckets
    zero2, _ = memory_breakdown(full, replace(SETTINGS, devices=4, strategy="deepspeed_stage_2"), CPU)
    assert zero2.weights == alone.weights
    assert zero2.gradients == alone.gradients / 4
    assert zero2.optimizer == 1_000_000 * 12 / 4  # fp32 master weights and moments, sharded
    fsdp, _ = memory_breakdown(full, replace(SETTINGS, devices=4, strategy="fsdp"), CPU)
    assert fsdp.weights == 2_000_000 / 4 + 2_000_000 / 4  # a quarter, plus one gathered layer of four
    assert fsdp.optimizer == alone.optimizer / 4


def test_flops_per_token_by_hand():
    attention = 2 * 4 * 100 * 64
    lora = flops_per_token(SHAPE, SETTINGS)
    assert lora == 2 * 1_000_000 + 4 * 100_000 + 2 * 900_000 + 3 * attention
    full = replace(SHAPE, trainable_matmul_params=1_000_000, backward_frozen_matmul_params=0)
    assert flops_per_token(full, SETTINGS) == 6 * 1_000_000 + 3 * attention
    # Checkpointing runs the decoder forward again (its matmuls, not the head's 100k, and its attention).
    assert flops_per_token(full, replace(SETTINGS, checkpointing=True)) == 6 * 1_000_000 + 1_800_000 + 4 * attention
    # Freeze tuning of the last of 4 layers: the backward pass never goes below it.
    freeze = replace(SHAPE, trainable_matmul_params=200_000, backward_frozen_matmul_params=100_000, backward_layers=1)
    assert flops_per_token(freeze, SETTINGS) == 2 * 1_000_000 + 4 * 200_000 + 2 * 100_000 + attention + attention / 2


@pytest.mark.parametrize("method", ["lora", "full", "freeze"])
def test_the_meta_probe_counts_what_the_real_model_holds(method):
    """Parameters, trainable parameters and the activations autograd saves: the fake-tensor probe against the
    same forward pass on the real tiny model, in fp32."""
    cfg = compose(*TINY, f"method={method}", "data.max_seq_len=64")
    from onestop.models.zoo import architecture_config

    shape = probe(architecture_config(cfg.model)[0], cfg.method, "float32", None, 64)

    model = method_from_config(cfg.method)(load_causal_lm(cfg.model, "float32"))
    model.train()
    unique = {id(p): p for p in model.parameters()}.values()
    assert shape.params_total == sum(p.numel() for p in unique)
    assert shape.params_trainable == sum(p.numel() for p in unique if p.requires_grad)

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    with saved_tensor_bytes(model) as saved:
        base.get_decoder()(input_ids=torch.randint(0, 1000, (1, 64)))
    assert shape.saved_per_token * 64 == pytest.approx(sum(saved.values()), rel=0.02)


def test_estimates_on_the_common_gpus_and_the_fix_fits():
    cfg = compose("model=qwen7b", "method=lora", "data.max_seq_len=2048", "data.batch_size=4")
    a10 = device_by_name("a10")
    result = estimate(cfg, a10)
    assert not result.fits
    assert result.shape.params_total == pytest.approx(7.62e9, rel=0.01)
    fix = find_fix(cfg, a10, result.settings)
    assert fix and "gradient_checkpointing=true" in fix
    assert fix.startswith("train.loss_chunk_size=1024 ")  # what keeps the recipe's meaning comes first
    fixed = compose("model=qwen7b", "method=lora", "data.max_seq_len=2048", "data.batch_size=4", *fix.split())
    assert estimate(fixed, a10).fits
    h200 = estimate(cfg, device_by_name("h200"))
    assert h200.step_seconds < result.step_seconds  # a faster card, the same work
    assert math.isclose(h200.tokens_per_step, 4 * 2048)


@pytest.mark.slow
def test_a_run_that_will_not_fit_stops_before_loading(tmp_path):
    run_dir = tmp_path / "run"
    result = run_invoke(
        "train",
        *TINY,
        "trainer.max_steps=1",
        "logger=none",
        "hardware.memory_limit_gib=0.05",
        f"hydra.run.dir={run_dir}",
    )
    assert result.returncode != 0
    error = result.stderr.strip().splitlines()
    assert len(error) == 1 and "Traceback" not in result.stderr
    assert "will not fit" in error[0] and "hardware.memory_check=false" in error[0]
    assert "GiB available" in error[0] and "try " in error[0]
    assert not run_dir.exists()


@pytest.mark.slow
def test_global_batch_picks_the_largest_micro_batch_that_fits(tmp_path):
    cfg = compose(*TINY, "data.max_seq_len=256")
    device = replace(CPU, bf16=False)
    sizes = {}
    for micro in (2, 4):
        settings = replace(settings_from_config(cfg, device), micro_batch=micro, precision="32-true")
        sizes[micro] = estimate(cfg, device, settings).memory.total / GIB
    from onestop.selection.devices import CPU_OVERHEAD_GIB

    limit = (sizes[2] + sizes[4]) / 2 - CPU.overhead_gib + CPU_OVERHEAD_GIB  # room for 2 sequences, not 4
    run_dir = tmp_path / "run"
    result = run_invoke(
        "train",
        *TINY,
        "data.global_batch_size=8",
        "trainer.max_steps=2",
        "data.packing=true",
        "logger=none",
        "data.max_seq_len=256",
        f"hardware.memory_limit_gib={limit}",
        f"hydra.run.dir={run_dir}",
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "data.global_batch_size=8: micro-batch 2 x accumulation 4" in result.stdout
    written = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert written["data"]["batch_size"] == 2 and written["trainer"]["accumulate_grad_batches"] == 4


@pytest.mark.slow
def test_estimate_and_models_commands_print_json():
    result = run_invoke("estimate", *TINY_AUTO, "method=lora", "--json", "--devices", "t4,h100")
    assert result.returncode == 0, result.stderr[-2000:]
    rows = json.loads(result.stdout[result.stdout.index("[") :])
    assert [r["device"]["name"] for r in rows][1:] == ["T4 16GB", "H100 80GB"]
    assert all(r["fits"] for r in rows)
    assert rows[1]["settings"]["precision"] == "16-mixed"  # the T4 has no bf16

    listed = run_invoke("models", "--json")
    assert listed.returncode == 0, listed.stderr[-2000:]
    models = {row["option"]: row for row in json.loads(listed.stdout)}
    assert set(models) == set(list_group_options("model"))
    assert models["gemma3_270m"]["offline"] and models["gemma3_270m"]["vocab_size"] == 262144
    assert models["qwen7b"]["params"] == pytest.approx(7.62e9, rel=0.01)

    unknown = run_invoke("estimate", *TINY, "--devices", "b200")
    assert unknown.returncode != 0 and "unknown device" in unknown.stderr


@pytest.mark.slow
def test_the_preflight_refuses_just_above_its_estimate_and_trains_just_below(tmp_path):
    # The pre-flight estimates with the longest example the data makes (padding-free batches hold at most
    # batch x longest tokens), the same figure `invoke estimate` gives for that length: a limit 3% under it is
    # refused in one line, 3% over it trains. How close the figure is to measured peaks: bench.estimate.
    from onestop.data.prepare import prepare
    from onestop.models import load_tokenizer
    from onestop.selection.devices import this_machine

    run = [*TINY, "logger=none", "trainer.max_steps=2"]
    cfg = compose(*run)
    longest = prepare(cfg.data, load_tokenizer(cfg.model)).report.max_len
    device = this_machine(measure_speed=False)
    predicted = estimate(cfg, device, settings_from_config(cfg, device, longest)).memory.total / GIB
    refused = run_invoke(
        "train", *run, f"hardware.memory_limit_gib={predicted * 0.97}", f"hydra.run.dir={tmp_path / 'a'}"
    )
    assert refused.returncode == 2 and "will not fit" in refused.stderr, refused.stderr[-2000:]
    assert len(refused.stderr.strip().splitlines()) == 1 and not (tmp_path / "a").exists()
    fits = run_invoke("train", *run, f"hardware.memory_limit_gib={predicted * 1.03}", f"hydra.run.dir={tmp_path / 'b'}")
    assert fits.returncode == 0, fits.stderr[-2000:]
    assert json.loads((tmp_path / "b" / "metrics.json").read_text())["steps"] == 2
