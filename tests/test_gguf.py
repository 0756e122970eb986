"""`invoke export format=gguf`: llama.cpp's converter on a run's merged export, checked by reading the GGUF back.

The run is a random two-layer Gemma-3 that keeps the real Gemma-3 tokenizer and chat template (llama.cpp must
recognise the tokenizer; the 262k vocabulary is most of its 17M parameters). Slow: the first test fetches the
converter into the onestop cache, once per machine.
"""

import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from safetensors.torch import load_file
from transformers import AutoTokenizer, Gemma3ForCausalLM, Gemma3TextConfig

import onestop.deploy.gguf
from onestop.core.errors import OnestopError
from onestop.core.rundir import made_from
from onestop.deploy.export import export_run
from onestop.deploy.gguf import gguf_file, write_gguf
from onestop.models.embedded import embedded_gemma_dir

pytestmark = pytest.mark.slow
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja")


@pytest.fixture(scope="module")
def gemma_run(tmp_path_factory) -> Path:
    """A finished full-weight run: RUN/config.yaml and RUN/model/ (random weights, Gemma's tokenizer)."""
    run = tmp_path_factory.mktemp("gguf") / "run"
    gemma = embedded_gemma_dir()
    torch.manual_seed(0)
    config = Gemma3TextConfig(
        vocab_size=262144, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=1, head_dim=32, sliding_window=64, layer_types=["sliding_attention", "full_attention"],
        bos_token_id=2, eos_token_id=[1, 106], pad_token_id=0,
    )  # fmt: skip
    Gemma3ForCausalLM(config).save_pretrained(run / "model")
    for name in TOKENIZER_FILES:
        shutil.copy(gemma / name, run / "model" / name)
    model = {"name": "gemma3_tiny", "template_family": "gemma", "path": str(run / "model"), "source": "hub"}
    OmegaConf.save(OmegaConf.create({"stage": "sft", "model": model}), run / "config.yaml")
    return run


def export(run: Path, **gguf) -> Path:
    cfg = {"run_dir": str(run), "format": "gguf", "output": None, "dtype": "float32", "gguf": gguf}
    return export_run(OmegaConf.create(cfg))


@pytest.fixture(scope="module")
def f16_export(gemma_run) -> Path:
    """The run's f16 GGUF export, converted once for the module (about a minute: Gemma's 262k vocabulary)."""
    return export(gemma_run, outtype="f16")


def test_gguf_holds_the_merged_weights_the_template_and_the_stop_tokens(gemma_run, f16_export):
    target = f16_export
    path = gguf_file(target)
    assert path.name == "gemma3_tiny-f16.gguf" and sorted(p.name for p in target.iterdir()) == sorted(
        [path.name, "Modelfile", "onestop-source.json"]
    )
    reader = gguf.GGUFReader(path)
    field = lambda key: reader.get_field(key).contents()  # noqa: E731
    merged = gemma_run / "export-merged"
    assert field("general.architecture") == "gemma3"
    assert field("tokenizer.chat_template") == (merged / "chat_template.jinja").read_text()
    tokens = field("tokenizer.ggml.tokens")
    assert tokens[field("tokenizer.ggml.eos_token_id")] == "<eos>"
    assert tokens[field("tokenizer.ggml.eot_token_id")] == "<end_of_turn>"
    assert tokens[field("tokenizer.ggml.bos_token_id")] == "<bos>"
    # the converter's vocabulary is the tokenizer's, id for id
    tokenizer = AutoTokenizer.from_pretrained(merged)
    ids = tokenizer("Hello world, ünïcode <end_of_turn>")["input_ids"]
    assert [tokens[i] for i in ids] == tokenizer.convert_ids_to_tokens(ids)

    weights = load_file(merged / "model.safetensors")
    tensors = {t.name: t for t in reader.tensors}
    for ours, theirs in [
        ("model.embed_tokens.weight", "token_embd.weight"),
        ("model.layers.0.self_attn.q_proj.weight", "blk.0.attn_q.weight"),
        ("model.layers.1.mlp.down_proj.weight", "blk.1.ffn_down.weight"),
    ]:
        read = np.asarray(tensors[theirs].data, dtype=np.float32).reshape(weights[ours].shape)
        assert tensors[theirs].tensor_type == gguf.GGMLQuantizationType.F16
        np.testing.assert_allclose(read, weights[ours].numpy(), rtol=1e-3, atol=1e-4)
    # Gemma's RMSNorm scales by 1 + weight; llama.cpp's by weight: the converter adds the 1
    norm = np.asarray(tensors["blk.0.attn_norm.weight"].data, dtype=np.float32)
    np.testing.assert_allclose(norm, weights["model.layers.0.input_layernorm.weight"].numpy() + 1, atol=1e-6)

    modelfile = (target / "Modelfile").read_text()
    assert f"FROM ./{path.name}\n" in modelfile and "<start_of_turn>model" in modelfile
    assert 'PARAMETER stop "<end_of_turn>"' in modelfile and 'PARAMETER stop "<eos>"' in modelfile
    source = json.loads((target / "onestop-source.json").read_text())
    assert source["outtype"] == "f16" and source["converter"].startswith("llama-cpp-python==")


def test_a_current_gguf_is_reused_and_a_stale_one_made_again(gemma_run, f16_export, capsys):
    target = f16_export
    fingerprint = made_from(target)
    capsys.readouterr()
    assert export(gemma_run, outtype="f16") == target and "reused" in capsys.readouterr().out

    config = json.loads((gemma_run / "model" / "config.json").read_text())  # the run's weights change
    (gemma_run / "model" / "config.json").write_text(json.dumps({**config, "rms_norm_eps": 1e-5}))
    export(gemma_run, outtype="f16")
    assert made_from(target) != fingerprint and "reused" not in capsys.readouterr().out
    assert gguf.GGUFReader(gguf_file(target)).get_field("gemma3.attention.layer_norm_rms_epsilon").contents() == (
        pytest.approx(1e-5)
    )


def test_bad_requests_end_in_one_line_and_write_nothing(gemma_run, tmp_path, monkeypatch):
    target = tmp_path / "out"
    cfg = {"run_dir": str(gemma_run), "format": "gguf", "output": str(target), "dtype": "float32"}
    monkeypatch.setattr(onestop.deploy.gguf.shutil, "which", lambda name: None)
    with pytest.raises(OnestopError, match="outtype=q4_k_m needs llama.cpp's llama-quantize on PATH"):
        export_run(OmegaConf.create({**cfg, "gguf": {"outtype": "q4_k_m"}}))
    with pytest.raises(OnestopError, match="outtype=q3: choose one of f32, f16"):
        export_run(OmegaConf.create({**cfg, "gguf": {"outtype": "q3"}}))

    unknown = tmp_path / "unknown"  # an architecture llama.cpp cannot convert: its own reason, in one line
    shutil.copytree(gemma_run / "export-merged", unknown)
    config = json.loads((unknown / "config.json").read_text())
    (unknown / "config.json").write_text(json.dumps({**config, "architectures": ["FooForCausalLM"]}))
    with pytest.raises(OnestopError, match=r"^export format=gguf of .*unknown: .*FooForCausalLM is not supported$"):
        write_gguf(unknown, target, "f16", "fingerprint", "foo", "gemma")
    assert not target.exists() and not list(tmp_path.glob(".out-*"))


PROMPTS = ["What is the capital of France?", "Write a haiku about the sea.", "List three prime numbers."]
# llama.cpp in its own process: in one with torch's thread pools it crashes
LLAMA_CPP = """
import json, sys
import llama_cpp
llm = llama_cpp.Llama(sys.argv[1], n_ctx=256, n_threads=2, verbose=False)
for line in sys.stdin:
    ids, n = json.loads(line)
    llm.reset()
    answered = []
    for token in llm.generate(ids, temp=0.0, top_k=1):
        answered.append(token)
        if len(answered) == n or llm.token_is_eog(token) if hasattr(llm, "token_is_eog") else len(answered) == n:
            break
    print(json.dumps({"tokenized": llm.tokenize(llm.detokenize(ids, special=True), add_bos=False, special=True),
                      "answered": answered}), flush=True)
"""


def test_the_gguf_answers_like_the_model_it_came_from(tmp_path):
    """Gemma-3-270M as f16 GGUF, run by llama.cpp (llama-cpp-python, built from source; skipped without
    it): llama.cpp tokenizes the chat prompt as transformers does, and its greedy answers begin with the same
    tokens."""
    if importlib.util.find_spec("llama_cpp") is None:
        pytest.skip("llama-cpp-python is not installed (docs/gguf.md says how to build it)")
    from transformers import AutoModelForCausalLM

    gemma = embedded_gemma_dir()
    target = write_gguf(gemma, tmp_path / "gguf", "f16", "fingerprint", "gemma3_270m", "gemma")
    tokenizer = AutoTokenizer.from_pretrained(gemma)
    model = AutoModelForCausalLM.from_pretrained(gemma, dtype=torch.float32)
    prompts, expected = [], []
    for prompt in PROMPTS:
        chat = [{"role": "user", "content": prompt}]
        ids = list(tokenizer.apply_chat_template(chat, add_generation_prompt=True, return_dict=True)["input_ids"])
        prompts.append(ids)
        expected.append(model.generate(torch.tensor([ids]), max_new_tokens=8, do_sample=False)[0, len(ids) :].tolist())
    served = subprocess.run(
        [sys.executable, "-c", LLAMA_CPP, str(gguf_file(target))],
        input="".join(json.dumps([ids, len(want)]) + "\n" for ids, want in zip(prompts, expected, strict=True)),
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert served.returncode == 0, served.stderr[-2000:]
    for ids, want, line in zip(prompts, expected, served.stdout.splitlines(), strict=True):
        got = json.loads(line)
        assert got["tokenized"] == ids
        assert got["answered"][:4] == want[:4], (tokenizer.decode(got["answered"]), tokenizer.decode(want))
