"""Every example in the user docs runs: files are written as shown, commands run as typed (on the tiny model)."""

import json
import re
import shlex

import pytest
from conftest import run_invoke

from onestop.core.paths import PROJECT_ROOT
from onestop.deploy.server import ServedModel

FILE_BLOCK = re.compile(r"<!-- file: (\S+) -->\n```\w*\n(.*?)```", re.DOTALL)
BASH_BLOCK = re.compile(r"```bash\n(.*?)```", re.DOTALL)
# Appended to every documented command: the tiny model on CPU for two steps, nothing sent anywhere.
TINY_RUN = ["model=tiny", "hardware=cpu", "trainer.max_steps=2", "logger=none"]


def documented(doc: str) -> tuple[dict[str, str], list[list[str]]]:
    text = (PROJECT_ROOT / "docs" / doc).read_text()
    files = {name: body for name, body in FILE_BLOCK.findall(text)}
    commands = [
        shlex.split(line)
        for block in BASH_BLOCK.findall(text)
        for line in block.splitlines()
        if line.startswith("invoke ")
    ]
    return files, commands


DATA_FILES, DATA_COMMANDS = documented("data.md")


def test_data_doc_shows_a_five_line_file_for_every_format():
    for name in ("alpaca.jsonl", "chats.jsonl", "messages.jsonl", "corpus.jsonl", "pairs.jsonl"):
        assert len(DATA_FILES[name].strip().splitlines()) == 5, name


@pytest.mark.slow
@pytest.mark.parametrize("command", DATA_COMMANDS, ids=[" ".join(c[1:3]) for c in DATA_COMMANDS])
def test_data_doc_command_runs(command, tmp_path):
    for name, body in DATA_FILES.items():
        (tmp_path / name).write_text(body)
    task, *overrides = command[1:]
    if "qa_run/qa.jsonl" in " ".join(overrides):
        _documented_qa_run(tmp_path)
    extra = TINY_RUN if task == "train" else ["model=tiny"]
    if task == "data.qa":
        overrides, extra = [o for o in overrides if not o.startswith("endpoint.")], []
        served = ServedModel(PROJECT_ROOT / "tests" / "assets" / "tiny-qwen2").start()
        extra = [f"endpoint.base_url={served.base_url}", f"endpoint.model={served.model_name}", "max_tokens=16"]
    try:
        result = run_invoke(
            "-r", str(PROJECT_ROOT), task, *overrides, *extra, f"hydra.run.dir={tmp_path / 'run'}",
            cwd=tmp_path, env={"ONESTOP_HOME": str(tmp_path / "home")},
        )  # fmt: skip
    finally:
        if task == "data.qa":
            served.stop()
    assert result.returncode == 0, result.stderr[-2000:]
    if task == "train" and "data.streaming=true" in overrides:  # a stream is never prepared, so no report
        assert "data: streaming 1 file(s)" in result.stdout
    if task == "train":
        assert (tmp_path / "run" / "data_report.json").is_file() or "data.streaming=true" in overrides
        assert result.stdout.strip().splitlines()[-1] == f"Run directory: {tmp_path / 'run'}"
    elif task == "data.qa":
        assert (tmp_path / "qa_run" / "report.json").is_file()
    else:
        assert "Prepared data (written" in result.stdout


def _documented_qa_run(tmp_path):
    """What `invoke data.qa ... output=qa_run` leaves behind, for the command that trains on it."""
    (tmp_path / "qa_run").mkdir()
    pairs = [("How do I install?", "With pip, in a venv."), ("How do I start the demo?", "Type invoke demo.")] * 3
    (tmp_path / "qa_run" / "qa.jsonl").write_text(
        "".join(
            json.dumps({"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}) + "\n"
            for q, a in pairs
        )
    )


EVAL_FILES, EVAL_COMMANDS = documented("eval.md")


@pytest.mark.slow
def test_eval_doc_commands_run_in_order(tmp_path, home_with_gemma):
    """Each documented `invoke` line, in order (later ones read what earlier ones wrote), on the tiny model.

    `model=tiny,gemma3_270m` still scores the real Gemma (each listed model is evaluated, whatever `model=` comes
    after), from the copy converted once for the session rather than converted again in this fresh home.
    """
    assert len(EVAL_COMMANDS) >= 8
    for command in EVAL_COMMANDS:
        words = [w.replace("runs/", f"{tmp_path}/runs/") for w in command[1:]]
        task, *rest = words
        extra = {"train": TINY_RUN, "eval": ["model=tiny", "logger=none", "eval.limit=3"]}.get(task, [])
        result = run_invoke(task, *rest, *extra, env={"ONESTOP_HOME": str(home_with_gemma)})
        assert result.returncode == 0, (command, result.stderr[-2000:])
    assert (tmp_path / "runs" / "eval-b" / "compare.png").is_file()
    assert (tmp_path / "runs" / "pick" / "gemma3_270m" / "results.json").is_file()


_, DEPLOY_COMMANDS = documented("deploy.md")


@pytest.mark.slow
def test_deploy_doc_cpu_walkthrough_runs(tmp_path):
    """The CPU walkthrough as typed (a free port instead of 8011), ending with nothing left running."""
    env = {"ONESTOP_HOME": str(tmp_path / "home"), "ONESTOP_API_KEY": ""}
    assert [c[1] for c in DEPLOY_COMMANDS] == [
        "train",
        "export",
        "deploy",
        "deploy.status",
        "chat",
        "eval",
        "deploy.stop",
    ]
    base_url = "http://127.0.0.1:8011/v1"
    try:
        for command in DEPLOY_COMMANDS:
            words = [w.replace("runs/", f"{tmp_path}/runs/").replace("port=8011", "port=0") for w in command[1:]]
            words = [w.replace("http://127.0.0.1:8011/v1", base_url) for w in words]
            result = run_invoke(*words, env=env)
            assert result.returncode == 0, (command, result.stderr[-2000:])
            if words[0] == "deploy":
                base_url = json.loads((tmp_path / "home" / "deploy" / "deploy-doc.json").read_text())["base_url"]
            if words[0] == "chat":
                assert result.stdout.strip()
    finally:
        run_invoke("deploy.stop", env=env)
    assert not (tmp_path / "home" / "deploy" / "deploy-doc.json").exists()


@pytest.mark.slow
@pytest.mark.parametrize("doc", ["sweeps.md", "recipes.md"])
def test_sweep_and_recipe_doc_commands_run_in_order(doc, tmp_path):
    _, commands = documented(doc)
    assert len(commands) >= 3
    for command in commands:
        words = [w.replace("runs/", f"{tmp_path}/runs/") for w in command[1:]]
        if words[0] == "train" and not any(
            w.startswith("recipe=runs") or w.startswith(f"recipe={tmp_path}") for w in words
        ):
            words += ["trainer.max_steps=2"] if "--cfg" not in words else []
        result = run_invoke(*words, env={"ONESTOP_HOME": str(tmp_path / "home")})
        assert result.returncode == 0, (command, result.stderr[-2000:])
    if doc == "sweeps.md":
        for name in ("sweep-grid", "sweep-eval", "sweep-optuna"):
            assert (tmp_path / "runs" / name / "summary.md").is_file(), name
