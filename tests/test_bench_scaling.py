"""bench.serve, bench.startup and bench.data, each run once at its smallest size through `invoke`: the results
folder holds sane JSON, a table and a plot, and nothing is left running or cached. No test asserts a time."""

import json

import pytest
from conftest import run_invoke

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_bench_serve_measures_deployment_backend_and_sequential_generate(tmp_path):
    out, home = tmp_path / "serve", tmp_path / "home"
    result = run_invoke(
        "bench.serve", "--concurrency", "1,2", "--requests", "2", "--max-tokens", "4", "--output", str(out),
        env={"ONESTOP_HOME": str(home)},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((out / "serve.json").read_text())
    assert [(r["mode"], r["concurrency"]) for r in report["rows"]] == [
        ("sequential generate", 1),
        ("deployment", 1),
        ("backend direct", 1),
        ("deployment", 2),
        ("backend direct", 2),
    ]
    for row in report["rows"]:
        assert row["requests"] == 2 and row["out tok/s"] > 0 and row["req/s"] > 0
        # the random tiny model never stops early: every answer is max_tokens long, served or not
        assert row["tokens/request"] == 4
        assert 0 < row["TTFT p50 s"] <= row["TTFT p99 s"]
    summary = report["summary"]
    assert set(summary["gateway_overhead_pct"]) == {"1", "2"}
    assert summary["deployment8_over_sequential"] is None  # 8 was not among the concurrencies
    assert report["machine"]["onestop"]["commit"] and report["machine"]["cores"] >= 1
    assert (out / "serve.md").read_text().count("\n| ") == 6
    assert (out / "serve.png").read_bytes()[:8] == PNG
    assert not list((home / "deploy").glob("*.json")), "a deployment was left running"


@pytest.mark.slow
def test_bench_startup_times_each_command_and_names_the_heaviest_imports(tmp_path):
    out = tmp_path / "startup"
    result = run_invoke("bench.startup", "--runs", "1", "--models", "tiny", "--output", str(out))
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((out / "startup.json").read_text())
    commands = [row["command"] for row in report["rows"]]
    assert commands[:2] == ["invoke --list", "invoke train model=tiny --cfg job"]
    assert [row["target s"] for row in report["rows"]] == [1.0, 3.0, None, None]
    first_step, exit_ = report["rows"][2:]
    assert 0 < first_step["median s"] < exit_["median s"]
    assert all(row["median s"] > 0 for row in report["rows"])
    assert "onestop" in [i["package"] for i in report["heaviest_imports"]["invoke --list"]]
    assert (out / "startup.png").read_bytes()[:8] == PNG


@pytest.mark.slow
def test_bench_data_prepares_each_size_in_a_child_and_reports_growth(tmp_path):
    out, home = tmp_path / "data", tmp_path / "home"
    result = run_invoke(
        "bench.data", "--sizes", "200,40", "--model", "tiny", "--output", str(out), env={"ONESTOP_HOME": str(home)}
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((out / "data.json").read_text())
    assert [row["rows"] for row in report["rows"]] == [40, 200]
    small, large = report["rows"]
    assert 0 < small["train tokens"] < large["train tokens"]
    assert all(row["peak RSS MiB"] >= row["above start MiB"] >= 0 and row["rows/s"] > 0 for row in report["rows"])
    # a few hundred rows tokenize in this process (data.num_proc=auto); the sampled whole-tree figure is there
    assert all(row["processes"] == 1 and row["with workers MiB"] > 0 for row in report["rows"])
    assert "per extra row" in report["growth"]["text"]
    # the generated rows are the same whatever the size: the small file is the start of the large one
    lines = (out / "alpaca_200.jsonl").read_text().splitlines()
    assert len(lines) == 200 and (out / "alpaca_40.jsonl").read_text().splitlines() == lines[:40]
    assert len({json.loads(line)["output"].count(" ") for line in lines}) > 20  # lengths vary
    assert not list((home / "datasets").glob("*")), "the prepared copies were left in the cache"
    assert (out / "data.png").read_bytes()[:8] == PNG
