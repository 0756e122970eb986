"""Verifiable rewards for stage=grpo: functions a program checks, chosen by name in `rl.rewards`.

Every reward is `fn(prompt: str, completion: str, **fields) -> float`: the prompt as the model saw it (its chat
template applied), the sampled completion, and every other field of the prompt's record (`answer`, ...).
Built in:

    exact_match    1 if the completion equals the record's `rl.answer_field`, compared normalised (case, spaces,
                   trailing punctuation), else 0
    contains       1 if the normalised answer occurs in the normalised completion, else 0
    number_match   1 if the completion's final number equals the answer's (GSM8K's `#### 42` read on either side;
                   commas and a trailing .0 ignored), else 0
    format         1 if the whole completion (stripped) matches the regular expression `rl.format_pattern`, else 0

A user's own reward is `module:function` in the same list, importable from the working directory or PYTHONPATH:

    # my_rewards.py                                   invoke train stage=grpo ... 'rl.rewards=[my_rewards:short]'
    def short(prompt: str, completion: str, **fields) -> float:
        return 1.0 if len(completion.split()) <= 5 else 0.0
"""

import importlib
import math
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from omegaconf import DictConfig

from onestop.core.errors import OnestopError

RewardFunction = Callable[..., float]

_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")


def normalise(text: str) -> str:
    """Lower case, runs of whitespace as one space, surrounding spaces and trailing punctuation removed."""
    return " ".join(str(text).lower().split()).rstrip(".!?;:,").strip()


def exact_match(prompt: str, completion: str, *, answer_field: str = "answer", **fields) -> float:
    return float(normalise(completion) == normalise(_field(fields, answer_field)))


def contains(prompt: str, completion: str, *, answer_field: str = "answer", **fields) -> float:
    return float(normalise(_field(fields, answer_field)) in normalise(completion))


def final_number(text: str) -> float | None:
    """The number after GSM8K's `####` if there is one, else the last number in `text`; None without one."""
    text = str(text)
    if "####" in text:
        text = text.rsplit("####", 1)[1]
    numbers = _NUMBER.findall(text)
    if not numbers:
        return None
    try:
        return float(numbers[-1].replace(",", ""))
    except ValueError:
        return None


def number_match(prompt: str, completion: str, *, answer_field: str = "answer", **fields) -> float:
    got, expected = final_number(completion), final_number(_field(fields, answer_field))
    return float(got is not None and expected is not None and math.isclose(got, expected, rel_tol=0, abs_tol=1e-6))


def format_match(prompt: str, completion: str, *, pattern: re.Pattern, **fields) -> float:
    return float(pattern.fullmatch(completion.strip()) is not None)


BUILT_IN = {"exact_match": exact_match, "contains": contains, "number_match": number_match, "format": format_match}


def _field(fields: dict, name: str) -> str:
    if name not in fields:
        raise OnestopError(
            f"config key 'rl.answer_field': the prompt records have no field {name!r} "
            f"(they have: {', '.join(sorted(fields)) or 'none'})"
        )
    return fields[name]


@dataclass(frozen=True)
class Reward:
    name: str
    function: RewardFunction
    weight: float


def rewards_from_config(rl: DictConfig) -> list[Reward]:
    """The rewards `rl.rewards` names, each with its weight in `rl.reward_weights` (None: 1 each); a name that is
    neither built in nor an importable `module:function` stops in one line naming the key."""
    names = list(rl.rewards)
    if not names:
        raise OnestopError("config key 'rl.rewards': name at least one reward (e.g. rl.rewards=[exact_match])")
    weights = [1.0] * len(names) if rl.reward_weights is None else [float(w) for w in rl.reward_weights]
    if len(weights) != len(names):
        raise OnestopError(
            f"config key 'rl.reward_weights': {len(weights)} weights for {len(names)} rewards ({', '.join(names)})"
        )
    return [Reward(name, _function(name, rl), weight) for name, weight in zip(names, weights, strict=True)]


def _function(name: str, rl: DictConfig) -> RewardFunction:
    if name == "format":
        try:
            pattern = re.compile(rl.format_pattern, re.DOTALL)
        except (re.error, TypeError) as error:
            raise OnestopError(
                f"config key 'rl.format_pattern': {rl.format_pattern!r} is not a regex ({error})"
            ) from None
        return partial(format_match, pattern=pattern)
    if name in BUILT_IN:
        return partial(BUILT_IN[name], answer_field=rl.answer_field)
    if ":" not in name:
        raise OnestopError(
            f"config key 'rl.rewards': unknown reward {name!r}; expected one of {', '.join(BUILT_IN)} "
            "or module:function"
        )
    module_name, _, attribute = name.partition(":")
    if str(Path.cwd()) not in sys.path and "" not in sys.path:  # importable from the working directory
        sys.path.insert(0, str(Path.cwd()))
    try:
        function = getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError) as error:
        raise OnestopError(f"config key 'rl.rewards': cannot import reward {name!r} ({error})") from None
    if not callable(function):
        raise OnestopError(f"config key 'rl.rewards': {name!r} is not a function")
    return function


def score(rewards: list[Reward], prompts: list[str], completions: list[str], records: list[dict]):
    """Each reward of each completion, as {name: [value per completion]}, and their weighted sums.

    A reward that raises or returns something other than a finite number gives 0 for that completion and is
    counted in `failures` ({name: count}), so one bad completion never stops a run."""
    per_reward: dict[str, list[float]] = {}
    failures: dict[str, int] = {}
    for reward in rewards:
        values = []
        for prompt, completion, record in zip(prompts, completions, records, strict=True):
            try:
                value = float(reward.function(prompt, completion, **record))
            except OnestopError:
                raise
            except Exception:  # a user's function on an odd completion: counted, never fatal
                value = math.nan
            if not math.isfinite(value):
                failures[reward.name] = failures.get(reward.name, 0) + 1
                value = 0.0
            values.append(value)
        per_reward[reward.name] = values
    totals = [sum(reward.weight * per_reward[reward.name][i] for reward in rewards) for i in range(len(completions))]
    return per_reward, totals, failures
