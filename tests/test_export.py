"""`invoke export`: a LoRA run merged into a plain transformers model that answers like the trained one."""

import pytest
import torch
from conftest import TINY, compose, run_invoke
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer

from onestop.models import load_causal_lm
from onestop.training.train import train


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("export") / "run"
    train(compose(*TINY, "logger=none", "trainer.max_steps=3", "optim.lr=1e-2", run_dir=run_dir))
    return run_dir


def test_merged_export_matches_the_adapter_and_stops_at_end_of_turn(lora_run):
    result = run_invoke("export", f"run_dir={lora_run}")
    assert result.returncode == 0, result.stderr[-2000:]
    merged_dir = lora_run / "export-merged"
    assert result.stdout.strip().splitlines()[-1] == f"Exported (merged): {merged_dir}"
    merged = AutoModelForCausalLM.from_pretrained(merged_dir).eval()
    adapted = PeftModel.from_pretrained(load_causal_lm(compose(*TINY).model), lora_run / "adapter").eval()
    ids = torch.tensor([[5, 17, 99, 200, 3]])
    with torch.no_grad():
        torch.testing.assert_close(merged(ids).logits, adapted(ids).logits, rtol=1e-4, atol=1e-4)
    tokenizer = AutoTokenizer.from_pretrained(merged_dir)
    assert "<|im_start|>" in tokenizer.chat_template
    assert tokenizer.convert_tokens_to_ids("<|im_end|>") in merged.generation_config.eos_token_id
    assert not any("lora" in name for name, _ in merged.named_parameters())


def test_adapter_export_copies_the_adapter(lora_run, tmp_path):
    result = run_invoke("export", f"run_dir={lora_run}", "format=adapter", f"output={tmp_path / 'a'}")
    assert result.returncode == 0, result.stderr[-2000:]
    assert (tmp_path / "a" / "adapter_model.safetensors").read_bytes() == (
        lora_run / "adapter" / "adapter_model.safetensors"
    ).read_bytes()


def test_export_of_a_non_run_fails_in_one_line(tmp_path):
    result = run_invoke("export", f"run_dir={tmp_path}")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == (
        f"onestop export: error: config key 'run_dir': {tmp_path} is not a training run (no config.yaml); "
        "expected a directory `invoke train` wrote"
    )
