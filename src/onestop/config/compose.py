"""Compose a run's config from conf/ (and optionally a recipe) with one-line errors for bad input."""

# Lazy imports: lightning (inside the check of trainer keys the schema lacks).

import inspect
import re
from dataclasses import fields
from pathlib import Path

from hydra import compose as hydra_compose
from hydra import initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.errors import ConfigCompositionException, MissingConfigException, OverrideParseException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import (
    ConfigAttributeError,
    ConfigKeyError,
    MissingMandatoryValue,
    OmegaConfBaseException,
    ValidationError,
)

from onestop import __version__
from onestop.config.groups import config_groups, list_group_options
from onestop.config.schema import TrainerConfig, register_schemas
from onestop.core.errors import OnestopError
from onestop.core.paths import CONF_DIR, PACKAGE_DIR, PROJECT_ROOT, RECIPES_DIR


class ConfigError(OnestopError):
    """A config that cannot be composed; the message is one line naming the key and what was expected."""


def _setup() -> None:
    if not OmegaConf.has_resolver("project_root"):
        OmegaConf.register_new_resolver("project_root", lambda: str(PROJECT_ROOT))
    if not OmegaConf.has_resolver("package_dir"):  # files shipped inside the package, e.g. the demo data
        OmegaConf.register_new_resolver("package_dir", lambda: str(PACKAGE_DIR))
    if not OmegaConf.has_resolver("first_set"):
        OmegaConf.register_new_resolver("first_set", lambda *values: next((v for v in values if v), None))
    register_schemas()


def resolve_recipe(recipe: str) -> Path:
    """A recipe is a name in recipes/ or a path to a YAML file."""
    candidate = Path(recipe)
    if candidate.suffix in {".yaml", ".yml"} or candidate.exists():
        if not candidate.is_file():
            raise ConfigError(f"recipe={recipe}: no such file")
        return candidate.resolve()
    path = RECIPES_DIR / f"{recipe}.yaml"
    if not path.is_file():
        names = ", ".join(sorted(p.stem for p in RECIPES_DIR.glob("*.yaml")))
        raise ConfigError(f"recipe={recipe}: no such recipe; choose one of: {names}, or give a .yaml path")
    return path


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", text)[:3])


def check_recipe_version(recipe_path: Path) -> None:
    """A recipe written by a newer onestop (its provenance says which) may use keys this one lacks: refuse it
    with that reason, before composition reports the first such key as a typo."""
    try:
        recorded = OmegaConf.select(OmegaConf.load(recipe_path), "provenance.onestop.version", default=None)
    except Exception:  # not YAML, or not a mapping: composition reports it
        return
    if recorded and _version(str(recorded)) > _version(__version__):
        raise ConfigError(
            f"recipe={recipe_path}: written by onestop {recorded} (provenance.onestop.version), newer than this "
            f"onestop {__version__}; upgrade onestop, or delete the provenance block to try it with this version"
        )


def compose(
    config_name: str = "train", overrides: list[str] | tuple[str, ...] = (), allow_missing: bool = False
) -> DictConfig:
    """Compose `conf/<config_name>.yaml` with Hydra overrides; `recipe=NAME|FILE` swaps the primary config.

    The returned config includes the `hydra` node (run dir and runtime info) and is registered with
    HydraConfig, so `${hydra:...}` interpolations resolve. `allow_missing` lets required values stay unset
    (`???`), for printing the config.

    Raises:
        ConfigError: on a misspelt key, a wrong type, an unknown group option, a malformed override, a
            required value left unset or settings that contradict each other.
    """
    _setup()
    check_group_choices(overrides)
    requested = (config_name, list(overrides))
    overrides = [as_list_override(o) for o in overrides]
    config_dir = CONF_DIR
    recipes = [o for o in overrides if o.startswith("recipe=")]
    if recipes:
        overrides = [o for o in overrides if not o.startswith("recipe=")]
        recipe_path = resolve_recipe(recipes[-1].split("=", 1)[1])
        check_recipe_version(recipe_path)
        config_dir, config_name = recipe_path.parent, recipe_path.stem
        overrides.insert(0, f"hydra.searchpath=[file://{CONF_DIR}]")
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(config_dir), version_base="1.3", job_name=config_name):
            cfg = hydra_compose(config_name, overrides=overrides, return_hydra_config=True)
            HydraConfig.instance().set_config(cfg)
            for key in cfg:
                if key != "hydra" and not (allow_missing and OmegaConf.is_missing(cfg, key)):
                    OmegaConf.to_container(cfg[key], resolve=True) if isinstance(cfg[key], DictConfig) else cfg[key]
    except MissingConfigException as err:
        raise ConfigError(_missing_config_message(err, config_name, requested[1])) from None
    except OverrideParseException as err:
        raise ConfigError(
            f"cannot parse override {err.override!r}: expected KEY=VALUE, e.g. trainer.max_steps=5"
        ) from None
    except (ConfigCompositionException, OmegaConfBaseException) as err:
        message = _composition_message(err, *requested)
        raise ConfigError(_in_recipe(message, recipe_path) if recipes else message) from None
    if not allow_missing:
        check_required(cfg)
    check_values(cfg)
    check_trainer_keys(cfg)
    return cfg


# Groups whose node has a `path` key: a path given to the group itself (model=/data/my-model) meant that key;
# the hint names an option to choose beside it.
PATH_GROUPS = {"model": "model=qwen", "data": "data=alpaca", "eval": "eval=qa"}
# Keys that take a list, where one name given alone means a list of that one name.
LIST_KEYS = ("method.target_modules",)


def check_group_choices(overrides: list[str] | tuple[str, ...]) -> None:
    """A directory, file or hub id given where a group option belongs (model=/data/my-model) is refused with
    the key it was meant for; Hydra would read its slashes as nested groups."""
    for override in overrides:
        key, equals, value = override.partition("=")
        if equals and key in PATH_GROUPS and value not in list_group_options(key) and ("/" in value or "\\" in value):
            raise ConfigError(
                f"{key}={value}: {key}= takes an option name, not a path; set the path with {key}.path={value} "
                f"(and {key}= the option it is like, e.g. {PATH_GROUPS[key]})"
            )


def as_list_override(override: str) -> str:
    """`method.target_modules=q_proj` (one name, or names joined by commas) as the list the key takes."""
    key, equals, value = override.partition("=")
    if equals and key.lstrip("+") in LIST_KEYS and value and not value.startswith(("[", "$", "null")):
        return f"{key}=[{value}]"
    return override


def check_required(cfg: DictConfig) -> None:
    """Every `???` (a value with no safe default, such as data.path) is set."""
    for key in cfg:
        if key != "hydra" and isinstance(cfg[key], DictConfig):
            missing = sorted(OmegaConf.missing_keys(cfg[key]))
            if missing:
                raise ConfigError(_missing_value_message(missing[0]))


def _missing_value_message(key: str) -> str:
    return f"config key '{key}': required and not set; set it with {key}=VALUE"


# Stages whose loss scores a whole sequence (a preference pair, a rated or sampled answer) rather than each
# labelled token: their loss needs the whole output head. onestop.training.stages declares each stage's
# `scored_whole`; the estimate, a layer below training, reads this (a test keeps the two equal).
WHOLE_SEQUENCE_STAGES = ("dpo", "kto", "orpo", "simpo", "rm", "grpo")

CHOICES = {
    "data.format": ("alpaca", "sharegpt", "messages", "text", "preference", "unpaired", "feedback", "prompts"),
    "data.on_error": ("raise", "skip"),
    "data.overlength": ("truncate", "drop"),
    "model.source": ("hub", "embedded"),
    "model.attn_implementation": ("eager", "sdpa", "flash_attention_2", "flex_attention"),
    # onestop.training.stages.STAGES, the table that runs them (a test keeps the two equal)
    "stage": ("sft", "pretrain", "dpo", "kto", "orpo", "simpo", "rm", "grpo"),
    "dpo.loss_type": ("sigmoid", "ipo", "hinge"),
    "rl.loss_type": ("grpo", "dapo", "dr_grpo"),
    "format": ("merged", "adapter", "gguf"),
    "sweep.direction": ("minimize", "maximize"),
    # lightning.Trainer's precision values (its _PRECISION_INPUT), and onestop's own auto
    "hardware.precision": (
        "auto",
        "32-true",
        "bf16-mixed",
        "16-mixed",
        "bf16-true",
        "16-true",
        "64-true",
        "transformer-engine",
        "transformer-engine-float16",
        "32",
        "bf16",
        "16",
        "64",
    ),
}
PORTS = range(0, 65536)


def check_values(cfg: DictConfig) -> None:
    """Checks a type alone cannot express; each message says what to change."""
    for key, choices in CHOICES.items():
        value = OmegaConf.select(cfg, key, default=None)
        if value is not None and value not in choices:
            raise ConfigError(f"config key '{key}': expected one of {', '.join(choices)}, got {value!r}")
    if "data" in cfg:
        if not 0.0 <= cfg.data.val_ratio < 1.0:
            raise ConfigError(f"config key 'data.val_ratio': expected a fraction in [0, 1), got {cfg.data.val_ratio}")
        if cfg.data.batch_size < 1:
            raise ConfigError(f"config key 'data.batch_size': expected a positive integer, got {cfg.data.batch_size}")
        ngram = cfg.data.contamination.ngram
        if ngram < 1:
            raise ConfigError(f"config key 'data.contamination.ngram': expected a positive integer, got {ngram}")
    if "port" in cfg and cfg.port not in PORTS:
        raise ConfigError(f"config key 'port': expected a port number in 0..65535 (0 picks a free one), got {cfg.port}")
    if "method" in cfg and "r" in cfg.method and cfg.method.r < 1:
        raise ConfigError(f"config key 'method.r': the LoRA rank must be a positive integer, got {cfg.method.r}")
    if "optim" in cfg and cfg.optim.lr <= 0:
        raise ConfigError(f"config key 'optim.lr': expected a positive learning rate, got {cfg.optim.lr}")
    for key in ("packing", "padding_free"):
        if "data" in cfg and not (isinstance(cfg.data[key], bool) or cfg.data[key] == "auto"):
            raise ConfigError(f"config key 'data.{key}': expected true, false or auto, got {cfg.data[key]!r}")
    if "method" in cfg and "data" in cfg and cfg.data.packing is True and "num_virtual_tokens" in cfg.method:
        raise ConfigError(
            f"config key 'data.packing': the virtual tokens of method={cfg.method.name} cannot be packed with other "
            "examples; set data.packing=false"
        )
    chunk = OmegaConf.select(cfg, "train.loss_chunk_size", default=0)
    if chunk != "auto" and not (isinstance(chunk, int) and not isinstance(chunk, bool) and chunk >= 0):
        raise ConfigError(
            f"config key 'train.loss_chunk_size': expected auto, 0 (whole head at once) or a positive number of "
            f"positions, got {chunk!r}"
        )
    if OmegaConf.select(cfg, "train.liger_kernels", default=False) and cfg.train.cut_cross_entropy:
        raise ConfigError(
            "config key 'train.cut_cross_entropy': train.liger_kernels already fuses the output head and the loss; "
            "set one of them"
        )
    quantized = "method" in cfg and OmegaConf.select(cfg.method, "quantization.load_in_4bit", default=False)
    if quantized and OmegaConf.select(cfg, "hardware.accelerator") == "cpu":
        raise ConfigError(
            f"method={cfg.method.name}: a 4-bit base needs a CUDA GPU (bitsandbytes), and hardware.accelerator=cpu; "
            "use method=lora or method=dora on the CPU"
        )
    if "method" in cfg and "trainable_layers" in cfg.method and cfg.method.trainable_layers < 1:
        raise ConfigError(
            f"config key 'method.trainable_layers': expected at least 1, got {cfg.method.trainable_layers}"
        )


# Keys onestop passes to lightning.Trainer itself, and the config key that sets each.
TRAINER_SET_BY = {
    "accelerator": "hardware.accelerator",
    "devices": "hardware.devices",
    "num_nodes": "hardware.num_nodes",
    "strategy": "hardware.strategy",
    "precision": "hardware.precision",
    "default_root_dir": "hydra.run.dir",
    "logger": "logger=",
    "callbacks": None,
    "plugins": None,
    "use_distributed_sampler": None,
    "limit_val_batches": "data.val_ratio",
}


def check_trainer_keys(cfg: DictConfig) -> None:
    """Keys added under `trainer` (+trainer.KEY=VALUE) are lightning.Trainer arguments onestop does not set
    itself; checked here, because the trainer is built only after the data is prepared and the run directory
    made."""
    if not isinstance(cfg.get("trainer"), DictConfig):
        return
    known = {f.name for f in fields(TrainerConfig)}
    added = [str(key) for key in cfg.trainer if key not in known]
    if not added:
        return
    from lightning.pytorch import Trainer  # only for a key the schema lacks: composing stays free of torch

    accepted = set(inspect.signature(Trainer.__init__).parameters) - {"self"}
    for key in added:
        if key in TRAINER_SET_BY:
            where = TRAINER_SET_BY[key]
            raise ConfigError(
                f"config key 'trainer.{key}': onestop sets it for the trainer"
                + (f"; set {where} instead" if where else "; it cannot be overridden")
            )
        if key not in accepted:
            valid = ", ".join(sorted(accepted - set(TRAINER_SET_BY)))
            raise ConfigError(
                f"config key 'trainer.{key}' is not an argument of lightning.Trainer; "
                f"valid keys under 'trainer': {valid}"
            )


def _missing_config_message(err: MissingConfigException, config_name: str, overrides: list[str]) -> str:
    text = str(err)
    match = re.search(r"Could not find '([^']+)'", text)
    if match and "/" in match.group(1) and err.options is not None:
        group, _, option = match.group(1).rpartition("/")
        return f"{group}={option}: unknown option; valid choices for '{group}': {', '.join(sorted(err.options))}"
    # An option inside a list (tools=[calculator,nope]): Hydra names the file it could not load, not the choices.
    unloadable = re.search(r"Could not load '([^']+)/([^'/]+)'", text)
    if unloadable and unloadable.group(1) in config_groups():
        group, option = unloadable.groups()
        given = next((o for o in reversed(overrides) if o.lstrip("+").startswith(f"{group}=")), f"{group}={option}")
        valid = ", ".join(list_group_options(group))
        return f"{given}: unknown option '{option}'; valid choices for '{group}': {valid}"
    return f"{config_name}: {text.splitlines()[0]}"


def _composition_message(err: Exception, config_name: str, overrides: list[str]) -> str:
    cause = _innermost_config_error(err)
    full_key = getattr(cause, "full_key", None) or _key_from_text(str(cause))
    first_line = str(cause).splitlines()[0] if str(cause) else type(cause).__name__
    if isinstance(cause, MissingMandatoryValue) and full_key:
        return _missing_value_message(full_key)
    if isinstance(cause, ConfigKeyError | ConfigAttributeError) and " not in " in first_line:
        parent, _, leaf = (full_key or "").rpartition(".")
        valid = _valid_keys(config_name, parent, overrides)
        where = f"under '{parent}'" if parent else "at the top level"
        return f"config key '{full_key}' does not exist; valid keys {where}: {', '.join(valid)}"
    if isinstance(cause, ValidationError) and "is not a ListConfig" in first_line and full_key:
        return f"config key '{full_key}': expected a list, e.g. {full_key.rpartition('.')[2]}: [a, b]"
    if isinstance(cause, ValidationError):
        match = re.match(r"Value '(.*)' of type '\w+' could not be converted to (\w+)", first_line)
        detail = f"expected {match.group(2).lower()}, got {match.group(1)!r}" if match else first_line
        return f"config key '{full_key}': {detail}"
    if full_key:
        return f"config key '{full_key}': {first_line}"
    return f"{config_name}: {first_line}"


def _in_recipe(message: str, recipe: Path) -> str:
    """`message` led by the recipe file and line that sets its key, where the recipe sets it."""
    match = re.match(r"config key '([^']+)'", message)
    if not match:
        return message
    leaf = match.group(1).rpartition(".")[2]
    lines = recipe.read_text().splitlines()
    number = next((i for i, line in enumerate(lines, 1) if re.match(rf"\s*{re.escape(leaf)}\s*:", line)), None)
    return f"{recipe}:{number}: {message}" if number else message


def _innermost_config_error(err: Exception) -> Exception:
    """The OmegaConf error under Hydra's wrapping (the one that names the key), else `err` itself."""
    found, link = err, err.__cause__ or err.__context__
    while link is not None:
        if isinstance(link, OmegaConfBaseException) and getattr(link, "full_key", None):
            return link
        if isinstance(link, OmegaConfBaseException) and found is err:
            found = link
        link = link.__cause__ or link.__context__
    return found


def _key_from_text(text: str) -> str | None:
    match = re.search(r"full_key: (\S+)", text) or re.search(r"Could not override '([^']+)'", text)
    return match.group(1) if match else None


def _valid_keys(config_name: str, parent: str, overrides: list[str]) -> list[str]:
    """Keys that exist under `parent` in the config composed without the bad override."""
    selections = set(config_groups()) | {"recipe"}
    clean = [o for o in overrides if o.split("=", 1)[0] in selections]
    try:
        base = compose(config_name, clean)
    except ConfigError:
        return []
    node = OmegaConf.select(base, parent) if parent else base
    if not isinstance(node, DictConfig):
        return []
    return sorted(k for k in node.keys() if not str(k).startswith("_") and k != "hydra")
