"""The config groups and their options, read from conf/ without importing Hydra (used by --help)."""

import re

from onestop.core.paths import CONF_DIR


def config_groups() -> list[str]:
    """Names of the config groups: the sub-directories of conf/."""
    return sorted(p.name for p in CONF_DIR.iterdir() if p.is_dir())


def list_group_options(group: str) -> list[str]:
    """Options of a config group: the YAML files in conf/<group>/."""
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


def default_options(primary: str = "train") -> dict[str, str | list[str]]:
    """The option each group takes when not overridden, from the primary config's defaults list; a group
    that selects several options at once (`- tools: [calculator, units]`) maps to their list."""
    text = (CONF_DIR / f"{primary}.yaml").read_text()
    chosen: dict[str, str | list[str]] = {}
    for group, single, several in re.findall(
        r"^\s*-\s*(\w+):\s*(?:(\w+)|\[([\w,\s]*)\])\s*$", text, flags=re.MULTILINE
    ):
        chosen[group] = single or [option.strip() for option in several.split(",") if option.strip()]
    return chosen
