"""Training fast paths: padding-free batches and packing where exact, the chunked loss, the GPU switches, compile;
each leaves the loss as is."""

import importlib
import inspect
import re

import pytest
import torch
import yaml
from conftest import ASSETS, TINY, TINY_DEFAULTS, compose

from onestop.core.errors import OnestopError
from onestop.data.batching import pad_batch
from onestop.data.packing import PACKED_POSITION_MODEL_TYPES, resolve_packing, resolve_padding_free
from onestop.data.prepare import prepare
from onestop.losses import ChunkedHeadLoss, token_loss_sum
from onestop.methods import apply_lora
from onestop.training.plan import RunPlan
from onestop.training.stages import STAGES, stage_of
from onestop.training.train import train


@pytest.fixture(scope="module")
def batch(tmp_path_factory):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(ASSETS / "tiny-qwen2")
    with pytest.MonkeyPatch.context() as patch:  # the prepared-data cache of this module only
        patch.setenv("ONESTOP_HOME", str(tmp_path_factory.mktemp("home")))
        examples = prepare(compose(*TINY, "data.val_ratio=0").data, tokenizer).train[:8]
    return pad_batch(examples, tokenizer.pad_token_id)


def tiny_model():
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(ASSETS / "tiny-qwen2").eval()


def loss_and_grads(model, batch, head_loss=None):
    model.zero_grad()
    loss_sum, tokens = token_loss_sum(model, batch, head_loss)
    loss_sum.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return loss_sum.detach(), tokens, grads


def assert_same_loss_and_grads(model, batch, head_loss):
    whole, tokens, expected = loss_and_grads(model, batch)
    chunked, chunked_tokens, got = loss_and_grads(model, batch, head_loss)
    assert chunked_tokens == tokens > 3 * head_loss.chunk_size  # several chunks, the last one partial
    # fp32, the same sums in another order: equal to ~1e-6 relative.
    torch.testing.assert_close(chunked, whole, rtol=1e-5, atol=1e-5)
    assert got.keys() == expected.keys() and expected
    for name, grad in expected.items():
        torch.testing.assert_close(got[name], grad, rtol=1e-4, atol=1e-6, msg=name)


def test_chunked_loss_equals_the_whole_head_with_every_weight_training(batch):
    model = tiny_model()
    assert model.lm_head.weight.requires_grad  # the head's own gradient comes from the chunks too
    assert_same_loss_and_grads(model, batch, ChunkedHeadLoss(chunk_size=13))


def test_chunked_loss_recomputes_a_head_that_is_not_a_plain_linear_layer(batch):
    # LoRA on the head itself: the head is an adapter module, chunked by checkpointing instead.
    model = apply_lora(tiny_model(), r=4, alpha=8, dropout=0.0, target_modules=["q_proj", "lm_head"])
    assert type(model.get_base_model().lm_head) is not torch.nn.Linear
    assert_same_loss_and_grads(model, batch, ChunkedHeadLoss(chunk_size=13))


def test_chunked_loss_without_gradients_matches(batch):
    model = tiny_model()
    with torch.no_grad():
        whole, _ = token_loss_sum(model, batch)
        chunked, _ = token_loss_sum(model, batch, ChunkedHeadLoss(chunk_size=5))
    torch.testing.assert_close(chunked, whole, rtol=1e-5, atol=1e-5)


def test_packing_auto_packs_pretraining_only_and_refuses_true_where_not_exact():
    sft = compose(*TINY_DEFAULTS)
    assert sft.data.packing == "auto"
    assert resolve_packing(sft, "qwen2") is False  # packing would change the examples per step of a recipe
    assert resolve_packing(compose(*TINY_DEFAULTS, "data.packing=true"), "qwen2") is True
    pretrain = ["stage=pretrain", "data=text", f"data.path={ASSETS / 'alpaca_small.jsonl'}"]
    assert resolve_packing(compose("model=tiny", "hardware=cpu", *pretrain), "qwen2") is True
    assert resolve_packing(compose("model=tiny", "hardware=cpu", *pretrain), "chatglm") is False
    assert resolve_packing(compose("model=tiny", "hardware=cpu", *pretrain, "data.packing=false"), "qwen2") is False
    message = "config key 'data.packing': cannot pack exactly: model=tiny (chatglm) builds its own attention mask"
    with pytest.raises(OnestopError, match=re.escape(message)):
        resolve_packing(compose(*TINY, "data.packing=true"), "chatglm")
    for stage in ("dpo", "kto", "orpo", "simpo"):  # the stage's table entry says its loss scores whole sequences
        with pytest.raises(OnestopError, match=f"stage={stage} scores each (preference pair|rated answer)"):
            RunPlan.batches(compose(*TINY, "data.packing=true", f"stage={stage}"), STAGES[stage], "qwen2")


def test_padding_free_by_default_where_exact_else_padded_with_one_line():
    sft = compose(*TINY_DEFAULTS)
    assert sft.data.padding_free == "auto"
    assert resolve_padding_free(sft, "qwen2", packing=False) == (True, None)
    assert resolve_padding_free(sft, "qwen2", packing=True) == (False, None)  # packed rows are batched as they are
    assert resolve_padding_free(compose(*TINY, "data.padding_free=false"), "qwen2", False) == (False, None)
    for override, reason in [
        ("method=ptuning", "the virtual tokens of method=ptuning"),
        ("stage=dpo", "stage=dpo scores each preference pair"),
        ("model.trust_remote_code=true", "builds its own attention mask"),
    ]:
        cfg = compose(*TINY_DEFAULTS, override)
        enabled, note = resolve_padding_free(cfg, "qwen2", False, stage_of(cfg).one_row_inexact)
        assert not enabled and note.startswith("padding-free batches: off, ") and reason in note
        assert note.endswith("; batches are padded")
    assert resolve_padding_free(compose(*TINY_DEFAULTS), "chatglm", False)[0] is False
    with pytest.raises(OnestopError, match=re.escape("config key 'data.padding_free': cannot lay examples end to end")):
        resolve_padding_free(compose(*TINY, "data.padding_free=true"), "chatglm", False)


@pytest.mark.parametrize("family", sorted(PACKED_POSITION_MODEL_TYPES))
def test_packed_families_build_their_masks_from_position_ids(family):
    # transformers' masking utilities detect packed rows from position ids; a family that stopped using them
    # would attend across examples, and packing would no longer be exact for it.
    from transformers import masking_utils

    name = family.removesuffix("_text")
    module = importlib.import_module(f"transformers.models.{name}.modeling_{name}")
    used = {getattr(module, f, None) for f in ("create_causal_mask", "create_sliding_window_causal_mask")}
    assert used & {masking_utils.create_causal_mask, masking_utils.create_sliding_window_causal_mask}
    assert "find_packed_sequence_indices(position_ids)" in inspect.getsource(masking_utils)


def test_a_run_is_padding_free_by_default_and_writes_what_auto_chose(tmp_path, capsys):
    result = train(compose(*TINY_DEFAULTS, "logger=none", "trainer.max_steps=2", run_dir=tmp_path / "run"))
    assert "position_ids" not in result.datamodule.train_set[0]  # examples, not packed rows
    written = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert written["data"]["packing"] is False and written["data"]["padding_free"] is True
    assert written["train"]["loss_chunk_size"] == 0  # a 1k vocabulary: the logits are never the largest part
    assert result.metrics["padding"][-1]["padding_fraction"] == 0.0
    printed = capsys.readouterr().out
    assert "padding: 0.0% of the token slots in the last epoch (data.packing=false, data.padding_free=true)" in printed


def test_a_chunked_loss_run_trains_with_the_same_losses(tmp_path):
    def run(name, *extra):
        cfg = compose(
            *TINY,
            "logger=none",
            "trainer.max_steps=4",
            "trainer.max_epochs=10",
            "method=full",
            *extra,
            run_dir=tmp_path / name,
        )
        return train(cfg).metrics["train_losses"]

    whole = run("whole")
    chunked = run("chunked", "train.loss_chunk_size=16")
    assert len(whole) == 4
    torch.testing.assert_close(torch.tensor(chunked), torch.tensor(whole), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("train.liger_kernels=true", "config key 'train.liger_kernels': runs on a CUDA GPU only"),
        ("train.cut_cross_entropy=true", "config key 'train.cut_cross_entropy': runs on a CUDA GPU only"),
        ("model.attn_implementation=flash_attention_2", "flash_attention_2 needs a CUDA GPU; on this machine use sdpa"),
    ],
)
def test_gpu_switches_on_a_cpu_fail_in_one_line(tmp_path, override, message):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(OnestopError, match=re.escape(message)):
        train(compose(*TINY, "logger=none", override, run_dir=tmp_path / "run"))
    assert not (tmp_path / "run").exists()


def test_fast_path_keys_are_checked_when_composed():
    from onestop.config.compose import ConfigError

    with pytest.raises(ConfigError, match="config key 'train.loss_chunk_size': expected auto, 0"):
        compose(*TINY, "train.loss_chunk_size=-1")
    with pytest.raises(ConfigError, match="config key 'train.cut_cross_entropy': train.liger_kernels already fuses"):
        compose(*TINY, "train.liger_kernels=true", "train.cut_cross_entropy=true")
    with pytest.raises(OnestopError, match="config key 'train.loss_chunk_size': stage=dpo scores whole sequences"):
        RunPlan.batches(compose(*TINY, "stage=dpo", "train.loss_chunk_size=64"), STAGES["dpo"], "qwen2")
    with pytest.raises(ConfigError, match="config key 'data.packing': expected true, false or auto"):
        compose(*TINY, "data.packing=sometimes")
    with pytest.raises(ConfigError, match="config key 'data.padding_free': expected true, false or auto"):
        compose(*TINY, "data.padding_free=1")
    with pytest.raises(ConfigError, match="config key 'train.loss_chunk_size': expected auto, 0"):
        compose(*TINY, "train.loss_chunk_size=always")
    with pytest.raises(ConfigError, match="config key 'model.attn_implementation': expected one of eager, sdpa"):
        compose(*TINY, "model.attn_implementation=flash")


@pytest.mark.slow
def test_compiled_decoder_trains_to_the_eager_loss(tmp_path):
    def run(name, *extra):
        cfg = compose(*TINY, "logger=none", "trainer.max_steps=3", *extra, run_dir=tmp_path / name)
        return train(cfg).metrics["train_losses"]

    eager = run("eager")
    compiled = run("compiled", "train.compile=true")
    # Inductor fuses and reorders fp32 arithmetic: the same losses to ~1e-4.
    torch.testing.assert_close(torch.tensor(compiled), torch.tensor(eager), rtol=1e-4, atol=1e-4)
