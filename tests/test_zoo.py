"""The model zoo works offline: every model option's architecture config is shipped (or local), its parameter
count matches the published one, and its family's bundled chat template renders the family's documented format
prefix by prefix, so training tokens equal the prompt a server builds."""

import json
import math

import pytest
import torch
from conftest import ASSETS, compose
from safetensors import safe_open
from transformers import AutoModelForCausalLM, AutoTokenizer

from onestop.config.groups import list_group_options
from onestop.core.errors import OnestopError
from onestop.data.tokenize import render, tokenize_conversation
from onestop.models.embedded import converted_gemma_dir
from onestop.models.templates import bundled_template
from onestop.models.tool_formats import tool_format
from onestop.models.zoo import (
    EMBEDDED_ID,
    architecture_config,
    native_config,
    native_lora_targets,
    parameter_counts,
    shipped_config,
)

MODEL_OPTIONS = list_group_options("model")
TINY_DIRS = {"tiny": "tiny-qwen2", "tiny_vl": "tiny-llava"}  # random test models committed under tests/assets

# Total parameters in billions as published, and where. "Hub" is the model size the Hugging Face Hub shows
# on the model page, counted from the checkpoint's safetensors headers (a tied weight counted once).
PUBLISHED = {
    "qwen": (0.49, "Qwen2.5-0.5B-Instruct model card: Number of Parameters 0.49B"),
    "qwen7b": (7.61, "Qwen2.5-7B-Instruct model card: Number of Parameters 7.61B"),
    "qwen3": (0.6, "Qwen3-0.6B model card: Number of Parameters 0.6B"),
    "qwen3_8b": (8.2, "Qwen3-8B model card: Number of Parameters 8.2B"),
    "gemma3_270m": (0.268, "Gemma 3 270M model card (170M embedding + 100M transformer); Hub: 268M"),
    "gemma3_1b": (1.0, "Gemma 3 technical report, table 1: 302M embedding + 698M non-embedding"),
    "glm4_9b": (9.40, "Hub, THUDM/glm-4-9b-chat-hf: 9.4B"),
    "chatglm3_6b": (6.24, "Hub, THUDM/chatglm3-6b: 6.24B"),
    "internlm2_5_7b": (7.74, "Hub, internlm/internlm2_5-7b-chat: 7.74B"),
    "internlm3_8b": (8.80, "Hub, internlm/internlm3-8b-instruct: 8.8B"),
    "baichuan2_7b": (7.51, "Hub, baichuan-inc/Baichuan2-7B-Chat: 7.51B"),
    "deepseek": (6.91, "Hub, deepseek-ai/deepseek-llm-7b-chat: 6.91B"),
    "deepseek_coder": (6.74, "Hub, deepseek-ai/deepseek-coder-6.7b-instruct: 6.74B"),
    "llama3_8b": (8.03, "Hub, meta-llama/Meta-Llama-3-8B-Instruct: 8.03B"),
    "llama3_2_1b": (1.23, "Llama 3.2 model card: 1B (1.23B)"),
    "mistral_7b": (7.25, "Hub, mistralai/Mistral-7B-Instruct-v0.3: 7.25B"),
    "minicpm": (2.72, "MiniCPM README: 2.4B non-embedding, 2.7B with embeddings; Hub: 2.72B"),
    "yi": (6.06, "Hub, 01-ai/Yi-1.5-6B-Chat: 6.06B"),
    # vision-language: the vision tower and projector count too
    "qwen2_5_vl_3b": (3.75, "Hub, Qwen/Qwen2.5-VL-3B-Instruct: 3.75B"),
    "qwen3_vl_4b": (4.44, "Hub, Qwen/Qwen3-VL-4B-Instruct: 4.44B"),
    "internvl3_2b": (2.09, "Hub, OpenGVLab/InternVL3-2B: 2.09B (InternViT-300M + Qwen2.5-1.5B)"),
    "gemma3_4b": (4.3, "Gemma 3 technical report, table 1: 417M vision encoder, 675M embedding, 3,209M non-embedding"),
}


def committed_parameters(model_dir) -> int:
    """Parameters stored in a checkpoint's safetensors file."""
    with safe_open(model_dir / "model.safetensors", framework="pt") as weights:
        return sum(math.prod(weights.get_slice(name).get_shape()) for name in weights.keys())


@pytest.mark.parametrize("option", MODEL_OPTIONS)
def test_parameter_count_matches_the_published_one(option):
    model_cfg = compose(f"model={option}").model
    config, origin = architecture_config(model_cfg)
    counts = parameter_counts(config)
    if option in TINY_DIRS:
        assert origin == "local dir"
        assert counts["total"] == committed_parameters(ASSETS / TINY_DIRS[option])
        return
    assert origin in ({"shipped", "local dir"} if model_cfg.source == "embedded" else {"shipped"})
    assert option in PUBLISHED, f"add the published parameter count of model={option} to PUBLISHED"
    published, _source = PUBLISHED[option]
    assert counts["total"] == pytest.approx(published * 1e9, rel=0.03)
    parts = counts["embedding"] + counts["head"] + counts["layers"] * counts["per_layer"] + counts["vision"]
    assert parts <= counts["total"] < 1.001 * parts  # the rest is the final norm


@pytest.mark.parametrize("option", MODEL_OPTIONS)
def test_lora_targets_exist_in_the_native_equivalent(option):
    model_cfg = compose(f"model={option}").model
    config, _origin = architecture_config(model_cfg)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(native_config(config))
    linear = {name.rsplit(".", 1)[-1] for name, module in model.named_modules() if isinstance(module, torch.nn.Linear)}
    assert set(native_lora_targets(config, list(model_cfg.lora_target_modules))) <= linear


def test_the_shipped_embedded_config_is_what_the_conversion_writes():
    converted = converted_gemma_dir() / "config.json"
    if not converted.is_file():
        pytest.skip("the embedded Gemma is not converted on this machine")
    assert parameter_counts(shipped_config(EMBEDDED_ID)) == parameter_counts(json.loads(converted.read_text()))


def test_from_scratch_overrides_change_the_architecture():
    overrides = ["+model.config_overrides.num_hidden_layers=4", "model.train_tokenizer=8000"]
    scratch, _origin = architecture_config(compose("model=gemma3_270m", "model.from_scratch=true", *overrides).model)
    counts = parameter_counts(scratch)
    assert (counts["layers"], counts["embedding"]) == (4, 8000 * scratch["hidden_size"])
    pretrained, _origin = architecture_config(compose("model=gemma3_270m", *overrides).model)
    assert pretrained["num_hidden_layers"] == 18  # overrides are for from_scratch only


def test_an_unknown_hub_id_offline_fails_naming_model_path():
    model_cfg = compose("model=qwen", "model.path=someone/not-in-the-zoo").model
    with pytest.raises(OnestopError, match=r"model.path=someone/not-in-the-zoo: .*unreachable"):
        architecture_config(model_cfg)


def test_counts_are_the_callers_to_change():
    config = shipped_config("Qwen/Qwen2.5-7B-Instruct")
    parameter_counts(config)["total"] = 0
    assert parameter_counts(dict(config))["total"] > 7e9  # the cached counts are untouched


SYSTEM, Q1, A1, Q2, A2 = "You are a terse assistant.", "What is 2 + 2?", "4.", "And 3 + 3?", "6."
CONVERSATION = [
    {"role": "system", "content": SYSTEM},
    {"role": "user", "content": Q1},
    {"role": "assistant", "content": A1},
    {"role": "user", "content": Q2},
    {"role": "assistant", "content": A2},
]
BOS, EOS = "<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>"  # DeepSeek's (full-width bars, U+2581 spaces)

# Each family's documented format for CONVERSATION, written out by hand from its published template.
EXPECTED = {
    "chatml": (
        f"<|im_start|>system\n{SYSTEM}<|im_end|>\n<|im_start|>user\n{Q1}<|im_end|>\n<|im_start|>assistant\n{A1}"
        f"<|im_end|>\n<|im_start|>user\n{Q2}<|im_end|>\n<|im_start|>assistant\n{A2}<|im_end|>\n"
    ),
    "gemma": (
        f"<bos><start_of_turn>user\n{SYSTEM}\n\n{Q1}<end_of_turn>\n<start_of_turn>model\n{A1}<end_of_turn>\n"
        f"<start_of_turn>user\n{Q2}<end_of_turn>\n<start_of_turn>model\n{A2}<end_of_turn>\n"
    ),
    "llama3": (
        f"<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n{SYSTEM}<|eot_id|>"
        f"<|start_header_id|>user<|end_header_id|>\n\n{Q1}<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"
        f"{A1}<|eot_id|><|start_header_id|>user<|end_header_id|>\n\n{Q2}<|eot_id|>"
        f"<|start_header_id|>assistant<|end_header_id|>\n\n{A2}<|eot_id|>"
    ),
    "mistral": f"<s>[INST] {SYSTEM}\n\n{Q1}[/INST] {A1}</s>[INST] {Q2}[/INST] {A2}</s>",
    "glm4": f"[gMASK]<sop><|system|>\n{SYSTEM}<|user|>\n{Q1}<|assistant|>\n{A1}<|user|>\n{Q2}<|assistant|>\n{A2}",
    "chatglm3": (
        f"[gMASK]sop<|system|>\n {SYSTEM}<|user|>\n {Q1}<|assistant|>\n {A1}<|user|>\n {Q2}<|assistant|>\n {A2}"
    ),
    "internlm2": (
        f"<s><|im_start|>system\n{SYSTEM}<|im_end|>\n<|im_start|>user\n{Q1}<|im_end|>\n<|im_start|>assistant\n{A1}"
        f"<|im_end|>\n<|im_start|>user\n{Q2}<|im_end|>\n<|im_start|>assistant\n{A2}<|im_end|>\n"
    ),
    "baichuan2": f"{SYSTEM}<reserved_106>{Q1}<reserved_107>{A1}</s><reserved_106>{Q2}<reserved_107>{A2}</s>",
    "deepseek": f"{BOS}{SYSTEM}\n\nUser: {Q1}\n\nAssistant: {A1}{EOS}User: {Q2}\n\nAssistant: {A2}{EOS}",
    "deepseek_coder": (
        f"{BOS}{SYSTEM}\n### Instruction:\n{Q1}\n### Response:\n{A1}\n<|EOT|>\n"
        f"### Instruction:\n{Q2}\n### Response:\n{A2}\n<|EOT|>\n"
    ),
    "minicpm": f"<s>{SYSTEM}<用户>{Q1}<AI>{A1}</s><用户>{Q2}<AI>{A2}</s>",
}


@pytest.fixture(scope="module")
def tiny_tokenizer():
    tokenizer = AutoTokenizer.from_pretrained(ASSETS / "tiny-qwen2")
    # Gemma's template takes BOS from the tokenizer (the others write their family's markers themselves); the
    # tiny one has none, so it gets Gemma's.
    tokenizer.bos_token = "<bos>"
    return tokenizer


@pytest.mark.parametrize("option", MODEL_OPTIONS)
def test_the_family_template_renders_its_format_prefix_by_prefix(option, tiny_tokenizer):
    model_cfg = compose(f"model={option}").model
    assert model_cfg.template_family, f"model={option}: set template_family"
    assert model_cfg.chat_template in (None, model_cfg.template_family)
    tokenizer = tiny_tokenizer
    tokenizer.chat_template = bundled_template(model_cfg.template_family)
    full = render(tokenizer, CONVERSATION)
    assert full == EXPECTED[model_cfg.template_family]
    full_ids = tokenizer(full, add_special_tokens=False)["input_ids"]
    for turn, message in enumerate(CONVERSATION):
        if message["role"] != "assistant":
            continue
        prompt = render(tokenizer, CONVERSATION[:turn], add_generation_prompt=True)
        assert full.startswith(prompt)
        prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        assert full_ids[: len(prompt_ids)] == prompt_ids
    # training renders through the same path, and trains on both answers
    trained = tokenize_conversation(tokenizer, CONVERSATION, max_seq_len=4096)
    assert trained["input_ids"] == full_ids
    answers = tokenizer.decode([t for t in trained["labels"] if t != -100])
    assert A1 in answers and A2 in answers and SYSTEM not in answers


def test_every_zoo_option_names_its_licence_and_a_known_tool_format():
    for option in MODEL_OPTIONS:
        model_cfg = compose(f"model={option}").model
        assert option in TINY_DIRS or model_cfg.licence, f"model={option}: set licence"
        tool_format(model_cfg.tool_format)  # an unknown name raises
