"""What every curation step shares: its parameters checked from the config, and what it did to each record.

A step is a dataclass whose fields are its parameters (the docstring under each is its documentation);
`data.curate` lists steps by name, each with its parameters or none:
`data.curate=[repair,near_duplicates,{quality:{min_words:5}}]`.
"""

import dataclasses
import multiprocessing
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from typing import Any, ClassVar

from onestop.core.errors import OnestopError

# Examples kept per step and reason for the report: enough to see what a rule catches, not a copy of the data.
EXAMPLES_PER_REASON = 3
# Records judged per task: large enough that handing a chunk to a worker process costs little.
CHUNK = 2000

# An excerpt of a record for the report, made only when the report keeps it (most are not kept).
Excerpt = Callable[[], dict]


class StepConfigError(ValueError):
    """A step parameter with a wrong value: `key` is the parameter, `expected` what it should be."""

    def __init__(self, key: str, expected: str):
        super().__init__(f"{key}: {expected}")
        self.key, self.expected = key, expected


@dataclass
class Context:
    """What a step may compare records with: the sources' names and the evaluation sets' prompts."""

    sources: list[str]
    eval_sets: dict[str, list[str]] = field(default_factory=dict)
    processes: int = 1
    """Worker processes for steps that judge each record alone (data.num_proc: several from 20,000 records)."""


@dataclass
class Tally:
    """What one step did: per source kept / removed / changed / flagged, per reason, and a few examples."""

    step: str
    params: dict
    sources: dict[str, dict[str, int]] = field(default_factory=dict)
    reasons: dict[str, int] = field(default_factory=dict)
    examples: list[dict] = field(default_factory=list)

    def count(self, source: str, outcome: str, reason: str = "", excerpt: Excerpt | dict | None = None) -> None:
        """Count one record of `source` as kept, removed, changed or flagged (with its reason and an excerpt)."""
        counts = self.sources.setdefault(source, {"kept": 0, "removed": 0, "changed": 0, "flagged": 0})
        counts[outcome] += 1
        if outcome == "kept":
            return
        label = f"{outcome}: {reason}"
        self.reasons[label] = self.reasons.get(label, 0) + 1
        if excerpt is not None and self.reasons[label] <= EXAMPLES_PER_REASON:
            made = excerpt() if callable(excerpt) else excerpt
            self.examples.append({"source": source, "outcome": outcome, "reason": reason, **made})


# (the changed example, or None when it is unchanged or removed; kept, removed, changed or flagged; the reason;
# the report's excerpt, made where the record was judged, for the first few of each reason in a chunk only)
Judgement = tuple[dict | None, str, str, dict | None]


class Step:
    """One curation step. Record steps implement `apply`; steps that compare records override `run`."""

    name: ClassVar[str]

    def apply(self, example: dict) -> tuple[dict | None, str, Excerpt | None]:
        """(the example, possibly changed, or None when removed; the reason; an excerpt for the report).

        The same example with a reason is flagged, not changed."""
        raise NotImplementedError

    def run(self, per_source: list[list[dict]], context: Context, tally: Tally) -> list[list[dict]]:
        """The examples of each source this step keeps, each counted in `tally`."""
        result = []
        for source, examples in zip(context.sources, per_source, strict=True):
            kept = []
            for example, (new, outcome, reason, excerpt) in zip(
                examples, self.judge_all(examples, context.processes), strict=True
            ):
                tally.count(source, outcome, reason, excerpt)
                if outcome != "removed":
                    kept.append(example if new is None else new)
            result.append(kept)
        return result

    def judge_all(self, examples: list[dict], processes: int = 1) -> Iterator[Judgement]:
        """`apply` on each example, in order: in `processes` worker processes when more than one."""
        chunks = [examples[start : start + CHUNK] for start in range(0, len(examples), CHUNK)]
        for judgements in in_chunks(self, _judged, chunks, processes):
            yield from judgements

    def fingerprint(self) -> list[str]:
        """What besides the parameters decides this step's result (library versions, files' contents)."""
        return []


def in_chunks(step: Step, work: Callable[[Step, list], list], chunks: list[list], processes: int) -> Iterator[list]:
    """`work(step, chunk)` for each chunk, in order: in `processes` worker processes when more than one, each
    given the step once, at most two chunks per process in flight (the data waiting is not copied whole)."""
    if processes <= 1 or len(chunks) <= 1:
        for chunk in chunks:
            yield work(step, chunk)
        return
    # spawn, not fork: the parent may hold torch's and the tokenizer's threads, which a fork would copy mid-use
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(processes, mp_context=context, initializer=_keep_step, initargs=(step,)) as pool:
        pending = deque()
        for chunk in chunks:
            pending.append(pool.submit(_work_in_worker, work, chunk))
            if len(pending) >= 2 * processes:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def _judged(step: Step, examples: list[dict]) -> list[Judgement]:
    judgements, shown = [], {}
    for example in examples:
        new, reason, excerpt = step.apply(example)
        outcome = "removed" if new is None else "kept" if not reason else "flagged" if new is example else "changed"
        if excerpt is not None:
            shown[reason] = shown.get(reason, 0) + 1
            excerpt = excerpt() if shown[reason] <= EXAMPLES_PER_REASON else None
        judgements.append((None if new is example else new, outcome, reason, excerpt))
    return judgements


_worker_step: Step | None = None  # the step a worker process received once, at its start


def _keep_step(step: Step) -> None:
    global _worker_step
    _worker_step = step


def _work_in_worker(work: Callable[[Step, list], list], chunk: list) -> list:
    return work(_worker_step, chunk)


def parse_steps(entries: Any, registry: dict[str, type[Step]], key: str = "data.curate") -> list[Step]:
    """The steps `data.curate` lists, in order; a wrong entry raises one line naming its config key."""
    if entries is None:
        return []
    if not isinstance(entries, list | tuple):
        raise OnestopError(f"config key '{key}': expected a list of steps, e.g. [repair,quality], got {entries!r}")
    steps = []
    for index, entry in enumerate(entries):
        where = f"{key}[{index}]"
        if isinstance(entry, str):
            name, params = entry, {}
        elif isinstance(entry, dict) and len(entry) == 1:
            name, params = next(iter(entry.items()))
            params = {} if params is None else params
        else:
            raise OnestopError(f"config key '{where}': expected a step name or {{name: {{key: value}}}}, got {entry!r}")
        if name not in registry:
            raise OnestopError(f"config key '{where}': unknown step {name!r}; expected one of {', '.join(registry)}")
        if not isinstance(params, dict):
            raise OnestopError(f"config key '{where}.{name}': expected a mapping of parameters, got {params!r}")
        steps.append(_build(registry[name], params, f"{where}.{name}"))
    return steps


def _build(cls: type[Step], params: dict, where: str) -> Step:
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(params) - set(fields))
    if unknown:
        raise OnestopError(f"config key '{where}.{unknown[0]}': unknown parameter; expected one of {', '.join(fields)}")
    for name, spec in fields.items():
        if name in params:
            _check_type(params[name], spec, f"{where}.{name}")
        elif spec.default is dataclasses.MISSING and spec.default_factory is dataclasses.MISSING:
            raise OnestopError(f"config key '{where}.{name}': required; {_doc_hint(cls, name)}")
    try:
        return cls(**params)
    except StepConfigError as err:
        raise OnestopError(f"config key '{where}.{err.key}': {err.expected}") from None


def _check_type(value: Any, spec: dataclasses.Field, key: str) -> None:
    expected = {bool: "bool", int: "int", float: "float", str: "str"}.get(spec.type, str(spec.type))
    ok = {
        "bool": isinstance(value, bool),
        "int": isinstance(value, int) and not isinstance(value, bool),
        "float": isinstance(value, int | float) and not isinstance(value, bool),
        "str": isinstance(value, str),
        "str | None": value is None or isinstance(value, str),
        "list[str]": isinstance(value, list | tuple) and all(isinstance(v, str) for v in value),
        "dict[str, str]": isinstance(value, dict) and all(isinstance(v, str) for v in value.values()),
    }.get(expected, True)
    if not ok:
        raise OnestopError(f"config key '{key}': expected {expected}, got {value!r}")


def _doc_hint(cls: type, name: str) -> str:
    return {"languages": "expected a list of ISO 639-1 codes, e.g. [en,zh]"}.get(name, f"set {name}")
