"""Every `invoke` command shown in README.md and docs/ names keys, options and tasks that exist.

Each command of a stage that takes overrides is composed exactly as typed, so a renamed key, a removed
option or a misspelt task in the docs fails here, in seconds; a command shown with its error line
(`$ invoke ...` then `onestop TASK: error: ...`) must fail with exactly that line. Placeholders stay as
they are, except RUN (and a recipe an earlier command wrote under runs/), which names a run directory
holding a recipe. The docs walks of tests/test_docs.py run
the data, evaluation, deployment, sweep and recipe pages' commands for real.
"""

import re
import shlex
import shutil

import pytest

from onestop import cli
from onestop.config.compose import ConfigError, compose
from onestop.core.paths import PROJECT_ROOT

FENCED = re.compile(r"```(?:bash|console|sh)?\n(.*?)```", re.DOTALL)
PAGES = [PROJECT_ROOT / "README.md", *sorted((PROJECT_ROOT / "docs").glob("*.md"))]
# Tasks that take flags rather than Hydra overrides; those that still pass overrides on compose "train".
FLAG_TASKS = {
    "models", "runs", "ui", "ui.screenshots", "recipe.diff", "eval.compare", "bench.estimate", "bench.load",
    "bench.serve", "bench.startup", "bench.data", "bench.eval", "bench.gpu", "bench.gpu.report",
    "bench.gpu.wheels", "sweep",  # a sweep's comma lists compose per trial: its page's walk runs them
}  # fmt: skip
TRAIN_OVERRIDES = {"estimate": "train", "bench.train": "train"}
FLAG_VALUES = {"--variants", "--precisions", "--devices", "--output", "--models", "--concurrency", "--sizes"}


def documented_commands() -> list[tuple[str, list[str], str | None]]:
    """(where, the words after `invoke`, the error line shown right under it or None)."""
    commands = []
    for page in PAGES:
        for block in FENCED.findall(page.read_text()):
            lines = [line.strip() for line in block.replace("\\\n", " ").splitlines()]
            for index, line in enumerate(lines):
                line = line.removeprefix("$ ").removeprefix(".venv/bin/").removeprefix("time ")
                if not line.startswith("invoke "):
                    continue
                following = lines[index + 1] if index + 1 < len(lines) else ""
                error = following.split(": error: ", 1)[1] if following.startswith("onestop ") else None
                words = shlex.split(line, comments=True)
                commands.append((f"{page.name}: {line[:70]}", words[1:], error))
    return commands


COMMANDS = documented_commands()


@pytest.fixture(scope="module")
def run_placeholder(tmp_path_factory):
    """What RUN stands for in the docs: a run directory, here holding the demo's recipe."""
    run = tmp_path_factory.mktemp("RUN")
    shutil.copy(PROJECT_ROOT / "recipes" / "gemma3_270m_lora_demo.yaml", run / "recipe.yaml")
    return run


def overrides_of(words: list[str], run) -> list[str]:
    """The Hydra overrides among a task's words (not a flag's value), with RUN made a real directory and the
    first of comma-separated evaluation targets (`model=a,b` runs one evaluation per target)."""
    found = []
    for previous, word in zip(["", *words], words, strict=False):
        if previous in FLAG_VALUES or not cli.is_override(word):
            continue
        key, _, value = word.partition("=")
        if key.lstrip("+~") in cli.TARGET_KEYS:
            value = value.split(",")[0]
        value = re.sub(r"\bRUN\b", str(run), value)
        if key == "recipe" and value.startswith("runs/"):  # written by a command shown earlier on its page
            value = str(run / "recipe.yaml")
        found.append(f"{key}={value}")
    return found


def test_the_docs_show_commands_of_every_kind():
    tasks = {words[0] for _, words, _ in COMMANDS if words}
    assert {"train", "eval", "deploy", "export", "data.prepare", "estimate", "sweep"} <= tasks
    assert any(error for _, _, error in COMMANDS), "the docs show what a mistake prints"


@pytest.mark.parametrize(("where", "words", "error"), COMMANDS, ids=[where for where, _, _ in COMMANDS])
def test_every_documented_command_composes_or_fails_as_shown(where, words, error, run_placeholder):
    task = words[0] if words else "--list"
    if task.startswith("-") or task in FLAG_TASKS:
        return  # nothing composed: the flags are checked by the tasks' own tests
    primary, defaults = (TRAIN_OVERRIDES[task], ()) if task in TRAIN_OVERRIDES else cli.STAGES[task][::2]
    overrides = overrides_of(words[1:], run_placeholder)
    if error is None:
        compose(primary, [*defaults, *overrides])
        return
    with pytest.raises(ConfigError) as refused:
        compose(primary, [*defaults, *overrides])
    assert str(refused.value) == error
