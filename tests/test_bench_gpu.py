"""invoke bench.gpu: the GPU proof's code path at its smallest size on CPU, its report, its carried wheels."""

import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch
from invoke.exceptions import Exit

from onestop import cli
from onestop.bench.gpu import SMOKE_WORKLOAD, bench_gpu, fast_path
from onestop.bench.output import GPU_TABLE_END, GPU_TABLE_START, report_into_docs
from onestop.bench.wheels import requirements_outside, strip_wheel
from onestop.config.compose import compose
from onestop.core.errors import OnestopError
from onestop.deploy.lmdeploy import installed, run_setup


@pytest.mark.slow
def test_smoke_run_trains_through_the_gpu_code_path_on_cpu(tmp_path, monkeypatch):
    monkeypatch.setenv("OUT", str(tmp_path / "device-out"))
    parts = ["lora_fast", "hf_lora", "qlora", "lmdeploy"]
    results = bench_gpu(smoke=True, output=str(tmp_path / "bench"), parts=parts)

    assert json.loads((tmp_path / "bench" / "gpu.json").read_text()) == results
    assert (tmp_path / "device-out" / "gpu.json").read_text() == (tmp_path / "bench" / "gpu.json").read_text()
    by_name = {part["name"]: part for part in results["parts"]}
    assert list(by_name) == ["setup", "lora_fast", "hf_lora", "qlora", "lmdeploy"]
    assert {name: part["status"] for name, part in by_name.items()} == {
        "setup": "ok", "lora_fast": "ok", "hf_lora": "ok", "qlora": "skipped", "lmdeploy": "skipped",
    }  # fmt: skip
    assert by_name["qlora"]["reason"] == by_name["lmdeploy"]["reason"] == "needs a CUDA GPU"

    tiny = json.loads(Path(SMOKE_WORKLOAD.architecture).read_text())
    assert results["environment"]["vocab_size"] == tiny["vocab_size"]
    assert (tmp_path / "bench" / "model" / "config.json").is_file()
    assert 0 < results["environment"]["corpus"]["attention_span"] < SMOKE_WORKLOAD.seq_len
    for name in ("lora_fast", "hf_lora"):
        part = by_name[name]
        assert part["steps"] == SMOKE_WORKLOAD.steps
        assert part["timed steps"] == SMOKE_WORKLOAD.steps - SMOKE_WORKLOAD.warmup
        assert part["tok/s"] > 0 and 0 < part["MFU %"] < 100
        assert part["tokens/step"] <= SMOKE_WORKLOAD.batch * SMOKE_WORKLOAD.seq_len
    assert "data.packing=true" in by_name["lora_fast"]["overrides"]
    summary = results["summary"]
    assert summary["speedup_vs_hf"] == pytest.approx(by_name["lora_fast"]["tok/s"] / by_name["hf_lora"]["tok/s"])
    assert set(summary["met"].values()) == {None}  # CPU figures neither meet nor miss the GPU targets
    table = (tmp_path / "bench" / "gpu.md").read_text()
    assert "| qlora |" in table and "skipped: needs a CUDA GPU" in table

    with pytest.raises(OnestopError, match="smoke run"):
        report_into_docs(str(tmp_path / "bench"), str(tmp_path / "benchmarks.md"))


@pytest.mark.skipif(torch.cuda.is_available(), reason="with a GPU the full run is the point")
def test_the_full_run_without_a_gpu_stops_in_one_line_and_writes_nothing(tmp_path, capsys):
    with pytest.raises(Exit) as stopped:
        cli.run("bench.gpu", False, str(tmp_path / "bench"), None, None, None, None)
    assert stopped.value.code == 2
    assert stopped.value.message == (
        "onestop bench.gpu: error: bench.gpu: no CUDA GPU is visible to torch (torch.cuda.is_available() is "
        "false); run it on a GPU machine, or invoke bench.gpu --smoke for the same code path at its smallest size "
        "on the CPU"
    )
    assert not (tmp_path / "bench").exists()
    assert "bench.gpu: setup" not in capsys.readouterr().out  # no part was started


def test_fast_path_switches_stay_off_where_they_cannot_run():
    on, notes = fast_path(wanted=True, gpu=False)
    off, _ = fast_path(wanted=False, gpu=False)
    defaults = compose("train", [])
    assert [o.split("=")[0] for o in on] == [o.split("=")[0] for o in off]
    for override in off:
        key, value = override.split("=")
        section, name = key.split(".")
        assert value in ("false", "0") and name in defaults[section]
    if "train.liger_kernels" in notes:
        assert "CUDA" in notes["train.liger_kernels"]


def test_report_rewrites_only_the_gpu_table(tmp_path):
    docs = tmp_path / "benchmarks.md"
    docs.write_text(f"# Benchmarks\n\nbefore\n\n{GPU_TABLE_START}\n| unmeasured |\n{GPU_TABLE_END}\n\nafter\n")
    run = {
        "time": "2026-12-02_15-00-00",
        "smoke": False,
        "workload": {"batch": 4, "seq_len": 2048, "steps": 14, "warmup": 4},
        "environment": {"cuda_available": True, "device": "NVIDIA H200", "packages": {"torch": "2.11.0"}},
        "parts": [
            {"name": "lora_fast", "what": "LoRA", "status": "ok", "seconds": 30.0, "tok/s": 1000.0, "MFU %": 40.0,
             "peak GiB": 12.5},
            {"name": "qlora", "what": "QLoRA", "status": "skipped", "reason": "bitsandbytes is not installed"},
        ],
        "summary": {"speedup_vs_hf": None},
    }  # fmt: skip
    (tmp_path / "gpu.json").write_text(json.dumps(run))
    report_into_docs(str(tmp_path / "gpu.json"), str(docs))
    text = docs.read_text()
    assert text.startswith("# Benchmarks\n\nbefore\n\n") and text.endswith("\n\nafter\n")
    assert "| unmeasured |" not in text and "on NVIDIA H200 (torch 2.11.0)" in text
    assert "| lora_fast | LoRA | 1,000 | 40.0 | 12.50 | ok in 30 s |" in text
    assert "skipped: bitsandbytes is not installed" in text
    report_into_docs(str(tmp_path / "gpu.json"), str(docs))
    assert docs.read_text() == text  # rewriting replaces the table, never adds a second

    docs.write_text("# no markers\n")
    with pytest.raises(OnestopError, match="no bench.gpu table markers"):
        report_into_docs(str(tmp_path / "gpu.json"), str(docs))


def _wheel(folder: Path, name: str, files: dict[str, str], requires: tuple[str, ...] = ()) -> Path:
    """A real wheel (METADATA, WHEEL, RECORD) holding `files`."""
    info = f"{name}-1.0.dist-info"
    needs = "".join(f"Requires-Dist: {requirement}\n" for requirement in requires)
    members = {
        **files,
        f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n{needs}",
        f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = "".join(f"{member},,\n" for member in members) + f"{info}/RECORD,,\n"
    path = folder / f"{name}-1.0-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as wheel:
        for member, text in {**members, f"{info}/RECORD": record}.items():
            wheel.writestr(member, text)
    return path


def test_stripped_wheel_still_installs_without_the_dropped_files(tmp_path):
    wheel = _wheel(tmp_path, "carried", {"carried/__init__.py": "KEPT = 1\n", "carried/huge.so": "x" * 100_000})
    assert strip_wheel(wheel, lambda member: member.endswith(".so")) > 0
    with zipfile.ZipFile(wheel) as stripped:
        assert "carried/huge.so" not in stripped.namelist()
        assert "huge.so" not in stripped.read("carried-1.0.dist-info/RECORD").decode()
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--target", tmp_path / "site", wheel],
        check=True,
    )
    assert (tmp_path / "site" / "carried" / "__init__.py").is_file()
    assert not (tmp_path / "site" / "carried" / "huge.so").exists()


def test_offline_lmdeploy_setup_installs_carried_wheels_over_this_python(tmp_path):
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    # A stand-in with LMDeploy's entry point: what the launcher runs is the installed package, with this
    # Python's own packages (onestop, torch) still importable.
    cli = "import sys\n\ndef run():\n    import onestop\n    print('lmdeploy', *sys.argv[1:])\n    return 0\n"
    _wheel(wheels, "lmdeploy", {"lmdeploy/__init__.py": "", "lmdeploy/cli/__init__.py": cli})
    env = tmp_path / "env"
    cfg = compose("deploy", ["deploy=lmdeploy", f"deploy.wheels={wheels}", f"deploy.env_dir={env}"])
    assert run_setup(cfg) == env and installed(env)
    ran = subprocess.run([env / "bin" / "lmdeploy", "serve", "api_server", "--help"], capture_output=True, text=True)
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.strip() == "lmdeploy serve api_server --help"

    with pytest.raises(OnestopError, match="no lmdeploy-"):
        run_setup(
            compose("deploy", ["deploy=lmdeploy", f"deploy.wheels={tmp_path}", f"deploy.env_dir={tmp_path / 'x'}"])
        )


def test_requirements_outside_the_carried_wheels_are_listed(tmp_path):
    wheels = [
        _wheel(tmp_path, "served", {}, requires=("carried_dep>=1", "torch<3", "winlib; sys_platform == 'win32'")),
        _wheel(tmp_path, "carried_dep", {}, requires=("numpy", "pytest; extra == 'test'")),
    ]
    assert requirements_outside(wheels) == ["numpy", "torch"]


def test_a_part_over_its_limit_is_killed_and_recorded_and_the_run_goes_on(tmp_path):
    # Five seconds cannot even import torch in the setup's process: it is killed, and what needs it is skipped.
    results = bench_gpu(smoke=True, output=str(tmp_path), budget_s=5, parts=["lora_fast", "qlora"])
    setup, lora, qlora = results["parts"]
    assert setup["status"] == "timeout" and setup["reason"] == "over its 5 s limit" and setup["seconds"] < 30
    assert lora["status"] == qlora["status"] == "skipped" and lora["reason"] == "setup did not finish"
    assert results["summary"]["statuses"] == {"setup": "timeout", "lora_fast": "skipped", "qlora": "skipped"}
    assert json.loads((tmp_path / "gpu.json").read_text()) == results
