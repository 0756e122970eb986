"""The offline embedded Gemma-3-270M: loads with no hub, chats in Gemma's format, and the demo runs."""

import json
from pathlib import Path

import pytest
import torch
from conftest import compose, run_invoke
from starlette.testclient import TestClient

from onestop.core.paths import PROJECT_ROOT, cache_dir
from onestop.deploy.export import end_of_turn_ids
from onestop.evaluation.runs import list_runs
from onestop.models import load_causal_lm, load_tokenizer, resolve_model_path
from onestop.ui.app import create_app

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def gemma():
    cfg = compose("model=gemma3_270m")
    path = resolve_model_path(cfg.model)
    return load_tokenizer(cfg.model, path), load_causal_lm(cfg.model, "float32", path), path


def test_gemma_loads_offline_from_the_safetensors_cache(gemma):
    tokenizer, model, path = gemma
    assert str(path).startswith(str(cache_dir()))
    assert model.config.model_type == "gemma3_text"
    assert 250e6 < sum(p.numel() for p in model.parameters()) < 300e6
    end_of_turn = tokenizer.convert_tokens_to_ids("<end_of_turn>")
    assert end_of_turn in model.generation_config.eos_token_id


def test_gemma_answers_end_at_end_of_turn_in_exports_and_deployments(gemma):
    """The stop tokens an export and a deployment write: the end-of-turn token the run trained on, and EOS."""
    tokenizer, _, _ = gemma
    assert end_of_turn_ids(tokenizer) == sorted(
        {tokenizer.convert_tokens_to_ids("<end_of_turn>"), tokenizer.eos_token_id}
    )


def test_gemma_is_a_real_pretrained_model(gemma):
    tokenizer, model, _ = gemma
    inputs = tokenizer("The Eiffel Tower is in the city of", return_tensors="pt")
    with torch.no_grad():
        next_token = model(**inputs).logits[0, -1].topk(5).indices
    assert "Paris" in [tokenizer.decode(t).strip() for t in next_token]
    output = model.generate(**inputs, max_new_tokens=8, do_sample=False)
    assert len(tokenizer.decode(output[0, inputs["input_ids"].shape[1] :]).split()) >= 2


def test_gemma_chat_template_is_gemmas(gemma):
    tokenizer, _, _ = gemma
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Hi"}], tokenize=False, add_generation_prompt=True
    )
    assert text == "<bos><start_of_turn>user\nHi<end_of_turn>\n<start_of_turn>model\n"


@pytest.mark.slow
def test_demo_smoke_run_prints_the_comparison(tmp_path):
    run_dir = tmp_path / "demo"
    heldout = tmp_path / "heldout.jsonl"  # a few held-out questions: the full 81 are for the real demo
    heldout.write_text("".join((PROJECT_ROOT / "src/onestop/data/demo/heldout.jsonl").read_text().splitlines(True)[:6]))
    result = run_invoke(
        "demo",
        "trainer.max_steps=2",
        "logger=none",
        f"data.val_path={heldout}",
        f"hydra.run.dir={run_dir}",
        timeout=1200,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Held-out questions" in result.stdout and "before vs after" in result.stdout
    assert result.stdout.strip().splitlines()[-1] == f"Run directory: {run_dir}"
    report = json.loads((run_dir / "demo.json").read_text())
    assert {"heldout_loss", "demo/exact_match", "demo/token_f1", "demo/rougeL"} <= report["before"].keys()
    assert report["after"].keys() == report["before"].keys()
    after = json.loads(Path(report["results"]["after"]).read_text())  # written by the eval stage
    assert after["target"]["run_dir"] == str(run_dir) and after["target"]["adapter"] == str(run_dir / "adapter")
    assert after["n_samples"]["demo"]["effective"] == len(after["samples"]["demo"]) == 6
    served = report["served"]  # the demo ends by asking the deployed model through the openai SDK
    assert served["base_url"].startswith("http://127.0.0.1:") and served["answer"].strip()
    assert f"A ({served['base_url']}): " in result.stdout
    assert (run_dir / "adapter" / "chat_template.jinja").read_text().count("<start_of_turn>") >= 2

    # What the new user then finds in `invoke ui`: the demo's run, finished, with its scores, on the Runs page.
    (row,) = list_runs([tmp_path])
    assert row.path == run_dir and row.status == "finished" and row.model == "gemma3_270m"
    assert "demo/exact_match" in row.evals
    with TestClient(create_app([tmp_path], PROJECT_ROOT, token=None)) as client:
        page = client.get("/")
    assert page.status_code == 200 and "gemma3_270m" in page.text and "finished" in page.text
