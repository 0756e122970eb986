"""Command-line glue between Invoke tasks and onestop's stages.

Stock Invoke rejects bare words such as `model=qwen` ("No idea what 'model=qwen' is!"). Tasks that
declare an iterable `overrides` argument accept them here: `accept_hydra_overrides()` teaches Invoke's
parser that, inside such a task, a word shaped like a Hydra override (`key=value`, `+key=value`,
`~key`) is one more value of `overrides`; in a task with an iterable `paths` argument
(`invoke eval.compare DIR_A DIR_B`) every bare word is one more path. Every other word goes through
Invoke's parser untouched. This module imports nothing heavy, so `invoke --list` stays fast.
"""

import atexit
import gc
import importlib
import os
import re
import select
import sys
import traceback
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from typing import NamedTuple

from invoke.exceptions import Exit
from invoke.parser.parser import ParseMachine
from omegaconf import OmegaConf

from onestop.config.groups import config_groups, default_options, list_group_options
from onestop.core.environment import debugging, drop_empty_variables
from onestop.core.errors import OnestopError

OVERRIDES_ARG = "overrides"
PATHS_ARG = "paths"  # a task with an iterable `paths` argument takes every bare word as one more path
_BARE_KEY = re.compile(r"^[A-Za-z_][\w\-]*(?:\.[\w\-]+)+$")
_OVERRIDE = re.compile(r"^(?:[+~]{0,2}[A-Za-z_][\w.\-/@]*=.*|~[A-Za-z_][\w.\-/@]*)$")

ARG_HELP = {
    OVERRIDES_ARG: "Hydra override; also accepted bare after the task: model=qwen trainer.max_steps=5",
    "cfg": "print the composed config and exit without loading a model: job, hydra or all",
}


def is_override(word: str) -> bool:
    """True for words Hydra reads as overrides: `a.b=1`, `+a=1`, `++a=1`, `~a`, `hydra/launcher=x`."""
    return bool(_OVERRIDE.match(word))


def is_bare_key(word: str, tasks) -> bool:
    """A config key typed without its value (`trainer.max_steps`): composing it says what is missing in one line,
    where Invoke would answer "No idea what ... is!". A task's own dotted name (`eval.compare`) stays a task."""
    return bool(_BARE_KEY.match(word)) and word not in tasks


def accept_hydra_overrides() -> None:
    """Let tasks with an iterable `overrides` argument take bare `key=value` words."""
    if getattr(ParseMachine.handle, "accepts_hydra_overrides", False):
        return
    invoke_handle = ParseMachine.handle

    def handle(machine: ParseMachine, token: str) -> None:
        context = machine.context
        if context is not None and machine.current_state != "unknown" and not machine.waiting_for_flag_value:
            if OVERRIDES_ARG in context.args and (is_override(token) or is_bare_key(token, machine.contexts)):
                context.args[OVERRIDES_ARG].value = token  # a list argument appends
                return
            if PATHS_ARG in context.args and not token.startswith("-"):
                context.args[PATHS_ARG].value = token
                return
        invoke_handle(machine, token)

    handle.accepts_hydra_overrides = True  # type: ignore[attr-defined]
    ParseMachine.handle = handle  # type: ignore[method-assign]


def with_config_help(primary: str = "train") -> Callable:
    """Append the config groups and their options to a task's docstring, so `--help` lists them."""

    def decorate(body: Callable) -> Callable:
        defaults = default_options(primary)
        lines = ["", "Config groups (choose with GROUP=OPTION, or GROUP=[A,B] for tools; * marks the default):"]
        for group in (g for g in config_groups() if g in defaults):
            chosen = defaults.get(group)
            chosen = chosen if isinstance(chosen, list) else [chosen]
            options = [f"{o}*" if o in chosen else o for o in list_group_options(group)]
            lines.append(f"  {group:<9} {' '.join(options)}")
        lines += [
            "",
            "Any other key is set with KEY=VALUE (trainer.max_steps=5, optim.lr=1e-4, hydra.run.dir=/tmp/x);",
            "recipe=NAME|FILE.yaml starts from a recipe in recipes/ or a shared file.",
        ]
        body.__doc__ = (body.__doc__ or "").rstrip() + "\n" + "\n".join(lines) + "\n"
        return body

    return decorate


def run_stage(stage: str, overrides: Sequence[str] | None, print_cfg: str | None = None, *arguments) -> None:
    """Compose the config for `stage` and run it (with `arguments` after the config); user errors end the process
    with one line, status 2."""
    primary, entry, preset = STAGES[stage]
    with one_line_errors(stage):
        several = several_targets(overrides or []) if stage == "eval" and not print_cfg else None
        if several:
            load(EVAL_MANY)(*several)
            return
        cfg = load(COMPOSE)(primary, [*preset, *(overrides or [])], allow_missing=bool(print_cfg))
        if print_cfg:
            print(_config_text(cfg, print_cfg))
            return
        if stage == "eval":
            entry = EVAL_KINDS.get(cfg.eval.kind, entry)
        load(entry)(cfg, *arguments)


def run(task: str, *arguments) -> None:
    """Run a task of `TASKS`: each argument read as its entry says, then the task's function called with them;
    user errors end the process with one line, status 2."""
    entry = TASKS[task]
    with one_line_errors(task):
        if len(arguments) != len(entry.arguments):
            raise OnestopError(f"{task}: {entry.usage or f'expected {len(entry.arguments)} arguments'}")
        load(entry.target)(*(read(value) for read, value in zip(entry.arguments, arguments, strict=True)))


def several_targets(overrides: Sequence[str]) -> tuple[str, list[str], list[str]] | None:
    """`model=a,b` or `run_dir=A,B` (which Hydra's compose rejects as a sweep): the key, its values and the
    other overrides; None when the overrides name one target."""
    found = []
    for index, override in enumerate(overrides):
        key, _, value = override.partition("=")
        if key in TARGET_KEYS and "," in value and not value.startswith(("[", "'", '"')):
            found.append((index, key, [v.strip() for v in value.split(",")]))
    if not found:
        return None
    if len(found) > 1:
        raise OnestopError(f"{' and '.join(overrides[i] for i, _, _ in found)}: list several targets under one key")
    index, key, values = found[0]
    if not all(values):
        raise OnestopError(f"{overrides[index]}: an empty name between commas")
    return key, values, [o for i, o in enumerate(overrides) if i != index]


def run_trainers_benchmark(overrides: Sequence[str] | None, variants: str, print_cfg: str | None = None) -> None:
    """`bench.trainers`, with onestop rows for each of `variants` ("data.padding_free=false;data.packing=true")."""
    chosen = [v.strip() for v in str(variants or "").split(";") if v.strip()]
    if not chosen or print_cfg:
        run_stage("bench.trainers", overrides, print_cfg)
        return
    primary, entry, preset = STAGES["bench.trainers"]
    with one_line_errors("bench.trainers"):
        for variant in chosen:
            if not all(is_override(word) and "=" in word for word in variant.split()):
                raise OnestopError(f"--variants {variant!r}: expected KEY=VALUE overrides, e.g. data.packing=true")
        load(entry)(load(COMPOSE)(primary, [*preset, *(overrides or [])]), chosen)


def _same(value):
    return value


def _words(values: Sequence[str] | None) -> list[str]:
    return list(values or [])


def _names(text: str) -> list[str]:
    """`"tiny, gemma3_270m"` -> ["tiny", "gemma3_270m"]: comma-separated, blanks dropped."""
    return [name.strip() for name in str(text).split(",") if name.strip()]


def _integers(option: str) -> Callable[[str], list[int]]:
    """Reads `--option 1,8,32` as [1, 8, 32]; anything else is a one-line error naming the option."""

    def read(text: str) -> list[int]:
        try:
            return [int(part) for part in str(text).split(",") if part.strip()]
        except ValueError:
            raise OnestopError(f"{option} {text}: expected comma-separated whole numbers, e.g. 1,8,32") from None

    return read


def _override_sets(text: str) -> list[str]:
    """`"data.packing=false;data.packing=true"` -> one entry per set; an empty set is the config as composed."""
    return [overrides.strip() for overrides in str(text).split(";")]


def _optional(read: Callable) -> Callable:
    """`read` for a value given; None for an option left out (None, "" or 0)."""
    return lambda value: read(value) if value else None


def _count(value) -> int | None:
    """A whole number, where 0 (or nothing) means "the default": None."""
    return int(value or 0) or None


class Entry(NamedTuple):
    """A task's function as "module:function", how each of the task's arguments is read before the call, and
    what to say when the task is given the wrong number of arguments."""

    target: str
    arguments: tuple[Callable, ...]
    usage: str = ""


# Each task's code is named here as "module:function" and imported when the task runs: the stages pull in
# torch, Lightning and lm-eval, and `invoke --list` or `--help` must not wait for them.
COMPOSE = "onestop.config.compose:compose"
# stage -> (primary config in conf/, "module:function" that runs it, overrides placed before the user's)
STAGES: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "train": ("train", "onestop.training.train:train", ()),
    "demo": ("train", "onestop.demo:run_demo", ("recipe=gemma3_270m_lora_demo",)),
    "data.prepare": ("train", "onestop.data.report:run_prepare", ()),
    "data.qa": ("data_qa", "onestop.data.qa:run_qa", ()),
    "export": ("export", "onestop.deploy.export:run_export", ()),
    "eval": ("eval", "onestop.evaluation.run:run_eval", ()),
    "deploy": ("deploy", "onestop.deploy.service:run_deploy", ()),
    "deploy.stop": ("deploy", "onestop.deploy.service:run_stop", ()),
    "deploy.status": ("deploy", "onestop.deploy.service:run_status", ()),
    "deploy.setup": ("deploy", "onestop.deploy.backends:run_setup", ("deploy=lmdeploy",)),
    "chat": ("chat", "onestop.deploy.chat:run_chat", ()),
    "agent": ("agent", "onestop.agents.session:run_agent", ()),
    "bench.agents": (
        "agent",
        "onestop.bench.agents:compare_agent_libraries",
        ("hydra.run.dir=runs/bench/agents/${now:%Y-%m-%d_%H-%M-%S}",),
    ),
    "estimate": ("train", "onestop.selection.report:run_estimate", ()),
    "bench.trainers": (
        "train",
        "onestop.bench.trainers:compare_trainers",
        ("recipe=gemma3_270m_lora_demo", "logger=none", "hydra.run.dir=runs/bench/trainers/${now:%Y-%m-%d_%H-%M-%S}"),
    ),
}

# Tasks that only read their arguments and call one function: task -> Entry. `run(task, *arguments)` runs them.
TASKS: dict[str, Entry] = {
    "eval.compare": Entry("onestop.evaluation.report:compare", (_words, _same, _same)),
    "bench.train": Entry(
        "onestop.bench.throughput:bench_train",
        (_words, int, _names, _override_sets, int, _same),
    ),
    "bench.estimate": Entry("onestop.bench.estimate:bench_estimate", (_names, _same, _same)),
    "bench.load": Entry("onestop.bench.load:bench_load", (_words, _same, _same, _same)),
    "bench.eval": Entry(
        "onestop.bench.eval:bench_eval", (_names, _count, _integers("--workers"), _integers("--concurrency"), _same)
    ),
    "bench.serve": Entry("onestop.bench.serve:bench_serve", (_words, _integers("--concurrency"), int, int, _same)),
    "bench.startup": Entry("onestop.bench.startup:bench_startup", (int, _names, _same)),
    "bench.data": Entry("onestop.bench.data:bench_data", (_integers("--sizes"), _same, _same)),
    "bench.gpu": Entry(
        "onestop.bench.gpu:bench_gpu",
        (_same, _same, _optional(float), _optional(_names), _optional(int), _count),
    ),
    "bench.gpu.report": Entry("onestop.bench.output:report_into_docs", (_same, _same)),
    "bench.gpu.wheels": Entry("onestop.bench.wheels:download_wheels", (_same, _same, _same)),
    "models": Entry("onestop.selection.report:run_models", (_same,)),
    "sweep": Entry("onestop.sweep.runner:run_sweep", (_words,)),
    "ui": Entry("onestop.ui.server:serve", (_same, int, _words, _same)),
    "ui.screenshots": Entry("onestop.ui.screenshots:take_screenshots", (_same,)),
    "runs": Entry("onestop.evaluation.runs:print_runs", (_words, _same)),
    "recipe.diff": Entry("onestop.recipes:run_diff", (_same, _same), "give exactly two recipes or run directories"),
}

# `invoke eval model=a,b,c` (or run_dir=A,B): one evaluation per target, then compared.
EVAL_MANY = "onestop.evaluation.many:run_eval_many"
TARGET_KEYS = ("model", "run_dir")

# Eval suites whose code sits above evaluation (which never imports agents): eval.kind -> "module:function".
EVAL_KINDS = {"agent": "onestop.agents.evaluate:run_agent_eval"}


def load(entry: str) -> Callable:
    """The function an entry point "module:function" names, importing its module now."""
    module, function = entry.split(":")
    return getattr(importlib.import_module(module), function)


# Exiting, the interpreter garbage-collects the ~4,000 modules torch, transformers and Lightning bring: seconds on a
# busy machine, after a SIGTERM's checkpoint, out of a scheduler's grace before SIGKILL. Frozen, they are skipped.
atexit.register(gc.freeze)


@contextmanager
def one_line_errors(task: str):
    """Every task runs inside this. A user error (OnestopError) ends it with one line on stderr and status 2,
    with no traceback unless ONESTOP_DEBUG=1; Ctrl-C (outside training, which saves a checkpoint and says
    so) with one line and status 130. Any other exception is a bug: its traceback stays, to be reported.

    Output piped into a reader that stops early (`invoke models --json | head -1`) ends the task quietly,
    status 1, as Python's documentation advises for SIGPIPE.

    Environment variables set but empty are dropped first: they count as unset.
    """
    drop_empty_variables()
    try:
        yield
        sys.stdout.flush()  # a reader gone mid-output fails here, not in the interpreter's flush at exit
    except BrokenPipeError:
        if not stdout_reader_gone():
            raise  # a pipe or socket of the task's own: a bug, with its traceback
        # What is still buffered goes to devnull, so the interpreter's flush at exit cannot fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        raise Exit(code=1) from None
    except OnestopError as err:
        if debugging():
            traceback.print_exc()
        raise Exit(f"onestop {task}: error: {err}", code=2) from None
    except KeyboardInterrupt:
        raise Exit(f"onestop {task}: interrupted", code=130) from None


def stdout_reader_gone() -> bool:
    """True when standard output is a pipe whose reader has closed it (poll reports an error on it)."""
    try:
        descriptor = sys.stdout.fileno()
    except (AttributeError, ValueError, OSError):  # replaced by an object without a descriptor (a test's capture)
        return False
    poller = select.poll()
    poller.register(descriptor, select.POLLOUT)
    return any(events & select.POLLERR for _, events in poller.poll(0))


def _config_text(cfg, which: str) -> str:
    job = {k: v for k, v in cfg.items() if k != "hydra"}
    parts = {"job": [job], "hydra": [{"hydra": cfg.hydra}], "all": [job, {"hydra": cfg.hydra}]}
    if which not in parts:
        raise OnestopError(f"--cfg {which}: expected one of job, hydra, all")
    return "".join(OmegaConf.to_yaml(OmegaConf.create(p)) for p in parts[which])
