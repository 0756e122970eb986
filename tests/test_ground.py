"""The ground floor: RunDir is the one reader of run directories, the W&B mode decision, shipped configs."""

import json
import os
import subprocess
import sys
import zipfile

import pytest
from conftest import ASSETS, TINY, compose, run_invoke
from omegaconf import OmegaConf

from onestop.config.compose import compose as compose_config
from onestop.core.errors import OnestopError
from onestop.core.hub import hub_reachable
from onestop.core.paths import CONF_DIR, PACKAGE_DIR, PROJECT_ROOT, RECIPES_DIR
from onestop.core.rundir import RunDir
from onestop.core.wandb_mode import wandb_mode
from onestop.deploy.export import export_run
from onestop.deploy.service import deploy_config, model_to_serve
from onestop.evaluation.run import describe_target, evaluate, load_target_tokenizer
from onestop.training.train import train

DATA = ASSETS / "data"
TINY_MODEL = [o for o in TINY if not o.startswith("data")]
QA = ASSETS / "eval" / "qa.jsonl"


def test_wandb_mode_treats_empty_variables_as_unset(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc with W&B credentials
    monkeypatch.setenv("WANDB_MODE", "")
    monkeypatch.setenv("WANDB_PROJECT", "  ")
    assert wandb_mode() == "offline"
    assert "WANDB_MODE" not in os.environ and "WANDB_PROJECT" not in os.environ
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert wandb_mode() == "disabled"
    monkeypatch.setenv("WANDB_MODE", "online")
    assert wandb_mode() == "offline"  # asked for online, but there is no key to log in with
    monkeypatch.setenv("WANDB_API_KEY", "fake-key-for-the-test")
    assert wandb_mode() == "online" and wandb_mode(offline=True) == "offline"


def test_hub_reachability_honours_offline_and_ignores_empty_values(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert hub_reachable() is False
    monkeypatch.setenv("HF_HUB_OFFLINE", "")
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # empty endpoint would crash; a dead one answers False
    assert hub_reachable(timeout=0.5) is False


def test_a_directory_that_is_not_a_run_is_refused_by_name(tmp_path):
    with pytest.raises(OnestopError, match=rf"config key 'run_dir': {tmp_path} is not a training run"):
        RunDir.existing(tmp_path)
    (tmp_path / "config.yaml").write_text("model: {name: tiny}\n")
    (tmp_path / "adapter").mkdir()  # a directory alone is not an adapter: training stopped before saving it
    with pytest.raises(OnestopError, match="neither adapter/ nor model/ found; did the run finish"):
        RunDir.existing(tmp_path).weights()
    assert RunDir(tmp_path).checkpoints() == [] and RunDir(tmp_path).wandb_run_id() is None


def test_configs_and_recipes_are_read_through_the_package():
    assert CONF_DIR == (PACKAGE_DIR / "shipped" / "conf").resolve() and (CONF_DIR / "train.yaml").is_file()
    assert (RECIPES_DIR / "gemma3_270m_lora_demo.yaml").is_file()
    cfg = compose_config("train", ["recipe=gemma3_270m_lora_demo"])
    assert cfg.data.path == str(PACKAGE_DIR / "data" / "demo" / "train.jsonl")


@pytest.mark.slow
def test_a_wheel_install_composes_configs_from_anywhere(tmp_path):
    """`pip install .` (not editable): conf/ and recipes/ travel inside the wheel."""
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(PROJECT_ROOT), "--no-deps", "-q", "-w", str(tmp_path / "dist")],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert built.returncode == 0, built.stderr[-2000:]
    (wheel,) = (tmp_path / "dist").glob("onestop-*.whl")
    zipfile.ZipFile(wheel).extractall(tmp_path / "site")
    probe = (
        "import onestop\n"
        "from onestop.config.compose import compose\n"
        "cfg = compose('train', ['recipe=gemma3_270m_lora_demo'])\n"
        "import os; print(onestop.__file__); print(cfg.model.name, os.path.isfile(cfg.data.path))\n"
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "site")}
    result = subprocess.run([sys.executable, "-c", probe], cwd=elsewhere, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    where, composed = result.stdout.splitlines()
    assert where.startswith(str(tmp_path / "site")) and composed == "gemma3_270m True"


# One tiny run of every kind; each must be found whole by evaluation, export and deployment.
KINDS = {
    "lora": (["method=lora", *TINY], "adapter"),
    "full": (["method=full", *TINY], "model"),
    "freeze": (["method=freeze", "method.trainable_layers=1", *TINY], "model"),
    "dpo": (
        [*TINY_MODEL, "stage=dpo", "data=preference", f"data.path={DATA / 'preference.jsonl'}", "data.val_ratio=0"],
        "adapter",
    ),
    "pretrain": (
        [*TINY_MODEL, "stage=pretrain", "data=text", f"data.path={DATA / 'corpus' / '*.txt'}", "method=full"],
        "model",
    ),
}


@pytest.mark.slow
@pytest.mark.parametrize("kind", list(KINDS))
def test_every_kind_of_run_is_found_by_eval_export_and_deploy(tmp_path, kind):
    overrides, weights_kind = KINDS[kind]
    result = train(compose(*overrides, "trainer.max_steps=2", "logger=none", run_dir=tmp_path / "run"))
    run = RunDir.existing(result.run_dir)
    assert run.weights().kind == weights_kind and run.weights().path.is_dir()
    assert run.metrics()["steps"] == 2 and run.recipe_file.is_file() and run.checkpoints()
    method = run.config().method
    assert method.name == (kind if kind in {"lora", "full", "freeze"} else {"dpo": "lora", "pretrain": "full"}[kind])
    assert method.adapter == (weights_kind == "adapter")

    eval_cfg = compose_config(
        "eval",
        ["model=tiny", "hardware=cpu", "logger=none", f"run_dir={run.path}", "eval=qa", f"eval.path={QA}",
         "eval.limit=2", f"hydra.run.dir={tmp_path / 'eval'}"],
    )  # fmt: skip
    target = describe_target(eval_cfg)
    assert target.identity["adapter" if weights_kind == "adapter" else "model_dir"] == str(run.weights().path)
    assert load_target_tokenizer(eval_cfg, target).chat_template
    scored = evaluate(eval_cfg)
    assert json.loads((scored.output_dir / "results.json").read_text())["target"]["kind"] == "run"

    merged = export_run(OmegaConf.create({"run_dir": str(run.path), "format": "merged", "output": None,
                                          "dtype": "float32"}))  # fmt: skip
    assert merged == run.export_dir("merged") and run.has_export("merged")

    served, adapter = model_to_serve(deploy_config(model=eval_cfg.model, run_dir=str(run.path)), "transformers")
    assert adapter is None and (served / "config.json").is_file()
    assert served == (run.export_dir("merged") if weights_kind == "adapter" else run.weights().path)


@pytest.mark.slow
def test_train_and_eval_log_to_wandb_with_an_empty_wandb_mode(tmp_path):
    """WANDB_MODE= (set but empty, as CI systems leave it): both stages log offline instead of failing."""
    run_dir = tmp_path / "run"
    env = {"WANDB_MODE": "", "HOME": str(tmp_path)}
    trained = run_invoke("train", *TINY, "trainer.max_steps=2", "logger=wandb", f"hydra.run.dir={run_dir}", env=env)
    assert trained.returncode == 0, trained.stderr[-3000:]
    run = RunDir(run_dir)
    run_id = run.wandb_run_id()
    assert run_id
    scored = run_invoke(
        "eval", f"run_dir={run_dir}", "eval=qa", f"eval.path={QA}", "eval.limit=2", "logger=wandb",
        f"hydra.run.dir={tmp_path / 'eval'}", env=env,
    )  # fmt: skip
    assert scored.returncode == 0, scored.stderr[-3000:]
    assert "W&B: logged offline" in scored.stdout
    assert {p.name.rsplit("-", 1)[-1] for p in run.wandb_dir.glob("*run-*-*")} == {run_id}  # the same W&B run
