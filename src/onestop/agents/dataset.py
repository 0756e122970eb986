"""The tool-use demo dataset: a Northwind Labs knowledge base and short conversations that call the real tools.

    .venv/bin/python -m onestop.agents.dataset   # rewrites src/onestop/agents/demo/ (the same bytes every time)

Every tool message holds what the real tool returns for the call's arguments (the calculator, unit converter
and BM25 search are run here; `current_datetime` is rendered by `format_datetime` at a fixed moment per record,
so the files do not change with the clock). Arguments are canonical, each derivable from its question, so a
fine-tuned model's calls can be scored by exact match: the held-out split uses question templates and values
the training split never shows.

What it says is data beside this file, read when the dataset is written: dataset_source/kb.yaml (the knowledge
base) and dataset_source/prompts.yaml (the question templates, the answers that need no tool, the agent tasks).
"""

import functools
import json
import random
import textwrap
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import yaml

from onestop.agents.builtin import calculator, convert_units, current_datetime, format_datetime, search_documents
from onestop.agents.tools import tool_from_function
from onestop.core.files import write_text_atomic

DEMO_DIR = Path(__file__).parent / "demo"
SEED = 0
SPLITS = ("train", "heldout")
# Records per split and kind: about 20% need no tool, the rest are spread over the four tools.
COUNTS = {
    "train": {"calculator": 56, "search_documents": 56, "convert_units": 44, "current_datetime": 36},
    "heldout": {"calculator": 16, "search_documents": 16, "convert_units": 12, "current_datetime": 12},
}
HELDOUT_SHARE = 5  # one number in five is kept for the held-out split
PERCENTS = (5, 10, 12, 15, 20, 25, 30, 40, 60, 75)  # the percentages a calculator question takes
CAPITAL_RECORDS = {"train": 12, "heldout": 3}  # countries asked about per split

# --- the knowledge base -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Fact:
    """One paragraph of the knowledge base and the one-sentence answer that states it."""

    topic: str
    """The search query: a lower-case phrase whose words all appear in `text` and rarely elsewhere."""
    text: str
    answer: str
    """The answer without its citation, which comes from the search result (`file:line`)."""
    key: str
    """A short string an agent's final answer must contain (`agent_tasks.jsonl`)."""


@dataclass(frozen=True)
class Document:
    name: str
    title: str
    intro: str
    facts: tuple[Fact, ...]

    def markdown(self) -> str:
        paragraphs = [f"# {self.title}", self.intro, *(fact.text for fact in self.facts)]
        return "\n\n".join(paragraphs) + "\n"

    def line_of(self, fact: Fact) -> int:
        """1-based line of a fact: title, blank, intro, blank, then one fact every second line."""
        return 5 + 2 * self.facts.index(fact)


SOURCE_DIR = Path(__file__).parent / "dataset_source"
"""The data the generator reads: kb.yaml, the knowledge base; prompts.yaml, every question template and answer."""


@functools.cache
def knowledge_base() -> tuple[Document, ...]:
    """The documents of dataset_source/kb.yaml, each with its facts."""
    documents = yaml.safe_load((SOURCE_DIR / "kb.yaml").read_text())
    return tuple(
        Document(d["name"], d["title"], d["intro"], tuple(Fact(**fact) for fact in d["facts"])) for d in documents
    )


@functools.cache
def prompts() -> dict:
    """dataset_source/prompts.yaml: the question templates per tool and split, the answers that need no tool, the
    countries and cities asked about, the units, and the agent tasks."""
    return yaml.safe_load((SOURCE_DIR / "prompts.yaml").read_text())


def unit_fits() -> dict[str, list[tuple[str, str]]]:
    """Which unit pairs a template's wording fits: "counted" reads "how many", which a temperature is not; a board
    is not miles long."""
    pairs = {kind: [tuple(pair) for pair in listed] for kind, listed in prompts()["convert_units"]["pairs"].items()}
    return {
        "any": [pair for listed in pairs.values() for pair in listed],
        "counted": [*pairs["length"], *pairs["mass"]],
        "running": [("km", "mi"), ("mi", "km")],
        "board": [("m", "ft"), ("ft", "m"), ("cm", "in"), ("in", "cm")],
        "mass": list(pairs["mass"]),
        "temperature": list(pairs["temperature"]),
    }


# --- building records --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Example:
    """One prompt and what the assistant does: a call (name, arguments) with its real result, or a direct reply."""

    question: str
    answer: str
    call: tuple[str, dict] | None = None
    result: str | None = None


def write_dataset(out_dir: Path) -> dict[str, Counter]:
    """Write the knowledge base, both splits, the evaluation suite, the agent tasks and the README.

    Args:
        out_dir: The folder to fill (the package's `demo/` for the committed copy); files are replaced whole.

    Returns:
        Records per kind (a tool name, or "none") for each split.

    Raises:
        AssertionError: A search does not find the paragraph its question is about first, or a held-out
            question or call repeats a training one: the knowledge base or the templates need changing.
        ValueError: The templates and values cannot make as many distinct questions as `COUNTS` asks.
    """
    rng = random.Random(SEED)
    kb_dir = out_dir / "kb"
    for stale in sorted(kb_dir.glob("*.md")):
        if stale.name not in {document.name for document in knowledge_base()}:
            stale.unlink()
    for document in knowledge_base():
        write_text_atomic(kb_dir / document.name, document.markdown())
    search = functools.partial(search_documents, folder=str(kb_dir))
    tools = [tool_from_function(tool).openai_schema() for tool in (calculator, current_datetime, search, convert_units)]

    pools = value_pools(rng)
    facts = [fact for document in knowledge_base() for fact in document.facts]
    rng.shuffle(facts)
    held_facts = COUNTS["heldout"]["search_documents"]
    fact_split = {"heldout": facts[:held_facts], "train": facts[held_facts:]}
    examples = {}
    for split in SPLITS:
        counts = COUNTS[split]
        examples[split] = [
            *calculator_examples(split, counts["calculator"], pools, rng),
            *search_examples(split, fact_split[split], counts["search_documents"], search),
            *unit_examples(split, counts["convert_units"], pools, rng),
            *datetime_examples(split, counts["current_datetime"], rng),
            *no_tool_examples(split, rng),
        ]
        rng.shuffle(examples[split])
    check_splits(examples)

    write_jsonl(out_dir / "tools_train.jsonl", [conversation(example, tools) for example in examples["train"]])
    write_jsonl(out_dir / "tools_heldout.jsonl", [conversation(example, tools) for example in examples["heldout"]])
    write_jsonl(out_dir / "tools_eval.jsonl", [eval_prompt(example, tools) for example in examples["heldout"]])
    write_jsonl(out_dir / "agent_tasks.jsonl", agent_tasks(search))
    counts = {
        split: Counter(example.call[0] if example.call else "none" for example in examples[split]) for split in SPLITS
    }
    write_text_atomic(out_dir / "README.md", readme(counts, fact_split["heldout"]))
    return counts


def value_pools(rng: random.Random) -> dict[str, dict[str, list]]:
    """Numbers for each split, disjoint where a value carries the question, so held-out values are new."""

    def partition(values) -> dict[str, list]:
        shuffled = list(values)
        rng.shuffle(shuffled)
        cut = len(shuffled) // HELDOUT_SHARE
        return {"heldout": sorted(shuffled[:cut]), "train": sorted(shuffled[cut:])}

    shared_divisors = list(range(2, 13))  # too few to split; the dividend around them is new
    return {
        "two_digit": partition(range(11, 100)),
        "three_digit": partition(range(100, 1000)),
        "percent_of": partition(range(40, 1000, 20)),
        "divisor": {"train": shared_divisors, "heldout": shared_divisors},
        "amount": partition([*range(2, 121), *(x + 0.5 for x in range(1, 31))]),
        "C": partition(range(-20, 46)),
        "F": partition(range(0, 111)),
    }


def distinct_examples(count: int, templates: tuple, make: Callable[[tuple], Example]) -> list[Example]:
    """`count` examples with distinct questions, the templates taking turns.

    A template whose question came up already passes its turn on (one without a slot, such as "What time is
    it?", can be asked only once).
    """
    examples, seen = [], set()
    for attempt in range(100 * count):
        if len(examples) == count:
            break
        example = make(templates[attempt % len(templates)])
        if example.question not in seen:
            seen.add(example.question)
            examples.append(example)
    if len(examples) < count:
        raise ValueError(f"only {len(examples)} distinct questions of {count}: add templates or values")
    return examples


def calculator_examples(split: str, count: int, pools: dict, rng: random.Random) -> list[Example]:
    """Arithmetic questions; the operands a template needs are drawn from the split's own numbers."""

    def make(template: tuple[str, str, str]) -> Example:
        question, expression, answer = template
        values = calculator_values(expression, split, pools, rng)
        arguments = {"expression": expression.format(**values)}
        result = calculator(**arguments)
        return Example(
            question.format(**values), answer.format(**values, result=result), ("calculator", arguments), result
        )

    return distinct_examples(count, prompts()["calculator"][split], make)


def calculator_values(expression: str, split: str, pools: dict, rng: random.Random) -> dict[str, int]:
    def draw(pool: str) -> int:
        return rng.choice(pools[pool][split])

    if "{p}" in expression:
        return {"p": rng.choice(PERCENTS), "n": draw("percent_of")}
    if expression == "{a} / {b}":  # a whole quotient: a dividend built from a divisor
        b = draw("divisor")
        return {"a": b * draw("two_digit"), "b": b}
    if "{c}" in expression:
        a, b = sorted((draw("two_digit"), draw("two_digit")), reverse=True)  # a - b stays positive
        return {"a": a, "b": b, "c": draw("divisor") if "/ {c}" in expression else draw("two_digit")}
    if "*" in expression:
        return {"a": draw("two_digit"), "b": draw("two_digit")}
    a, b = sorted((draw("three_digit"), draw("three_digit")), reverse=True)
    return {"a": a, "b": b}


def search_examples(split: str, facts: list[Fact], count: int, search: Callable[..., str]) -> list[Example]:
    """Questions about one fact each; the query is the fact's topic and the answer cites the best passage."""
    templates = prompts()["search_documents"][split]
    examples = []
    for i in range(count):
        # (fact, template) pairs stay distinct while count < lcm(len(facts), len(templates))
        fact, template = facts[i % len(facts)], templates[i % len(templates)]
        arguments = {"query": fact.topic}
        result = search(**arguments)
        best = result.split("\n\n")[0]
        citation, text = best.split(": ", 1)
        document = next(document for document in knowledge_base() if fact in document.facts)
        assert citation == f"{document.name}:{document.line_of(fact)}" and text == fact.text, (
            f"searching {fact.topic!r} finds {best!r} first, not {document.name}:{document.line_of(fact)}"
        )
        answer = f"{fact.answer} ({citation})."
        examples.append(Example(template.format(topic=fact.topic), answer, ("search_documents", arguments), result))
    return examples


def unit_examples(split: str, count: int, pools: dict, rng: random.Random) -> list[Example]:
    """Conversion questions; the pair fits the template's wording, the value comes from the split's numbers."""

    def make(template: tuple[str, str]) -> Example:
        question, fits = template
        src, dst = rng.choice(unit_fits()[fits])
        names = prompts()["convert_units"]["names"]
        value = rng.choice(pools[src if src in ("C", "F") else "amount"][split])
        words = {"v": value, "src": names[src], "dst": names[dst], "src_abbr": src, "dst_abbr": dst}
        arguments = {"value": value, "from_unit": src, "to_unit": dst}
        result = convert_units(**arguments)
        given, converted = result.split(" = ")
        return Example(question.format(**words), f"{given} is {converted}.", ("convert_units", arguments), result)

    return distinct_examples(count, prompts()["convert_units"]["templates"][split], make)


def datetime_examples(split: str, count: int, rng: random.Random) -> list[Example]:
    """Time and date questions, each answered from its own fixed moment in 2025."""

    def make(template: tuple[str, str]) -> Example:
        question, kind = template
        cities = prompts()["current_datetime"]["cities"]
        city = rng.choice(sorted(cities)) if "{city}" in question else None
        timezone = cities[city] if city else "UTC"
        moment = datetime(2025, 1, 1, tzinfo=UTC) + timedelta(minutes=rng.randrange(365 * 24 * 60))
        local = moment.astimezone(ZoneInfo(timezone))
        day, date = f"{local:%A}", f"{local:%A}, {local.day} {local:%B %Y}"
        answer = {
            "time": f"It is {local:%H:%M} on {day} in {city}.",
            "date": f"It is {date} in {city}.",
            "utc_time": f"It is {local:%H:%M} UTC on {day}.",
            "utc_date": f"Today is {date} (UTC).",
        }[kind]
        arguments = {"timezone": timezone}
        result = format_datetime(moment, timezone)
        return Example(question.format(city=city), answer, ("current_datetime", arguments), result)

    return distinct_examples(count, prompts()["current_datetime"]["templates"][split], make)


def no_tool_examples(split: str, rng: random.Random) -> list[Example]:
    """Greetings, thanks, what the assistant can do, and general knowledge it answers without a tool."""
    examples = [Example(question, answer) for question, answer in prompts()["no_tool"][split]]
    capitals = prompts()["capitals"]
    countries = sorted(capitals["countries"])
    rng.shuffle(countries)
    held = CAPITAL_RECORDS["heldout"]
    countries = countries[:held] if split == "heldout" else countries[held : held + CAPITAL_RECORDS["train"]]
    templates = capitals["templates"][split]
    for i, country in enumerate(countries):
        question = templates[i % len(templates)].format(country=country)
        examples.append(Example(question, f"The capital of {country} is {capitals['countries'][country]}."))
    return examples


def check_splits(examples: dict[str, list[Example]]) -> None:
    """Held-out questions and calls (other than a city's time zone, which must be known) are new."""
    train_questions = {example.question for example in examples["train"]}
    train_calls = {json.dumps(example.call, sort_keys=True) for example in examples["train"] if example.call}
    for example in examples["heldout"]:
        assert example.question not in train_questions, f"held-out question in training: {example.question!r}"
        if example.call and example.call[0] != "current_datetime":
            assert json.dumps(example.call, sort_keys=True) not in train_calls, f"held-out call in training: {example}"


def conversation(example: Example, tools: list[dict]) -> dict:
    """A record in the OpenAI `messages` shape: the question, the call and its result if any, the answer."""
    messages = [{"role": "user", "content": example.question}]
    if example.call:
        name, arguments = example.call
        call = {"id": "call_1", "type": "function", "function": {"name": name, "arguments": arguments}}
        messages.append({"role": "assistant", "content": "", "tool_calls": [call]})
        messages.append({"role": "tool", "tool_call_id": "call_1", "content": example.result})
    messages.append({"role": "assistant", "content": example.answer})
    return {"messages": messages, "tools": tools}


def eval_prompt(example: Example, tools: list[dict]) -> dict:
    """The question alone, with the call a model should make first (None: answer without a tool)."""
    expected = {"name": example.call[0], "arguments": example.call[1]} if example.call else None
    return {"messages": [{"role": "user", "content": example.question}], "tools": tools, "expected": expected}


def agent_tasks(search: Callable[..., str]) -> list[dict]:
    """One-call tasks whose answer string is read from the real tool result (or the fact searched for)."""
    facts = {fact.topic: fact for document in knowledge_base() for fact in document.facts}
    tasks = []
    for task, name, arguments in prompts()["agent_tasks"]:
        if name == "calculator":
            answer = calculator(**arguments)
        elif name == "convert_units":
            answer = convert_units(**arguments).split(" = ")[1].split(" ")[0]
        else:
            fact = facts[arguments]
            # an agent words its own query; the task's own words must find the fact as well as its topic does
            assert fact.text in search(query=task).split("\n\n")[0], f"{task!r} does not find {fact.topic!r} first"
            answer = fact.key
        tasks.append({"task": task, "answer": answer, "tools": [name]})
    return tasks


def readme(counts: dict[str, Counter], held_facts: list[Fact]) -> str:
    """The folder's README: what each file is, the counts per tool and split, what is held out."""
    kinds = ("calculator", "search_documents", "convert_units", "current_datetime", "none")
    rows = [f"| {kind} | {counts['train'][kind]} | {counts['heldout'][kind]} |" for kind in kinds]
    rows.append(f"| total | {sum(counts['train'].values())} | {sum(counts['heldout'].values())} |")
    held_out = textwrap.fill(
        "Held out: every question template, the operands and unit values (drawn from numbers training never "
        "uses), the countries asked about, and these knowledge-base facts: "
        f"{', '.join(sorted(fact.topic for fact in held_facts))}. Cities repeat, since a model must know their "
        "time zones.",
        width=110,
    )
    rows_text = "\n".join(rows)
    documents, tasks = len(knowledge_base()), len(prompts()["agent_tasks"])
    return f"""# Tool-use demo data

Generated by `python -m onestop.agents.dataset` (seed {SEED}; edit its facts and question templates in
`src/onestop/agents/dataset_source/` and its logic in `src/onestop/agents/dataset.py`, never these files): a rerun
rewrites them byte for byte, and `tests/test_tool_dataset.py` checks that they match it.

- `kb/`: the Northwind Labs knowledge base, {documents} Markdown files, one fact a paragraph, for `search_documents`.
- `tools_train.jsonl`, `tools_heldout.jsonl`: conversations in the OpenAI `messages` shape, each with the same
  `tools` list (calculator, current_datetime, search_documents, convert_units). A tool message holds what the
  real tool returns; a time is rendered at a fixed moment per record.
- `tools_eval.jsonl`: the held-out questions alone, with the `expected` first call (`null`: answer without a tool).
- `agent_tasks.jsonl`: {tasks} one-call tasks for an agent loop, with a string the final answer must contain.

| records | train | held-out |
|---|---|---|
{rows_text}

{held_out}
"""


def write_jsonl(path: Path, records: list[dict]) -> None:
    write_text_atomic(path, "".join(json.dumps(record, ensure_ascii=False) + "\n" for record in records))


def main() -> None:
    counts = write_dataset(DEMO_DIR)
    for split in SPLITS:
        shown = ", ".join(f"{kind} {n}" for kind, n in sorted(counts[split].items()))
        print(f"{split}: {sum(counts[split].values())} records ({shown})")
    print(f"wrote {DEMO_DIR}")


if __name__ == "__main__":
    main()
