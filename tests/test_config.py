"""Every config option composes; every kind of bad config fails at composition with one clear line."""

import shlex
import subprocess
import sys

import pytest
from conftest import TINY, compose, run_invoke
from omegaconf import OmegaConf

from onestop.config.compose import ConfigError
from onestop.config.compose import compose as compose_config
from onestop.config.groups import config_groups, default_options, list_group_options
from onestop.core.paths import RECIPES_DIR
from onestop.core.rundir import job_config

GROUP_OPTIONS = [(group, option) for group in config_groups() for option in list_group_options(group)]


@pytest.mark.parametrize(("group", "option"), GROUP_OPTIONS, ids=[f"{g}={o}" for g, o in GROUP_OPTIONS])
def test_every_group_option_composes_and_resolves(group, option, tmp_path):
    if group == "eval":
        cfg = compose_config("eval", [f"eval={option}", "eval.path=suite.jsonl", f"hydra.run.dir={tmp_path}"])
        resolved = job_config(cfg)
        assert resolved["eval"]["name"] == option and resolved["output_dir"] == str(tmp_path)
        assert resolved["eval"]["kind"] in {"public", "mcq", "qa", "ppl", "tools", "agent", "classify", "rm"}
        return
    if group == "deploy":
        resolved = job_config(compose_config("deploy", [f"deploy={option}", f"hydra.run.dir={tmp_path}"]))
        assert resolved["deploy"]["backend"] == option and resolved["host"] == "127.0.0.1"
        return
    if group == "tools":
        resolved = job_config(compose_config("agent", [f"tools=[{option}]", f"hydra.run.dir={tmp_path}"]))
        assert list(resolved["tools"]) == [option]
        assert resolved["tools"][option]["_target_"].startswith("onestop.agents.builtin.")
        return
    overrides = [f"{group}={option}"]
    if group == "data":
        overrides.append("data.path=train.jsonl")  # required: composition refuses a config without it
    cfg = compose(*overrides, run_dir=tmp_path)
    resolved = job_config(cfg)
    assert resolved["paths"]["run_dir"] == str(tmp_path)
    if group == "model":
        assert resolved["model"]["name"] == option
        assert resolved["model"]["path"] and resolved["model"]["lora_target_modules"]
        assert resolved["data"]["max_seq_len"] == resolved["model"]["max_seq_len"]
    if group == "method":
        assert resolved["method"]["_target_"].startswith("onestop.methods.")


def test_model_options_name_their_hub_ids():
    expected = {
        "qwen": "Qwen/Qwen2.5-0.5B-Instruct",
        "qwen7b": "Qwen/Qwen2.5-7B-Instruct",
        "llama3_8b": "meta-llama/Meta-Llama-3-8B-Instruct",
        "internlm2_5_7b": "internlm/internlm2_5-7b-chat",
        "mistral_7b": "mistralai/Mistral-7B-Instruct-v0.3",
    }
    for option, hub_id in expected.items():
        assert compose(f"model={option}").model.path == hub_id


def test_lora_targets_follow_the_model():
    cfg = compose("model=internlm2_5_7b")
    assert list(cfg.method.target_modules) == ["wqkv", "wo", "w1", "w2", "w3"]


@pytest.mark.parametrize("recipe", sorted(p.stem for p in RECIPES_DIR.glob("*.yaml")))
def test_every_recipe_composes(recipe, tmp_path):
    """With the command it opens with, which sets what the recipe leaves to the user (data.path)."""
    command = (RECIPES_DIR / f"{recipe}.yaml").read_text().splitlines()[0]
    assert command.startswith("# invoke ")
    words = shlex.split(command.removeprefix("#").split("(")[0])
    cfg = compose(*[w for w in words if "=" in w], run_dir=tmp_path)
    assert job_config(cfg)["model"]["name"]


def test_recipe_from_a_shared_file(tmp_path):
    shared = tmp_path / "mine.yaml"
    shared.write_text("defaults:\n  - train\n  - override model: tiny\n  - _self_\noptim:\n  lr: 3.0e-4\n")
    cfg = compose(f"recipe={shared}", "method.r=4")
    assert (cfg.model.name, cfg.optim.lr, cfg.method.r) == ("tiny", 3.0e-4, 4)


def test_overrides_reach_the_config(tmp_path):
    cfg = compose("model=qwen", "method=lora", "trainer.max_steps=5", "method.r=8", run_dir=tmp_path)
    assert (cfg.model.name, cfg.trainer.max_steps, cfg.method.r, cfg.method.alpha) == ("qwen", 5, 8, 32)
    assert cfg.paths.run_dir == str(tmp_path)


def test_defaults_listed_for_help_match_composition():
    cfg = compose()
    defaults = default_options()
    assert cfg.model.name == defaults["model"] and cfg.data.name == defaults["data"]


BAD = [
    (["trainer.max_stepz=3"], ["trainer.max_stepz", "does not exist", "max_steps", "max_epochs"]),
    (["optim.lr=abc"], ["optim.lr", "expected float", "'abc'"]),
    (["method=lorra"], ["method=lorra", "unknown option", "freeze, full, lora"]),
    (["model=qwen3000"], ["model=qwen3000", "gemma3_270m", "qwen7b"]),
    (["method.rank=8"], ["method.rank", "adapter, alpha, dropout, name, r, target_modules"]),
    (["method=freeze", "method.trainable_layers=two"], ["method.trainable_layers", "expected integer"]),
    (["data.val_ratio=1.5"], ["data.val_ratio", "[0, 1)"]),
    (["trainer.max_steps"], ["trainer.max_steps", "KEY=VALUE"]),
    (["recipe=nope"], ["recipe=nope", "gemma3_270m_lora_demo"]),
    (["recipe=gemma3_270m_lora_demo", "trainer.max_epochz=1"], ["trainer.max_epochz", "max_epochs"]),
]


@pytest.mark.parametrize(("overrides", "fragments"), BAD, ids=[" ".join(o) for o, _ in BAD])
def test_bad_config_fails_with_one_clear_line(overrides, fragments):
    with pytest.raises(ConfigError) as caught:
        compose(*overrides)
    message = str(caught.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message


def test_bad_config_on_the_command_line_exits_2_before_loading_torch(tmp_path):
    code = (
        "import sys\n"
        "from invoke.exceptions import Exit\n"
        "from onestop.cli import run_stage\n"
        "try:\n"
        "    run_stage('train', ['trainer.max_stepz=3', f'hydra.run.dir={sys.argv[1]}'])\n"
        "except Exit as exit_:\n"
        "    print(exit_.message)\n"
        "    print('torch imported' if 'torch' in sys.modules else 'torch not imported')\n"
        "    sys.exit(exit_.code)\n"
    )
    result = subprocess.run([sys.executable, "-c", code, str(tmp_path / "run")], capture_output=True, text=True)
    assert result.returncode == 2
    assert "onestop train: error: config key 'trainer.max_stepz' does not exist" in result.stdout
    assert "torch not imported" in result.stdout
    assert not (tmp_path / "run").exists()


def test_invoke_reports_bad_config_in_one_line():
    result = run_invoke("train", "optim.lr=abc")
    assert result.returncode == 2
    assert result.stderr.strip() == "onestop train: error: config key 'optim.lr': expected float, got 'abc'"


def test_print_config_without_loading_a_model():
    result = run_invoke("train", "model=qwen", "--cfg", "job")
    assert result.returncode == 0, result.stderr
    printed = OmegaConf.create(result.stdout)
    assert printed.model.path == "Qwen/Qwen2.5-0.5B-Instruct"
    assert "hydra" not in printed


def test_tiny_overrides_compose(tmp_path):
    cfg = compose(*TINY, run_dir=tmp_path)
    assert cfg.model.name == "tiny" and cfg.hardware.accelerator == "cpu"
