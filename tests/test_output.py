"""Output is for people: onestop's own lines, not the libraries' noise; plain lines, not redraws, in a log."""

import pytest
from conftest import ASSETS, TINY, run_invoke

from onestop.core.paths import PROJECT_ROOT

# Lines the libraries print on their own that tell a user nothing about their run.
NOISE = (
    "GPU available:", "TPU available:", "Tip:", "litlogger", "Loading weights", "FutureWarning", "LeafSpec",
    "Automatic Mixed Precision", "to estimate number of stepping batches", "DeprecationWarning",
)  # fmt: skip


@pytest.mark.slow
def test_a_tiny_run_prints_its_own_lines_and_no_third_party_noise(tmp_path):
    result = run_invoke(
        "train", *TINY, "logger=none", "trainer.max_steps=3", f"hydra.run.dir={tmp_path / 'run'}",
        env={"ONESTOP_HOME": str(tmp_path / "home")},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    printed = result.stdout + result.stderr
    assert [noise for noise in NOISE if noise in printed] == []
    assert "\r" not in printed  # a log gets lines, not a bar redrawn in place
    assert "step 1/3, epoch 1/" in result.stdout  # the first step's line, then about every 30 s
    assert "step 3/3, epoch 1/" in result.stdout and "loss " in result.stdout and "tok/s" in result.stdout
    assert f"Run directory: {tmp_path / 'run'}" in result.stdout

    # the run's evaluation and export, in a log: their own lines and tables, nothing else
    run = tmp_path / "run"
    evaluated = run_invoke(
        "eval", f"run_dir={run}", "eval=qa", f"eval.path={ASSETS / 'eval' / 'qa.jsonl'}", "eval.limit=2",
        "logger=none", f"hydra.run.dir={tmp_path / 'eval'}", env={"ONESTOP_HOME": str(tmp_path / "home")},
    )  # fmt: skip
    exported = run_invoke("export", f"run_dir={run}", env={"ONESTOP_HOME": str(tmp_path / "home")})
    for result in (evaluated, exported):
        assert result.returncode == 0, result.stderr[-2000:]
        printed = result.stdout + result.stderr
        assert [noise for noise in NOISE if noise in printed] == [] and "\r" not in printed
        assert "warning" not in printed.lower(), printed
    assert (tmp_path / "eval" / "results.json").is_file() and "exact_match" in evaluated.stdout
    assert exported.stdout.strip().splitlines()[-1] == f"Exported (merged): {run / 'export-merged'}"

    debug = run_invoke(
        "train", *TINY, "logger=none", "trainer.max_steps=1", f"hydra.run.dir={tmp_path / 'debug'}",
        env={"ONESTOP_HOME": str(tmp_path / "home"), "ONESTOP_DEBUG": "1"},
    )  # fmt: skip
    assert debug.returncode == 0, debug.stderr[-2000:]
    assert "GPU available:" in debug.stdout + debug.stderr  # ONESTOP_DEBUG=1 brings the libraries' lines back


def test_tasks_run_from_another_directory_with_r(tmp_path):
    result = run_invoke("-r", str(PROJECT_ROOT), "train", "model=tiny", "--cfg", "job", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "name: tiny" in result.stdout
