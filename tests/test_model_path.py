"""`model.path` wins on every option, the default embedded Gemma's included: a directory the user names is the
model every task loads, and one that does not exist stops the task with one line naming it.

The tiny model (vocabulary 1,024, about 140K parameters) stands in for the user's model on the default option,
so any task that quietly fell back to Gemma (vocabulary 262,144) shows it.
"""

import pytest
from conftest import ASSETS, TINY_DATA, compose
from invoke.exceptions import Exit
from omegaconf import OmegaConf
from transformers import AutoConfig, AutoTokenizer

from onestop import cli
from onestop.config.compose import compose as compose_config
from onestop.core.paths import CONF_DIR
from onestop.core.rundir import SOURCE_FILE, made_from
from onestop.data.report import run_prepare
from onestop.deploy.service import base_model_dir, deploy_config, model_to_serve
from onestop.evaluation.targets import describe_target, load_target_tokenizer
from onestop.models import load_causal_lm, resolve_model_path
from onestop.models.embedded import EMBEDDED_PATH, is_embedded
from onestop.models.zoo import architecture_config
from onestop.selection.devices import this_machine
from onestop.selection.estimate import estimate_devices
from onestop.training.train import train

TINY_DIR = ASSETS / "tiny-qwen2"
QA = ASSETS / "eval" / "qa.jsonl"
MISSING = "/nonexistent/my-model"
NO_SUCH_DIRECTORY = "no such directory (expected a local model dir or hub id)"
ON_DEFAULT = ["hardware=cpu", "logger=none", "data=alpaca", f"data.path={TINY_DATA}", "data.batch_size=4"]


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("ONESTOP_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def test_the_embedded_option_names_its_own_file():
    option = OmegaConf.load(CONF_DIR / "model" / "gemma3_270m.yaml")
    assert option.source == "embedded" and option.path == EMBEDDED_PATH
    assert is_embedded(compose().model)
    assert not is_embedded(compose(f"model.path={TINY_DIR}").model)


def test_a_directory_named_on_the_default_option_is_what_data_prepare_and_estimate_read(home):
    cfg = compose(*ON_DEFAULT, f"model.path={TINY_DIR}")
    assert cfg.model.name == "gemma3_270m"  # still the default option: its template, the user's weights
    assert resolve_model_path(cfg.model) == str(TINY_DIR)
    config, origin = architecture_config(cfg.model)
    assert (config["vocab_size"], origin) == (1024, "local dir")

    prepared = run_prepare(cfg)
    assert 0 < prepared.train.values["input_ids"].max() < 1024  # Gemma's ids for English words run far higher

    estimated = estimate_devices(cfg, [this_machine()])[0].shape
    tiny = estimate_devices(compose(*ON_DEFAULT, "model=tiny"), [this_machine()])[0].shape
    assert estimated.vocab_size == 1024 and estimated.params_total == tiny.params_total


def test_a_directory_named_on_the_default_option_is_what_eval_and_deploy_load(home, tmp_path):
    overrides = [f"model.path={TINY_DIR}", "hardware=cpu", "logger=none", "eval=qa", f"eval.path={QA}"]
    eval_cfg = compose_config("eval", [*overrides, f"hydra.run.dir={tmp_path / 'eval'}"])
    target = describe_target(eval_cfg)
    assert target.identity["model_path"] == str(TINY_DIR)
    assert len(load_target_tokenizer(eval_cfg, target)) == 1024

    served = base_model_dir(compose(f"model.path={TINY_DIR}").model)  # Gemma's template: a serving copy
    assert (served / "config.json").resolve() == TINY_DIR / "config.json"
    tokenizer = AutoTokenizer.from_pretrained(served)
    assert len(tokenizer) == 1024 and "<start_of_turn>" in tokenizer.chat_template


def test_each_model_directory_gets_its_own_serving_copy_remade_when_its_files_change(home, tmp_path):
    other = tmp_path / "my-model"
    other.mkdir()
    for item in TINY_DIR.iterdir():
        (other / item.name).write_bytes(item.read_bytes())
    tiny_copy = base_model_dir(compose(f"model.path={TINY_DIR}").model)
    other_copy = base_model_dir(compose(f"model.path={other}").model)
    assert tiny_copy != other_copy  # one option, two directories: neither copy stands in for the other
    assert (other_copy / "model.safetensors").resolve() == other / "model.safetensors"
    assert (tiny_copy / "model.safetensors").resolve() == TINY_DIR / "model.safetensors"

    recorded = made_from(other_copy)
    assert recorded and base_model_dir(compose(f"model.path={other}").model) == other_copy
    assert made_from(other_copy) == recorded  # unchanged: reused as it was
    (other / "config.json").write_text((other / "config.json").read_text().replace("\n", "\n\n", 1))
    base_model_dir(compose(f"model.path={other}").model)
    assert made_from(other_copy) != recorded and (other_copy / SOURCE_FILE).is_file()


def one_line_error(run) -> str:
    with pytest.raises(Exit) as stopped:
        run()
    assert stopped.value.code == 2 and "\n" not in stopped.value.message
    return stopped.value.message


@pytest.mark.parametrize("task", ["train", "data.prepare", "estimate", "eval", "deploy"])
def test_a_missing_directory_on_the_default_option_stops_every_task_in_one_line(task, home, tmp_path):
    overrides = [f"model.path={MISSING}", f"hydra.run.dir={tmp_path / 'run'}"]
    if task == "eval":
        overrides += ["hardware=cpu", "logger=none", "eval=qa", f"eval.path={QA}"]
    elif task == "deploy":
        overrides = [f"model.path={MISSING}", "deploy=transformers", "port=0"]
    else:
        overrides += ON_DEFAULT
    arguments = (True, "t4") if task == "estimate" else ()
    message = one_line_error(lambda: cli.run_stage(task, overrides, None, *arguments))
    assert message == f"onestop {task}: error: model.path={MISSING}: {NO_SUCH_DIRECTORY}"
    if task == "train":
        assert not (tmp_path / "run").exists()


def test_training_on_the_default_option_trains_the_named_directory_and_deploy_merges_into_it(home, tmp_path):
    result = train(compose(*ON_DEFAULT, f"model.path={TINY_DIR}", "trainer.max_steps=1", run_dir=tmp_path / "run"))
    tiny_params = sum(p.numel() for p in load_causal_lm(compose("model=tiny").model).parameters())
    assert result.metrics["total_params"] > tiny_params  # the tiny model and its adapter, not Gemma's 268M
    assert result.metrics["total_params"] < 2 * tiny_params
    merged = model_to_serve(deploy_config(model=compose().model, run_dir=str(result.run_dir)), "transformers")[0]
    assert AutoConfig.from_pretrained(merged).vocab_size == 1024
