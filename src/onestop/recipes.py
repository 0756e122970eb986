"""Recipes with provenance: every run writes `recipe.yaml`, a config that reproduces it, and says what made it.

    invoke train recipe=runs/train/DIR/recipe.yaml      # the same run again (identical losses on CPU)
    invoke recipe.diff runs/train/A runs/train/B        # what differs between two runs or recipes

The recipe is the run's resolved config (every group option written out, so it needs nothing from conf/
but the schema) plus a `provenance` block: onestop's git commit, package versions, the data fingerprint,
the hardware and the final metrics. Training from a recipe compares its provenance with the present and
warns, one line per difference, about package versions and data that changed.
"""

# Lazy imports: torch (inside the functions that need them).

import copy
import glob
import hashlib
import json
import os
import platform
import subprocess
import time
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from omegaconf import DictConfig, OmegaConf
from rich.console import Console
from rich.table import Table

from onestop import __version__
from onestop.config.compose import compose, resolve_recipe
from onestop.core.errors import OnestopError
from onestop.core.paths import PACKAGE_DIR, PROJECT_ROOT
from onestop.core.rundir import RunDir, job_config
from onestop.data.prepare import BATCHING_KEYS, PIPELINE_VERSION, sources_of
from onestop.models.processor import text_tokenizer

PACKAGES = ("torch", "transformers", "peft", "lightning", "datasets", "hydra-core", "lm-eval")
# Keys of a run's config that describe where it ran, not what it computed.
NOT_REPRODUCED = ("paths", "resume", "overwrite", "provenance")


def package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            continue
    return versions


def git_state() -> dict:
    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(["git", *args], cwd=PACKAGE_DIR, capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    dirty = git("status", "--porcelain", "--untracked-files=no")
    return {"commit": commit or "unknown", "dirty": bool(dirty) if dirty is not None else None}


def hardware_facts(trainer) -> dict:
    import torch

    facts = {
        "accelerator": type(trainer.accelerator).__name__.removesuffix("Accelerator").lower(),
        "precision": str(trainer.precision),
        "world_size": trainer.world_size,
        "num_nodes": trainer.num_nodes,
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
    }
    if torch.cuda.is_available():
        facts["gpu"] = torch.cuda.get_device_name(0)
    return facts


def data_fingerprints(fingerprint: str, data_cfg: DictConfig, tokenizer, seed: int) -> dict[str, str]:
    """The data stage's fingerprint and `data_content`: the same inputs, blind to where the files lie.

    The data stage keys its cache on the file paths too, so a colleague's checkout elsewhere, or a path
    typed relative instead of absolute, changes it; `data_content` changes only when what trains changes:
    the files' bytes, the data options, the tokenizer's behaviour, the seed.
    """
    config = OmegaConf.to_container(data_cfg, resolve=True)
    options = {k: v for k, v in config.items() if k not in {*BATCHING_KEYS, "path", "val_path", "mix", "contamination"}}
    mix = [{k: v for k, v in entry.items() if k != "path"} for entry in config.get("mix") or []]
    probe = "onestop fingerprint probe: 一站式, 1234567890."
    tokenizer = text_tokenizer(tokenizer)  # a vision-language model's processor: its tokenizer
    tokenizer_behaviour = [len(tokenizer), str(tokenizer.chat_template), str(tokenizer.eos_token)]
    tokenizer_behaviour.append(tokenizer(probe, add_special_tokens=False)["input_ids"])
    digest = hashlib.sha256(json.dumps([PIPELINE_VERSION, options, mix, tokenizer_behaviour, seed]).encode())
    sources = [("train", s.path) for s in sources_of(data_cfg)]
    if data_cfg.val_path:
        sources += [("validation", s.path) for s in sources_of(data_cfg, "val_path")]
    for role, path in sources:
        digest.update(role.encode())
        if Path(path).is_file():
            with open(path, "rb") as handle:
                for block in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(block)
        else:
            digest.update(path.encode())  # a hub dataset id names its content
    return {"data_fingerprint": fingerprint, "data_content": digest.hexdigest()[:20]}


def provenance(fingerprints: dict[str, str], hardware: dict, metrics: dict, run_dir: Path) -> dict:
    return {
        "onestop": {"version": __version__, **git_state()},
        "packages": package_versions(),
        **fingerprints,
        "hardware": hardware,
        "metrics": {k: metrics.get(k) for k in ("train_loss", "val_loss", "steps", "epochs", "tokens_per_s")},
        "train_losses": metrics.get("train_losses", []),
        "run_dir": str(run_dir),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def recipe_text(job: dict, facts: dict) -> str:
    """The recipe file: the command that runs it, then the config, then where it came from."""
    config = {k: portable(v) for k, v in anchor_files(job).items() if k not in NOT_REPRODUCED}
    document = {
        "defaults": ["train_schema", "_self_"],
        **config,
        "provenance": facts,
        "hydra": {"run": {"dir": "runs/train/${now:%Y-%m-%d_%H-%M-%S}"}},
    }
    header = (
        f"# invoke train recipe={RunDir(facts['run_dir']).recipe_file}\n"
        f"# Reproduces the run in {facts['run_dir']} (onestop {facts['onestop']['commit'][:12]}, "
        f"{facts['created']}). Every option is written out; `provenance` records what made it.\n"
    )
    return header + OmegaConf.to_yaml(OmegaConf.create(document))


def anchor_files(job: dict) -> dict:
    """The run's data files as absolute paths: a relative one named the file only from where training started."""

    def anchored(value):
        if isinstance(value, str) and not os.path.isabs(value) and glob.glob(value):
            return os.path.abspath(value)
        return value

    job = copy.deepcopy(job)
    data, sweep = job.get("data") or {}, job.get("sweep") or {}
    for node, key in ((data, "path"), (data, "val_path"), (sweep, "eval_path")):
        if key in node:
            node[key] = anchored(node[key])
    for source in data.get("mix") or []:
        if isinstance(source, dict) and "path" in source:
            source["path"] = anchored(source["path"])
    contamination = data.get("contamination") or {}
    if "eval_paths" in contamination:
        contamination["eval_paths"] = [anchored(p) for p in contamination["eval_paths"]]
    return job


def portable(value):
    """Paths inside this checkout written relative to it, so a colleague's checkout elsewhere finds them."""
    if isinstance(value, dict):
        return {k: portable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [portable(v) for v in value]
    if isinstance(value, str) and value.startswith(f"{PACKAGE_DIR}/"):
        return "${package_dir:}" + value[len(str(PACKAGE_DIR)) :]
    if isinstance(value, str) and value.startswith(f"{PROJECT_ROOT}/"):
        return "${project_root:}" + value[len(str(PROJECT_ROOT)) :]
    return value


def provenance_warnings(recorded: DictConfig | dict | None, fingerprints: dict[str, str]) -> list[str]:
    """One line per package version, and one for the data, that differ from the recipe's provenance."""
    if not recorded:
        return []
    recorded = OmegaConf.to_container(recorded, resolve=True) if OmegaConf.is_config(recorded) else recorded
    lines = []
    present = package_versions()
    for name, then in (recorded.get("packages") or {}).items():
        now = present.get(name)
        if now != then:
            lines.append(f"warning: the recipe was made with {name} {then}, this environment has {now or 'none'}")
    # Recipes written before data_content existed can only compare the path-sensitive fingerprint.
    key = "data_content" if recorded.get("data_content") else "data_fingerprint"
    then, now = recorded.get(key), fingerprints.get(key)
    if then and now and then != now:
        lines.append(
            f"warning: data fingerprint {now} differs from the recipe's {then} ({key}): the data files, "
            "data config or tokenizer changed"
        )
    return lines


def load_for_diff(reference: str) -> dict:
    """A recipe name, a recipe file, or a run directory (its recipe.yaml, else config.yaml), as plain data."""
    path = Path(reference).expanduser()
    if path.is_dir():
        path = RunDir(path).recipe_or_config()
        if path is None:
            raise OnestopError(f"{reference}: neither recipe.yaml nor config.yaml in this directory")
    else:
        path = resolve_recipe(reference)
    data = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
    if "defaults" in data:
        # A recipe names only what it changes, its model and method in the defaults list: compare what it
        # composes to, or two recipes that differ in the model would look alike.
        data = job_config(compose("train", [f"recipe={path}"]))
    for key in ("hydra", "paths"):  # where and when a run ran, not what it computes
        data.pop(key, None)
    return data


def flatten(data, prefix: str = "") -> dict[str, object]:
    if isinstance(data, dict):
        items = {}
        for key, value in data.items():
            items |= flatten(value, f"{prefix}.{key}" if prefix else str(key))
        return items or {prefix: {}}
    return {prefix: data}


def diff(a: str, b: str) -> list[tuple[str, object, object]]:
    left, right = flatten(load_for_diff(a)), flatten(load_for_diff(b))
    missing = "—"
    rows = [(k, left.get(k, missing), right.get(k, missing)) for k in sorted(left.keys() | right.keys())]
    return [row for row in rows if row[1] != row[2] and not row[0].startswith(("defaults", "provenance.created"))]


def run_diff(a: str, b: str) -> list:
    rows = diff(a, b)
    if not rows:
        print(f"No differences between {a} and {b}.")
        return rows
    table = Table(title=f"{len(rows)} differences", show_lines=False)
    table.add_column("key")
    table.add_column(a, overflow="fold")
    table.add_column(b, overflow="fold")
    for key, left, right in rows:
        table.add_row(key, str(left), str(right))
    Console(width=max(Console().width, 120)).print(table)
    return rows
