"""Faults a run survives: durable writes, a full disk, Ctrl-C, two runs in one directory, secrets kept out of files.

docs/reliability.md lists each fault with what happens and the test here that proves it.
"""

import errno
import json
import os
import pickle
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import TINY, compose
from invoke.exceptions import Exit
from peft import PeftModel

from onestop import cli
from onestop.core import files
from onestop.core.errors import OnestopError
from onestop.core.paths import PACKAGE_DIR, PROJECT_ROOT
from onestop.core.rundir import RunDir
from onestop.core.secrets import REDACTED, redact
from onestop.training import resume
from onestop.training.resume import AtomicCheckpointIO, newest_checkpoint
from onestop.training.train import train

SMALL_RUN = [*TINY, "logger=csv", "trainer.log_every_n_steps=1"]


def lightning_checkpoint(path: Path, step: int) -> Path:
    """A file with what resume checks for in a Lightning checkpoint (not enough to train from)."""
    AtomicCheckpointIO().save_checkpoint(
        {"pytorch-lightning_version": "2", "state_dict": {"w": torch.zeros(2)}, "loops": {}, "global_step": step}, path
    )
    return path


def fsynced_paths(monkeypatch) -> list[str]:
    """Every path os.fsync is called on from now, as /proc names it."""
    synced = []
    real_fsync = os.fsync

    def recording_fsync(fd):
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    return synced


def test_atomic_writes_flush_the_file_and_then_the_directory(tmp_path, monkeypatch):
    synced = fsynced_paths(monkeypatch)
    replaced = []
    real_replace = os.replace
    monkeypatch.setattr(os, "replace", lambda a, b: (replaced.append(len(synced)), real_replace(a, b)))
    files.write_text_atomic(tmp_path / "config.yaml", "a: 1\n")
    assert Path(synced[0]).parent == tmp_path and Path(synced[0]).name.startswith(".config.yaml.")
    assert replaced == [1] and synced[1:] == [str(tmp_path)]  # the file before the rename, its directory after

    synced.clear()
    lightning_checkpoint(tmp_path / "checkpoints" / "last.ckpt", 1)
    assert Path(synced[0]).name.startswith(".last.ckpt.") and synced[-1] == str(tmp_path / "checkpoints")

    synced.clear()
    with files.staged_directory(tmp_path / "adapter") as staging:
        (staging / "weights.bin").write_bytes(b"w")
    assert any(p.endswith("/weights.bin") for p in synced) and synced[-1] == str(tmp_path)
    assert (tmp_path / "adapter" / "weights.bin").read_bytes() == b"w"


def test_a_write_that_fails_midway_leaves_the_old_file_and_no_temporary(tmp_path, monkeypatch):
    target = lightning_checkpoint(tmp_path / "last.ckpt", 1)
    before = target.read_bytes()

    def dies_midway(obj, handle):
        handle.write(b"PK\x03\x04 half a checkpoint")
        raise KeyboardInterrupt  # as a process killed mid-write: nothing after this line runs

    monkeypatch.setattr(torch, "save", dies_midway)
    with pytest.raises(KeyboardInterrupt):
        AtomicCheckpointIO().save_checkpoint({"state_dict": {}}, target)
    assert target.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]


def test_resume_auto_skips_checkpoints_it_cannot_read_and_says_which(tmp_path, capsys):
    run = RunDir(tmp_path)
    good = lightning_checkpoint(run.checkpoints_dir / "step0000002.ckpt", 2)
    cut_short = run.checkpoints_dir / "step0000004.ckpt"
    cut_short.write_bytes(good.read_bytes()[: len(good.read_bytes()) // 2])  # a power cut without fsync
    foreign = run.checkpoints_dir / "last.ckpt"
    torch.save({"weights": torch.zeros(2)}, foreign)  # a state dict, not a training checkpoint
    (run.checkpoints_dir / ".step0000006.ckpt.tmp123").write_bytes(b"being written")  # killed mid-write
    for age, path in enumerate((good, cut_short, foreign)):
        os.utime(path, ns=(10**18 + age * 10**9,) * 2)  # oldest to newest

    assert newest_checkpoint(run) == good
    printed = capsys.readouterr().out
    assert f"resume=auto: skipping {foreign}: not a training checkpoint" in printed
    assert f"resume=auto: skipping {cut_short}: not a readable checkpoint" in printed

    good.unlink()
    with pytest.raises(OnestopError, match=r"resume=auto: none of the 2 checkpoints in .* can be read"):
        newest_checkpoint(run)


def test_a_full_disk_while_writing_a_checkpoint_stops_in_one_line_and_keeps_the_last_good_one(tmp_path, monkeypatch):
    real_save = torch.save
    saves = []

    def disk_fills_on_the_third(obj, handle, *args, **kwargs):
        saves.append(1)
        if len(saves) == 3:
            handle.write(b"PK\x03\x04 the start of a checkpoint")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_save(obj, handle, *args, **kwargs)

    monkeypatch.setattr(torch, "save", disk_fills_on_the_third)
    run_dir = tmp_path / "run"
    cfg = compose(*SMALL_RUN, "trainer.max_steps=4", "checkpoint.every_n_steps=1", run_dir=run_dir)
    with pytest.raises(Exit) as stopped, cli.one_line_errors("train"):
        train(cfg)
    message = stopped.value.message
    assert stopped.value.code == 2 and "\n" not in message
    assert re.match(rf"onestop train: error: {run_dir}/checkpoints/\S+\.ckpt: no space left on device; ", message)
    assert "continue with resume=auto" in message
    kept = sorted(p.name for p in (run_dir / "checkpoints").iterdir())
    assert "step0000001.ckpt" in kept and not [name for name in kept if name.startswith(".")]
    assert resume.checkpoint_problem(run_dir / "checkpoints" / "step0000001.ckpt") is None
    assert not (run_dir / "adapter").exists() and not (run_dir / "run.lock").exists()


def test_a_full_disk_while_exporting_names_the_folder_and_keeps_the_checkpoint(tmp_path, monkeypatch):
    def disk_full(self, directory, *args, **kwargs):
        (Path(directory) / "adapter_model.safetensors").write_bytes(b"half")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(directory))

    monkeypatch.setattr(PeftModel, "save_pretrained", disk_full)
    run_dir = tmp_path / "run"
    with pytest.raises(Exit) as stopped, cli.one_line_errors("train"):
        train(compose(*SMALL_RUN, "trainer.max_steps=2", run_dir=run_dir))
    assert stopped.value.code == 2
    assert stopped.value.message == (
        f"onestop train: error: {run_dir}/adapter: no space left on device; nothing was replaced; "
        "free some space and run again"
    )
    assert resume.checkpoint_problem(run_dir / "checkpoints" / "last.ckpt") is None
    assert sorted(p.name for p in run_dir.iterdir() if p.name.startswith((".", "adapter"))) == []


def start_training(run_dir: Path, *overrides: str) -> subprocess.Popen:
    return subprocess.Popen(
        [str(Path(sys.executable).parent / "invoke"), "train", *SMALL_RUN, *overrides, f"hydra.run.dir={run_dir}"],
        cwd=PROJECT_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for(process: subprocess.Popen, path: Path, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert process.poll() is None, f"the run ended first: {process.stderr.read()[-2000:]}"
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.02)


@pytest.mark.slow
def test_ctrl_c_saves_a_checkpoint_and_stops_without_validating_or_exporting(tmp_path):
    run_dir = tmp_path / "run"
    # Far more steps than it will run; every step validated would show in metrics.csv as a val/loss row.
    process = start_training(run_dir, "checkpoint.every_n_steps=1", "trainer.max_steps=1000", "trainer.max_epochs=500")
    wait_for(process, run_dir / "checkpoints" / "step0000001.ckpt")
    lock = (run_dir / "run.lock").read_text().split()
    assert int(lock[0]) == process.pid  # the run holds its directory
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=300)

    assert process.returncode == 2, stderr[-3000:]
    last = stderr.strip().splitlines()[-1]
    stopped = re.match(r"onestop train: error: stopped by SIGINT after step (\d+); checkpoint (\S+); ", last)
    assert stopped and Path(stopped[2]) == run_dir / "checkpoints" / "sigint.ckpt", last
    assert last.endswith(f"continue with: invoke train ... resume=auto hydra.run.dir={run_dir}")
    after_signal = stderr[stderr.index("SIGINT: saving a checkpoint after this step") :]
    assert "Validation" not in after_signal  # no validation pass between the signal and the exit
    assert not (run_dir / "adapter").exists() and not (run_dir / "metrics.json").exists()  # nor an export
    assert not (run_dir / "run.lock").exists()
    steps = int(stopped[1])
    rows = (run_dir / "csv" / "metrics.csv").read_text().splitlines()
    logged = [dict(zip(rows[0].split(","), row.split(","), strict=True)) for row in rows[1:]]
    assert logged and not [row for row in logged if row.get("val/loss") and int(row["step"]) >= steps]

    done = subprocess.run(
        [str(Path(sys.executable).parent / "invoke"), "train", *SMALL_RUN, f"trainer.max_steps={steps + 2}"]
        + ["resume=auto", f"hydra.run.dir={run_dir}"],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["resumed_from"] == stopped[2] and metrics["steps"] == steps + 2


def test_a_second_run_in_the_same_directory_refuses_and_a_dead_runs_lock_is_taken_over(tmp_path, capsys):
    run = RunDir(tmp_path / "run")
    with run.locked():
        pid, host = run.lock_file.read_text().split()
        assert int(pid) == os.getpid()
        with pytest.raises(OnestopError) as refused, run.locked():
            pass
        assert str(refused.value).startswith(f"hydra.run.dir={run.path}: another run (pid {pid} on {host}) is writing")
        assert f"if that run is gone, delete {run.lock_file}" in str(refused.value)
    assert not run.path.exists()  # made for the run, left empty: removed again

    sleeper = subprocess.Popen([sys.executable, "-c", "pass"])
    sleeper.wait()  # a pid that has ended, as a run killed with SIGKILL leaves it
    run.path.mkdir()
    run.lock_file.write_text(f"{sleeper.pid} {host}\n")
    with run.locked():
        assert run.lock_file.read_text().split()[0] == str(os.getpid())
    assert f"taking over the lock of pid {sleeper.pid}, which has ended" in capsys.readouterr().out
    assert not run.lock_file.exists() and run.path.is_dir()


def test_training_into_a_directory_another_run_holds_refuses_before_any_work(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        run_dir = tmp_path / "run"
        run_dir.mkdir()
        (run_dir / "run.lock").write_text(f"{holder.pid} {socket.gethostname()}\n")
        with pytest.raises(OnestopError, match=rf"another run \(pid {holder.pid} on "):
            train(compose(*SMALL_RUN, run_dir=run_dir))
        assert [p.name for p in run_dir.iterdir()] == ["run.lock"]
    finally:
        holder.kill()


def failing_task(error: Exception):
    with cli.one_line_errors("train"):
        raise error


def test_a_user_error_prints_one_line_and_its_traceback_only_with_onestop_debug(monkeypatch, capsys):
    with pytest.raises(Exit) as stopped:
        failing_task(OnestopError("data.path=x.jsonl: no such data file"))
    assert stopped.value.code == 2
    assert stopped.value.message == "onestop train: error: data.path=x.jsonl: no such data file"
    assert "Traceback" not in capsys.readouterr().err

    monkeypatch.setenv("ONESTOP_DEBUG", "1")
    with pytest.raises(Exit):
        failing_task(OnestopError("data.path=x.jsonl: no such data file"))
    assert "Traceback (most recent call last)" in capsys.readouterr().err


def test_ctrl_c_outside_training_ends_in_one_line():
    with pytest.raises(Exit) as stopped:
        failing_task(KeyboardInterrupt())
    assert (stopped.value.code, stopped.value.message) == (130, "onestop train: interrupted")


def test_a_bug_keeps_its_traceback():
    with pytest.raises(ZeroDivisionError):  # not turned into a one-line exit: Python prints the traceback
        failing_task(ZeroDivisionError("division by zero"))


def test_checkpoints_are_never_unpickled_beyond_tensors():
    """torch.load only with weights_only=True, and no pickle.load, anywhere in onestop."""
    offenders = []
    for path in PACKAGE_DIR.rglob("*.py"):
        text = path.read_text()
        for match in re.finditer(r"torch\.load\(([^)]*)\)", text):
            if "weights_only=True" not in match.group(1):
                offenders.append(f"{path}: {match.group(0)}")
        offenders += [f"{path}: pickle.load" for _ in re.finditer(r"pickle\.loads?\(", text)]
    assert not offenders


def test_a_checkpoint_that_would_run_code_on_loading_is_refused(tmp_path):
    evil = tmp_path / "evil.ckpt"
    torch.save({"pytorch-lightning_version": "2", "state_dict": {}, "loops": {}, "hook": os.system}, evil)
    assert resume.checkpoint_problem(evil) == "not a checkpoint onestop loads: it would run code (posix.system)"
    with pytest.raises(pickle.UnpicklingError):  # the trainer's loader refuses it too, whatever it is asked
        AtomicCheckpointIO().load_checkpoint(evil, weights_only=False)


FAKE_SECRETS = {
    "WANDB_API_KEY": "wandb-fake-0123456789abcdef0123456789abcdef",
    "HF_TOKEN": "hf_FakeTokenForTheRedactionTest0123456789",
    "OPENAI_API_KEY": "sk-fake-openai-key-for-the-redaction-test",
    "ONESTOP_API_KEY": "onestop-fake-gateway-key-0123456789",
}


def test_redaction_covers_credential_keys_and_values_from_the_environment(monkeypatch):
    for name, value in FAKE_SECRETS.items():
        monkeypatch.setenv(name, value)
    config = {
        "endpoint": {"api_key": "typed-in-key-123456", "api_key_env": "OPENAI_API_KEY", "base_url": "http://x"},
        "data": {"system_prompt": f"use {FAKE_SECRETS['HF_TOKEN']}", "max_new_tokens": 64},
        "tags": [FAKE_SECRETS["OPENAI_API_KEY"]],
    }
    assert redact(config) == {
        "endpoint": {"api_key": REDACTED, "api_key_env": "OPENAI_API_KEY", "base_url": "http://x"},
        "data": {"system_prompt": f"use {REDACTED}", "max_new_tokens": 64},
        "tags": [REDACTED],
    }


def test_secrets_in_the_environment_never_reach_a_file_of_the_run(tmp_path, monkeypatch, capfd):
    for name, value in FAKE_SECRETS.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("HOME", str(tmp_path))  # no netrc: W&B logs offline, into the run directory
    monkeypatch.setenv("WANDB_MODE", "offline")
    run_dir = tmp_path / "run"
    train(compose(*TINY, "logger=wandb", "trainer.max_steps=1", run_dir=run_dir))
    written = [p for p in run_dir.rglob("*") if p.is_file()]
    assert any(p.suffix == ".wandb" for p in written) and (run_dir / "recipe.yaml").is_file()
    logs = capfd.readouterr()
    for name, secret in FAKE_SECRETS.items():
        assert secret not in logs.out + logs.err, name
        leaks = [str(p) for p in written if secret.encode() in p.read_bytes()]
        assert not leaks, (name, leaks)
