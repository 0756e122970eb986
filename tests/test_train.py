"""Tiny end-to-end runs: the real config, the real Lightning Trainer, real files in the run directory."""

import json

import pytest
import torch
from conftest import TINY, TINY_DATA, compose, run_invoke
from helpers import wandb_config, wandb_history
from peft import PeftModel
from transformers import AutoModelForCausalLM

from onestop.core.errors import OnestopError
from onestop.core.paths import PROJECT_ROOT
from onestop.data.packing import model_inputs
from onestop.data.sft import SFTDataModule
from onestop.losses import token_loss_sum
from onestop.methods import method_from_config
from onestop.models import load_causal_lm, load_tokenizer, resolve_model_path
from onestop.training.train import train


def tiny_run(tmp_path, *overrides):
    cfg = compose(
        *TINY, "logger=csv", "trainer.max_steps=3", "trainer.log_every_n_steps=1", *overrides, run_dir=tmp_path / "run"
    )
    return train(cfg)


def test_invoke_train_runs_through_the_real_entry_point(tmp_path):
    run_dir = tmp_path / "run"
    result = run_invoke(
        "train",
        "model=tiny",
        "method=lora",
        "trainer.max_steps=2",
        "logger=csv",
        f"data.path={TINY_DATA}",
        "data=alpaca",
        "hardware=cpu",
        f"hydra.run.dir={run_dir}",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().splitlines()[-1] == f"Run directory: {run_dir}"
    for artefact in (
        "config.yaml",
        "metrics.json",
        "checkpoints/last.ckpt",
        "adapter/adapter_config.json",
        "adapter/adapter_model.safetensors",
        "adapter/tokenizer.json",
        "adapter/chat_template.jinja",
    ):
        assert (run_dir / artefact).is_file(), artefact
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["steps"] == 2 and metrics["val_loss"] > 0 and metrics["tokens_per_s"] > 0
    assert "max_steps: 2" in (run_dir / "config.yaml").read_text()


def test_saved_adapter_reproduces_the_trained_model(tmp_path):
    result = tiny_run(tmp_path, "optim.lr=1e-2")
    batch = next(iter(result.datamodule.val_dataloader()))
    trained = result.model.eval()
    base = load_causal_lm(compose(*TINY).model)
    reloaded = PeftModel.from_pretrained(base, result.run_dir / "adapter").eval()
    with torch.no_grad():
        expected = trained(**model_inputs(batch)).logits
        got = reloaded(**model_inputs(batch)).logits
        untrained = load_causal_lm(compose(*TINY).model)(**model_inputs(batch)).logits
    torch.testing.assert_close(got, expected)
    assert not torch.allclose(untrained, expected, atol=1e-4), "training changed nothing"


def test_checkpoints_hold_only_trainable_weights(tmp_path):
    result = tiny_run(tmp_path)
    state = torch.load(result.run_dir / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"]
    assert state and all("lora_" in key for key in state)
    assert state.keys() == {f"model.{n}" for n, p in result.model.named_parameters() if p.requires_grad}


def test_training_lowers_the_loss(tmp_path):
    # Validating on the training file itself: the tiny model can memorise it, not generalise from it.
    result = tiny_run(
        tmp_path,
        "method=full",
        "trainer.max_steps=-1",
        "trainer.max_epochs=8",
        "optim.lr=1e-2",
        f"data.val_path={TINY_DATA}",
    )
    history = [h["val_loss"] for h in result.metrics["val_history"]]
    assert len(history) == 8 and history[-1] < history[0] - 1.0


def test_full_method_writes_a_plain_transformers_model(tmp_path):
    result = tiny_run(tmp_path, "method=full")
    model_dir = result.run_dir / "model"
    assert (model_dir / "config.json").is_file() and not (result.run_dir / "adapter").exists()
    reloaded = AutoModelForCausalLM.from_pretrained(model_dir)
    for (name, trained), (_, saved) in zip(
        result.model.state_dict().items(), reloaded.state_dict().items(), strict=True
    ):
        torch.testing.assert_close(saved, trained, msg=name)


def test_freeze_trains_only_the_last_layers(tmp_path):
    base = load_causal_lm(compose(*TINY).model).state_dict()
    result = tiny_run(tmp_path, "method=freeze", "method.trainable_layers=1", "optim.lr=1e-2")
    trained = AutoModelForCausalLM.from_pretrained(result.run_dir / "model").state_dict()
    changed = {name for name in base if not torch.equal(base[name], trained[name])}
    assert changed and all(name.startswith(("model.layers.1.", "model.norm.")) for name in changed)
    assert result.metrics["trainable_params"] < result.metrics["total_params"]


@pytest.mark.parametrize("content", [b"not a checkpoint", b"PK\x03\x04 cut short"])
def test_an_unreadable_resume_checkpoint_fails_in_one_line_and_closes_its_wandb_run(tmp_path, content):
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(content)
    failing = compose(*TINY, "logger=wandb", f"resume={bad}", run_dir=tmp_path / "failed")
    with pytest.raises(OnestopError, match=f"config key 'resume': {bad} is not a readable checkpoint"):
        train(failing)
    # The failed run's W&B run is closed: the next training in this process (a sweep's next trial) logs to its own.
    result = train(compose(*TINY, "logger=wandb", "trainer.max_steps=1", run_dir=tmp_path / "next"))
    assert len(list((result.run_dir / "wandb").glob("offline-run-*/run-*.wandb"))) == 1


def test_wandb_offline_run_holds_the_logged_metrics(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc, so no credentials: W&B must go offline alone
    monkeypatch.delenv("WANDB_MODE")
    cfg = compose(*TINY, "logger=wandb", "trainer.max_steps=3", "trainer.log_every_n_steps=1", run_dir=tmp_path / "run")
    result = train(cfg)
    [run_file] = (result.run_dir / "wandb").glob("offline-run-*/run-*.wandb")
    history = wandb_history(run_file)
    losses = [h["train/loss"] for h in history if "train/loss" in h]
    assert len(losses) == 3 and all(loss > 0 for loss in losses)
    assert any("train/lr" in h and "train/tokens_per_s" in h for h in history)
    assert any("val/loss" in h for h in history)
    config = wandb_config(run_file)
    assert config["model"]["name"] == "tiny" and config["optim"]["lr"] == pytest.approx(2e-4)


@pytest.mark.slow
def test_demo_logs_offline_for_a_new_user_with_no_wandb_setup(tmp_path):
    """No W&B key and no WANDB_MODE, as on a fresh machine. The demo's base-model evaluation opens a W&B
    run in the process before training does; training must still go offline by itself, not ask for a login."""
    heldout = tmp_path / "heldout.jsonl"
    heldout.write_text("".join((PROJECT_ROOT / "src/onestop/data/demo/heldout.jsonl").read_text().splitlines(True)[:2]))
    run_dir = tmp_path / "run"
    result = run_invoke(
        "demo", "model=tiny", "trainer.max_steps=1", f"data.val_path={heldout}", f"hydra.run.dir={run_dir}",
        env={"HOME": str(tmp_path)}, unset=("WANDB_MODE",),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "W&B: logged offline (no credentials found)" in result.stdout
    assert list((run_dir / "wandb").glob("offline-run-*/run-*.wandb"))
    assert result.stdout.strip().splitlines()[-1] == f"Run directory: {run_dir}"


def test_wandb_sync_hint_and_no_key_leak(tmp_path):
    secret = "0123456789abcdef0123456789abcdef01234567"
    run_dir = tmp_path / "run"
    result = run_invoke(
        "train",
        *TINY,
        "logger=wandb",
        "logger.offline=true",
        "trainer.max_steps=1",
        f"hydra.run.dir={run_dir}",
        env={"WANDB_API_KEY": secret, "HOME": str(tmp_path)},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"wandb sync {run_dir}/wandb/offline-run-" in result.stdout
    assert secret not in result.stdout + result.stderr
    assert not any(secret in p.read_text(errors="ignore") for p in run_dir.rglob("*") if p.is_file())


def test_unreachable_hub_fails_in_one_line_with_the_way_out():
    cfg = compose("model=qwen")
    with pytest.raises(OnestopError) as caught:
        resolve_model_path(cfg.model)
    message = str(caught.value)
    assert "Qwen/Qwen2.5-0.5B-Instruct" in message and "unreachable" in message
    assert "model.path=" in message and "model=gemma3_270m" in message and "\n" not in message


def test_invoke_train_qwen_without_hub_exits_with_that_line(tmp_path):
    result = run_invoke("train", "model=qwen", "method=lora", f"hydra.run.dir={tmp_path / 'run'}", "logger=none")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("onestop train: error: model.path=Qwen/Qwen2.5-0.5B")
    assert not (tmp_path / "run").exists()


def test_missing_local_model_directory_is_named():
    cfg = compose("model=qwen", "model.path=/data/no-such-model")
    with pytest.raises(OnestopError, match="model.path=/data/no-such-model: no such directory"):
        resolve_model_path(cfg.model)


def test_local_directory_works_for_any_model_option(tmp_path):
    result = tiny_run(tmp_path, "model=llama3_8b", f"model.path={compose(*TINY).model.path}", "model.max_seq_len=256")
    assert result.metrics["steps"] == 3 and (result.run_dir / "adapter").is_dir()


@pytest.mark.parametrize("method", ["lora", "full"])
def test_answer_only_head_matches_the_models_own_loss(method):
    cfg = compose(*TINY, f"method={method}")
    model = method_from_config(cfg.method)(load_causal_lm(cfg.model)).eval()
    datamodule = SFTDataModule(cfg.data, load_tokenizer(cfg.model))
    datamodule.setup()
    batch = next(iter(datamodule.train_dataloader()))
    loss_sum, tokens = token_loss_sum(model, batch)
    with torch.no_grad():
        reference = model(**batch).loss
    assert tokens == int((batch["labels"][:, 1:] != -100).sum())
    torch.testing.assert_close(loss_sum / tokens, reference, rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_bench_train_reports_throughput_and_memory_per_variant(tmp_path):
    options = ["--steps", "2", "--precisions", "32-true", "--output", str(tmp_path)]
    result = run_invoke("bench.train", *TINY, *options, "--variants", "data.padding_free=false;data.packing=true")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Training throughput, 2 steps" in result.stdout
    rows = json.loads((tmp_path / "train.json").read_text())["rows"]
    assert [(r["model"], r["precision"], r["variant"], r["steps"]) for r in rows] == [
        ("tiny", "32-true", "data.padding_free=false", 2),
        ("tiny", "32-true", "data.packing=true", 2),
    ]
    assert all(r["tok/s"] > 0 and r["peak GiB"] > 0 and r["first loss"] > 0 for r in rows), rows
    padded, packed = rows
    assert packed["padding %"] < padded["padding %"]


@pytest.mark.slow
def test_bench_trainers_trains_and_scores_the_same_recipe_with_both_loops(tmp_path):
    heldout = tmp_path / "heldout.jsonl"
    heldout.write_text("".join((PROJECT_ROOT / "src/onestop/data/demo/heldout.jsonl").read_text().splitlines(True)[:4]))
    out = tmp_path / "bench"
    result = run_invoke(
        "bench.trainers", "model=tiny", "trainer.max_steps=4", f"data.val_path={heldout}", f"hydra.run.dir={out}",
        "--variants", "data.padding_free=false",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().splitlines()[-1] == f"Results: {out}"
    report = json.loads((out / "bench.json").read_text())
    onestop, padded, *rows = report["rows"]
    assert onestop["trainer"] == "onestop" and onestop["batching"] == "padding-free"
    assert padded["trainer"] == "onestop data.padding_free=false" and padded["batching"] == "padded"
    assert padded["steps"] == onestop["steps"] and (out / "onestop-1" / "adapter").is_dir()
    rows = [onestop, *rows]
    fp32 = rows[1]
    # The Trainer at its CPU default, then at onestop's precision where that differs (bf16 on a CPU with it).
    assert (fp32["trainer"], fp32["precision"], fp32["batching"]) == ("transformers Trainer", "32-true", "padded")
    assert [row["precision"] for row in rows[2:]] == (
        [] if onestop["precision"] == "32-true" else [onestop["precision"]]
    )
    assert all(row["steps"] == 4 and row["examples/step"] == onestop["examples/step"] == 8 for row in rows)
    assert all(row["peak GiB"] > 0 and row["tok/s"] > 0 and 0 < row["MFU %"] < 100 for row in rows)
    assert report["flops_per_token"] > 0
    assert all(row["onestop tok/s x"] == pytest.approx(onestop["tok/s"] / row["tok/s"]) for row in rows)
    assert [len(losses) for losses in report["train_losses"].values()] == [4] * len(report["rows"])
    # Same random tiny model, same data, 4 small steps: both still predict about uniformly over 1,024 tokens.
    assert onestop["held-out loss"] == pytest.approx(rows[-1]["held-out loss"], abs=0.05)
    for trainer in ["onestop", *(f"transformers-{row['precision']}" for row in rows[1:])]:
        assert (out / trainer / "adapter" / "adapter_model.safetensors").is_file()
        scored = json.loads((out / "eval" / trainer / "results.json").read_text())
        assert scored["n_samples"]["demo"]["effective"] == 4
    assert (out / "train_loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / "bench.md").read_text().count("\n") == 3 + len(rows)
