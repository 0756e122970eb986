"""Every entry point written as a string resolves: a renamed or moved function fails here, not when a user runs
the one task, page or config option that names it.

The strings: the command line's tables (`cli.STAGES`, `cli.TASKS`, ...), the UI's page modules, the `_target_`
defaults of the config schema and every `_target_` in conf/, the shipped conf and recipes/.
"""

import dataclasses
import importlib
import importlib.util
import inspect

import yaml
from hydra.utils import get_object

from onestop import cli
from onestop.config import schema
from onestop.core.paths import PROJECT_ROOT
from onestop.ui.app import PAGE_MODULES

SHIPPED = PROJECT_ROOT / "src" / "onestop" / "shipped"
CONFIG_ROOTS = (PROJECT_ROOT / "conf", PROJECT_ROOT / "recipes", SHIPPED / "conf", SHIPPED / "recipes")
# Targets in packages that come with an optional extra: checked only where the extra is installed.
OPTIONAL = {"hydra_plugins.hydra_ray_launcher": "pip install 'onestop[ray]'"}


def cli_entries() -> dict[str, str]:
    entries = {"COMPOSE": cli.COMPOSE, "EVAL_MANY": cli.EVAL_MANY}
    entries |= {f"STAGES[{task}]": entry for task, (_, entry, _) in cli.STAGES.items()}
    entries |= {f"TASKS[{task}]": entry.target for task, entry in cli.TASKS.items()}
    entries |= {f"EVAL_KINDS[{kind}]": entry for kind, entry in cli.EVAL_KINDS.items()}
    return entries


def schema_targets() -> dict[str, str]:
    found = {}
    for name, kind in inspect.getmembers(schema, dataclasses.is_dataclass):
        for field in dataclasses.fields(kind):
            if field.name == "_target_":
                found[f"schema.{name}"] = field.default
    return found


def yaml_targets() -> dict[str, str]:
    found = {}
    for root in CONFIG_ROOTS:
        for path in sorted(root.rglob("*.yaml")):
            for target in _targets_in(yaml.safe_load(path.read_text())):
                found[f"{path.relative_to(root.parent)}: {target}"] = target
    return found


def _targets_in(node) -> list[str]:
    if isinstance(node, dict):
        own = [node["_target_"]] if isinstance(node.get("_target_"), str) else []
        return own + [t for value in node.values() for t in _targets_in(value)]
    if isinstance(node, list):
        return [t for value in node for t in _targets_in(value)]
    return []


def test_every_command_line_entry_point_names_a_function():
    missing = {}
    for where, entry in cli_entries().items():
        try:
            function = cli.load(entry)
        except (ImportError, AttributeError) as exc:
            missing[where] = f"{entry}: {exc}"
            continue
        if not callable(function):
            missing[where] = f"{entry}: not callable"
    assert not missing, missing
    assert len(cli.TASKS) > 10 and "train" in cli.STAGES


def test_every_ui_page_module_has_a_router():
    for name in PAGE_MODULES:
        assert hasattr(importlib.import_module(name), "router"), name


def test_every_config_target_resolves():
    targets = schema_targets() | yaml_targets()
    assert "schema.LoraMethodConfig" in targets and any(t.startswith("onestop.agents.") for t in targets.values())
    missing = {}
    for where, target in targets.items():
        if any(target.startswith(package + ".") and not _installed(package) for package in OPTIONAL):
            continue
        try:
            get_object(target)
        except Exception as exc:  # hydra wraps the import error in its own
            missing[where] = f"{exc}".splitlines()[0]
    assert not missing, missing


def _installed(package: str) -> bool:
    try:
        return importlib.util.find_spec(package) is not None
    except ModuleNotFoundError:  # its parent package is missing too
        return False
