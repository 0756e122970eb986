"""Sweeps (real Hydra multiruns of tiny trainings) and recipes with provenance."""

import csv
import importlib.util
import json
import shutil
from pathlib import Path

import pytest
import yaml
from conftest import TINY, TINY_DATA, compose, run_invoke
from helpers import wandb_records

from onestop.core.errors import OnestopError
from onestop.core.paths import PROJECT_ROOT
from onestop.sweep.app import objective
from onestop.sweep.runner import run_sweep as sweep
from onestop.sweep.runner import translate
from onestop.training.train import train

SWEEP_BASE = [*TINY, "trainer.max_steps=2"]


def run_sweep(tmp_path, *overrides, env=None):
    sweep_dir = tmp_path / "sweep"
    result = run_invoke("sweep", *SWEEP_BASE, *overrides, f"hydra.sweep.dir={sweep_dir}", env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    return sweep_dir, result


@pytest.mark.slow
def test_grid_sweep_summary_plot_winner_and_wandb_group(tmp_path):
    sweep_dir, result = run_sweep(tmp_path, "logger=wandb", "method.r=4,8", "optim.lr=1e-4,3e-3")
    rows = list(csv.DictReader((sweep_dir / "summary.csv").open()))
    swept = [(int(r["method.r"]), float(r["optim.lr"])) for r in rows]
    assert swept == [(4, 1e-4), (4, 3e-3), (8, 1e-4), (8, 3e-3)]
    for row in rows:  # the summary agrees with what each trial wrote
        metrics = json.loads((sweep_dir / row["trial"] / "metrics.json").read_text())
        assert float(row["val_loss"]) == pytest.approx(metrics["val_loss"]) == pytest.approx(float(row["objective"]))
    best = min(rows, key=lambda r: float(r["objective"]))
    assert f"best: **{best['trial']}**" in (sweep_dir / "summary.md").read_text()
    assert (sweep_dir / "objective.png").read_bytes()[:4] == b"\x89PNG"
    winner = yaml.safe_load((sweep_dir / "best_recipe.yaml").read_text())
    assert winner["method"]["r"] == int(best["method.r"]) and winner["optim"]["lr"] == float(best["optim.lr"])
    groups = set()
    for trial in rows:
        [run_file] = (sweep_dir / trial["trial"] / "wandb").glob("offline-run-*/run-*.wandb")
        groups |= {r.run.run_group for r in wandb_records(run_file) if r.WhichOneof("record_type") == "run"}
    assert groups == {f"sweep-{sweep_dir.name}"}  # every trial its own W&B run, all in one group
    assert "Sweep: val_loss per trial" in result.stdout


@pytest.mark.slow
def test_optuna_sweep_of_three_trials(tmp_path):
    sweep_dir, _ = run_sweep(
        tmp_path, "logger=none", "sweeper=optuna", "sweeper.n_trials=3", "optim.lr=interval(1e-4,1e-2)"
    )
    rows = list(csv.DictReader((sweep_dir / "summary.csv").open()))
    assert len(rows) == 3 and len({r["optim.lr"] for r in rows}) == 3
    optuna = yaml.safe_load((sweep_dir / "optimization_results.yaml").read_text())
    assert optuna["best_value"] == pytest.approx(min(float(r["objective"]) for r in rows))


@pytest.mark.slow
def test_joblib_launcher_runs_trials_in_parallel_processes(tmp_path):
    sweep_dir, _ = run_sweep(tmp_path, "logger=none", "launcher=joblib", "launcher.n_jobs=2", "method.r=4,8")
    rows = list(csv.DictReader((sweep_dir / "summary.csv").open()))
    assert [(r["method.r"], r["status"]) for r in rows] == [("4", "ok"), ("8", "ok")]
    launcher = yaml.safe_load((sweep_dir / "multirun.yaml").read_text())["hydra"]["launcher"]
    assert launcher["_target_"].endswith("JoblibLauncher") and launcher["n_jobs"] == 2


def test_sweep_typo_fails_before_any_trial(tmp_path):
    result = run_invoke("sweep", *SWEEP_BASE, "method.rr=4,8", f"hydra.sweep.dir={tmp_path / 'sweep'}")
    assert result.returncode == 2 and "method.rr" in result.stderr.strip().splitlines()[-1]
    assert not (tmp_path / "sweep").exists()


@pytest.mark.parametrize(
    ("overrides", "fragments"),
    [
        (["method=lora,full", "method.r=4"], ["config key 'method.r' does not exist"]),
        (["optim.lr=interval(-1,1e-3)"], ["optim.lr", "positive learning rate"]),
        (["sweep.direction=maximise"], ["sweep.direction", "minimize, maximize"]),
        (["sweep.objective=eval:nosuch/acc"], ["sweep.objective=eval:nosuch/acc", "qa"]),
        (["sweep.objective=accuracy"], ["sweep.objective=accuracy", "eval:SUITE/METRIC"]),
        (["data.val_ratio=0"], ["sweep.objective=val_loss", "data.val_ratio"]),
        (["launcher=ray"], ["launcher=ray", "onestop[ray]"]),
    ],
    ids=["grid-trial", "optuna-range", "direction", "eval-suite", "objective", "no-validation", "ray"],
)
def test_every_trial_is_checked_before_the_sweep_starts(overrides, fragments, tmp_path):
    # In-process, as `invoke sweep` runs it: no trial may start, and the error is one line.
    if "launcher=ray" in overrides and importlib.util.find_spec("hydra_plugins.hydra_ray_launcher"):
        pytest.skip("the Ray launcher is installed here")
    with pytest.raises(OnestopError) as caught:
        sweep([*SWEEP_BASE, *overrides, f"hydra.sweep.dir={tmp_path / 'sweep'}"])
    assert "\n" not in str(caught.value)
    for fragment in fragments:
        assert fragment in str(caught.value)
    assert not (tmp_path / "sweep").exists()


@pytest.mark.slow
def test_a_recipe_sweep_records_a_failed_trial_and_goes_on(tmp_path):
    # Swept from a shared recipe file with its own objective; the second trial asks for a new vocabulary
    # without from_scratch: it fails at once, the first one trains.
    recipe = tmp_path / "mine.yaml"
    recipe.write_text(
        "# invoke sweep recipe=mine.yaml\ndefaults:\n  - train\n  - override model: tiny\n  - _self_\n"
        "sweep:\n  objective: train_loss\n"
    )
    sweep_dir, result = run_sweep(tmp_path, f"recipe={recipe}", "logger=none", "model.train_tokenizer=null,8")
    rows = list(csv.DictReader((sweep_dir / "summary.csv").open()))
    assert [r["status"].split(":")[0] for r in rows] == ["ok", "failed"]
    assert float(rows[0]["objective"]) == pytest.approx(float(rows[0]["train_loss"]))
    assert "model.train_tokenizer" in rows[1]["status"] and rows[1]["objective"] == ""
    assert "onestop sweep: trial 1 failed: model.train_tokenizer" in result.stderr
    assert "Objective: `train_loss` (minimize); best: **trial_0**" in (sweep_dir / "summary.md").read_text()
    best = sweep_dir / "best_recipe.yaml"
    assert best.read_text().startswith(f"# invoke train recipe={best}\n")


@pytest.mark.parametrize(
    ("launcher", "target"),
    [
        ("basic", "BasicLauncher"),
        ("joblib", "JoblibLauncher"),
        ("submitit_slurm", "SlurmLauncher"),
        ("submitit_local", "LocalLauncher"),
        ("ray", "RayLauncher"),
    ],
)
def test_launcher_configs_compose(launcher, target):
    cfg = compose(*translate([f"launcher={launcher}"]))
    assert cfg.hydra.launcher._target_.endswith(target)


def test_sweep_objective_from_an_eval_suite(tmp_path):
    objective_keys = ["sweep.objective=eval:qa/token_f1", f"sweep.eval_path={TINY_DATA}", "sweep.eval_limit=3"]
    cfg = compose(*SWEEP_BASE, "logger=none", *objective_keys, run_dir=tmp_path / "run")
    value = objective(cfg, train(cfg))
    saved = json.loads((tmp_path / "run" / "eval" / "sweep" / "results.json").read_text())
    assert value == saved["metrics"]["qa"]["token_f1"]["value"] and 0 <= value <= 1


@pytest.fixture(scope="module")
def recorded_run(tmp_path_factory) -> Path:
    """A 3-step run trained from another directory with a relative data path, as a user would."""
    root = tmp_path_factory.mktemp("recorded")
    work = root / "work"
    work.mkdir()
    shutil.copy(TINY_DATA, work / "train.jsonl")
    overrides = [o if not o.startswith("data.path=") else "data.path=train.jsonl" for o in TINY]
    first = run_invoke(
        "-r", str(PROJECT_ROOT), "train", *overrides, "trainer.max_steps=3", "logger=csv",
        f"hydra.run.dir={root / 'a'}", cwd=work,
    )  # fmt: skip
    assert first.returncode == 0, first.stderr[-2000:]
    return root


def test_recipe_round_trip_reproduces_the_losses(recorded_run, tmp_path):
    recipe = recorded_run / "a" / "recipe.yaml"
    text = recipe.read_text()
    assert text.startswith(f"# invoke train recipe={recorded_run / 'a'}/recipe.yaml\n")
    written = yaml.safe_load(text)
    assert written["data"]["path"] == str(recorded_run / "work" / "train.jsonl")  # the relative path, resolved
    assert written["model"]["path"] == "${project_root:}/tests/assets/tiny-qwen2"  # any checkout finds it
    facts = written["provenance"]
    assert facts["packages"]["torch"] and facts["data_fingerprint"] and facts["hardware"]["accelerator"] == "cpu"
    assert facts["data_content"] and len(facts["onestop"]["commit"]) == 40 and facts["metrics"]["steps"] == 3

    again = run_invoke("train", f"recipe={recipe}", f"hydra.run.dir={tmp_path / 'b'}")
    assert again.returncode == 0, again.stderr[-2000:]
    assert "warning:" not in again.stdout
    runs = [recorded_run / "a", tmp_path / "b"]
    losses = [json.loads((run / "metrics.json").read_text())["train_losses"] for run in runs]
    assert len(losses[0]) == 3 and losses[0] == losses[1]  # identical, not merely close

    diff = run_invoke("recipe.diff", str(runs[0]), str(runs[1]))
    assert diff.returncode == 0 and "provenance.run_dir" in diff.stdout and "optim.lr" not in diff.stdout


def test_recipe_warns_about_changed_packages_and_data(recorded_run, tmp_path):
    recipe = yaml.safe_load((recorded_run / "a" / "recipe.yaml").read_text())
    recipe["provenance"]["packages"]["torch"] = "1.0.0"
    edited_data = tmp_path / "train.jsonl"
    edited_data.write_text(TINY_DATA.read_text().replace("Paris", "Lyon"))
    recipe["data"]["path"] = str(edited_data)
    (tmp_path / "edited.yaml").write_text(yaml.safe_dump(recipe))
    again = run_invoke(
        "train", f"recipe={tmp_path / 'edited.yaml'}", "trainer.max_steps=1", f"hydra.run.dir={tmp_path / 'b'}"
    )
    assert again.returncode == 0, again.stderr[-2000:]
    warnings = [line for line in again.stdout.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 2, warnings
    assert "torch 1.0.0" in warnings[0] and "data fingerprint" in warnings[1]


def test_recipe_diff_of_two_shipped_recipes():
    result = run_invoke("recipe.diff", "qwen2_5_0_5b_lora_gpu", "qwen2_5_7b_qlora_24gb")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "differences" in result.stdout
    rows = {line.split("│")[1].strip(): line for line in result.stdout.splitlines() if line.count("│") == 4}
    assert "Qwen/Qwen2.5-0.5B-Instruct" in rows["model.path"] and "Qwen/Qwen2.5-7B-Instruct" in rows["model.path"]
    assert "apply_qlora" in rows["method._target_"] and "method.quantization.quant_type" in rows
    assert "method.r" not in rows  # both rank 16: the QLoRA recipe writes it out, LoRA's default is the same
    missing = run_invoke("recipe.diff", "nope", "qwen2_5_0_5b_lora_gpu")
    assert missing.returncode == 2 and "recipe=nope" in missing.stderr
