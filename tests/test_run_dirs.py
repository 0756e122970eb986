"""A run directory holds one run, and what is made from a run's weights is keyed to them.

Training again into a directory that holds a run refuses before any work, unless `resume` continues that run or
`overwrite=true` replaces it (nothing of the earlier run left); a merged export of other weights than the run's
now is merged again rather than served.
"""

import os
import shutil
import subprocess
import sys

import pytest
import torch
from conftest import TINY, compose
from invoke.exceptions import Exit
from peft import PeftModel
from transformers import AutoModelForCausalLM

from onestop import cli
from onestop.core.errors import OnestopError
from onestop.core.rundir import SOURCE_FILE, RunDir, made_from
from onestop.deploy.export import current_export, export_fingerprint
from onestop.deploy.service import deploy_config, model_to_serve
from onestop.models import load_causal_lm
from onestop.training.train import train

FIRST = [*TINY, "logger=csv", "data.val_ratio=0", "trainer.max_steps=2", "optim.lr=1e-2"]


@pytest.fixture(scope="module")
def first_run(tmp_path_factory):
    """A finished tiny LoRA run: config, checkpoints, adapter, metrics, recipe and CSV logs."""
    run_dir = tmp_path_factory.mktemp("first") / "run"
    train(compose(*FIRST, run_dir=run_dir))
    return run_dir


@pytest.fixture
def used(first_run, tmp_path, monkeypatch):
    """A copy of the finished run to train into again, with a cache home of its own."""
    monkeypatch.setenv("ONESTOP_HOME", str(tmp_path / "home"))
    return shutil.copytree(first_run, tmp_path / "run")


def listing(root):
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in sorted(root.rglob("*"))}


def serve(run_dir):
    return model_to_serve(deploy_config(model=compose(*TINY).model, run_dir=str(run_dir)), "transformers")[0]


def test_training_into_a_used_directory_refuses_in_one_line_before_any_work(used, tmp_path):
    before = listing(used)
    with pytest.raises(Exit) as stopped:
        cli.run_stage("train", [*TINY, "logger=csv", "trainer.max_steps=1", f"hydra.run.dir={used}"])
    assert stopped.value.code == 2
    assert stopped.value.message == (
        f"onestop train: error: hydra.run.dir={used}: already holds a run (config.yaml, checkpoints/, adapter/, "
        "metrics.json, recipe.yaml); continue it with resume=auto, replace it with overwrite=true, or choose "
        "another hydra.run.dir"
    )
    assert listing(used) == before  # not a file touched, no lock left
    assert not (tmp_path / "home" / "datasets").exists()  # refused before the data was prepared


def test_overwrite_removes_every_file_of_the_earlier_run_first(used, capsys):
    serve(used)  # the earlier run's merged export, as `invoke deploy` leaves it
    (used / "eval" / "old").mkdir(parents=True)
    result = train(compose(*TINY, "logger=none", "trainer.max_steps=1", "overwrite=true", run_dir=used))
    assert f"overwrite=true: removing the earlier run in {used}" in capsys.readouterr().out
    left = {p.name for p in used.iterdir()}
    assert {"adapter", "checkpoints", "config.yaml", "metrics.json", "recipe.yaml"} <= left
    assert not left & {"csv", "export-merged", "eval"}  # the earlier run's logs, export and evaluations
    assert [p.name for p in (used / "checkpoints").iterdir()] == ["last.ckpt"]  # no last-v1.ckpt beside it
    assert result.metrics["steps"] == 1 and RunDir(used).metrics()["steps"] == 1


def test_overwrite_with_resume_of_the_same_run_refuses(used):
    with pytest.raises(OnestopError, match=r"^overwrite=true with resume=auto: .*; choose one$"):
        RunDir(used).claim("auto", True)
    inside = used / "checkpoints" / "last.ckpt"
    with pytest.raises(OnestopError, match="choose one"):
        RunDir(used).claim(str(inside), True)
    RunDir(used).claim(str(inside), False)  # resuming it in place is what resume is for


def test_what_a_run_does_not_leave_is_no_run(tmp_path):
    fresh = RunDir(tmp_path / "run")
    assert fresh.holdings() == []
    for made_before_training in (".hydra/overrides.yaml", "train.log", "eval/heldout_questions.jsonl"):
        path = fresh.path / made_before_training
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("x\n")
    (fresh.path / "checkpoints").mkdir()
    assert fresh.holdings() == []  # a sweep trial's .hydra/, the UI's train.log, the demo's questions
    fresh.claim(None, False)


@pytest.mark.parametrize("ours", [True, False])
def test_overwrite_keeps_the_log_this_run_writes_and_hydras_record(used, ours):
    (used / ".hydra").mkdir()
    (used / ".hydra" / "overrides.yaml").write_text("[]\n")
    log = used / "train.log"
    log.write_text("$ invoke train ...\n")
    claim = f"from onestop.core.rundir import RunDir; RunDir({str(used)!r}).claim(None, True)"
    with open(log if ours else os.devnull, "a") as output:  # the UI starts a run with its output in train.log
        done = subprocess.run([sys.executable, "-c", claim], stdout=output, stderr=subprocess.PIPE, text=True)
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in used.iterdir()) == ([".hydra", "train.log"] if ours else [".hydra"])


def test_a_merged_export_of_other_weights_is_merged_again_not_served(used, capsys):
    run = RunDir(used)
    merged = serve(used)
    assert merged == run.export_dir("merged") and current_export(run)
    made = made_from(merged)
    assert made == export_fingerprint(run) and serve(used) == merged and made_from(merged) == made
    out = capsys.readouterr().out
    assert out.count("Merging the adapter into its base once") == 1 and "again" not in out  # reused the second time

    # The run continues in place: the adapter changes, the export of the earlier weights stays behind.
    train(compose(*TINY, "logger=none", "data.val_ratio=0", "trainer.max_steps=4", "optim.lr=1e-2", "resume=auto",
                  run_dir=used))  # fmt: skip
    assert not current_export(run)
    assert serve(used) == merged
    assert f"{merged} was made from other weights than the run's: merging the adapter again" in capsys.readouterr().out
    assert made_from(merged) == export_fingerprint(run) != made

    served = AutoModelForCausalLM.from_pretrained(merged).eval()
    adapted = PeftModel.from_pretrained(load_causal_lm(compose(*TINY).model), run.adapter_dir).eval()
    ids = torch.tensor([[5, 17, 99, 200, 3]])
    with torch.no_grad():
        torch.testing.assert_close(served(ids).logits, adapted(ids).logits, rtol=1e-4, atol=1e-4)

    (merged / SOURCE_FILE).unlink()  # an export that records nothing (an older onestop's) is not trusted either
    assert not current_export(run)


def test_a_start_that_trained_nothing_is_taken_over_and_a_trained_run_is_not(tmp_path, capsys):
    """A node that never met the others leaves only config.yaml: starting again needs no overwrite=true."""
    stopped = tmp_path / "stopped"
    stopped.mkdir()
    (stopped / "config.yaml").write_text("seed: 1\n")
    RunDir(stopped).claim(resume=None, overwrite=False)
    assert "an earlier start here trained nothing (config.yaml); starting over" in capsys.readouterr().out
    assert not (stopped / "config.yaml").exists()

    trained = tmp_path / "trained"
    (trained / "checkpoints").mkdir(parents=True)
    (trained / "config.yaml").write_text("seed: 1\n")
    (trained / "checkpoints" / "last.ckpt").write_bytes(b"weights")
    with pytest.raises(OnestopError, match="already holds a run"):
        RunDir(trained).claim(resume=None, overwrite=False)
    assert (trained / "config.yaml").is_file()
