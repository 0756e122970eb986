"""The command line: bare Hydra overrides through the real `invoke`, fast listing, informative help."""

import subprocess
import sys

import pytest
from conftest import run_invoke

from onestop.cli import is_bare_key, is_override
from onestop.core.paths import PROJECT_ROOT


@pytest.mark.parametrize(
    "word", ["model=qwen", "trainer.max_steps=5", "+trainer.foo=1", "++a.b=2", "~logger", "hydra/launcher=basic"]
)
def test_hydra_override_shapes_are_recognised(word):
    assert is_override(word)


@pytest.mark.parametrize("word", ["train", "--cfg", "-o", "job", "=5", "demo"])
def test_other_words_are_left_to_invoke(word):
    assert not is_override(word)


def test_list_shows_tasks_without_importing_torch():
    result = run_invoke("--list")
    assert result.returncode == 0, result.stderr
    assert "train" in result.stdout and "demo" in result.stdout
    probe = subprocess.run(
        [sys.executable, "-c", "import sys, tasks; print('torch' in sys.modules, 'hydra' in sys.modules)"],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
    )
    assert probe.stdout.split() == ["False", "False"], probe.stderr


def test_train_help_lists_groups_and_options():
    result = run_invoke("train", "--help")
    assert result.returncode == 0, result.stderr
    for line in ("model ", "data ", "method ", "hardware ", "logger "):
        assert line in result.stdout
    for option in ("gemma3_270m*", "qwen7b", "glm4_9b", "lora*", "freeze", "wandb*", "csv", "auto*"):
        assert option in result.stdout


def test_bare_overrides_mix_with_invoke_flags():
    result = run_invoke("train", "model=qwen", "--cfg", "job", "method=freeze", "method.trainable_layers=3")
    assert result.returncode == 0, result.stderr
    assert "name: qwen" in result.stdout and "trainable_layers: 3" in result.stdout


def test_stock_invoke_would_reject_the_bare_form(tmp_path):
    (tmp_path / "tasks.py").write_text(
        "from invoke import task\n\n@task(iterable=['overrides'])\ndef train(c, overrides=None):\n    pass\n"
    )
    result = run_invoke("train", "model=qwen", cwd=tmp_path)
    assert result.returncode != 0
    assert "No idea what 'model=qwen' is!" in result.stderr


@pytest.mark.parametrize("word", ["trainer.max_steps", "data.path", "optim.betas"])
def test_a_key_without_its_value_goes_to_the_config_not_to_invoke(word):
    assert is_bare_key(word, tasks={"eval.compare"})


@pytest.mark.parametrize("word", ["eval.compare", "train", "job", "-o", "=5"])
def test_task_names_and_flags_are_not_bare_keys(word):
    assert not is_bare_key(word, tasks={"eval.compare"})
