"""The `classify` suite: each text's greedy reply read as one of a few labels, scored overall and per class.

    invoke eval model=qwen eval=classify eval.path=reviews.jsonl
    invoke eval model=tiny,gemma3_270m eval=classify eval.path=tests/assets/eval/classify_small.jsonl

FILE: JSONL/JSON/CSV rows with a text (`text`, `prompt`, `question`, alpaca's `instruction` + `input`, or `input`)
and its label (`label`, `answer` or `output`). The labels are `eval.labels`, or those in the file, sorted. Each
text goes to the model as a chat prompt with `eval.label_prompt` after it, and the reply is read as a label by
`reply_label`. Accuracy, precision and recall need the whole set of replies, not a mean of per-row scores, so
this suite is scored here rather than through lm-eval (run.py generates the replies).
"""

from dataclasses import dataclass
from pathlib import Path

from onestop.core.errors import OnestopError
from onestop.evaluation.heldout import normalize_answer
from onestop.evaluation.metrics import mean_with_stderr
from onestop.evaluation.suites import PROMPT_FIELDS, SuiteFileError, read_rows, text_field

TEXT_FIELDS = ("text", *PROMPT_FIELDS, "input")
LABEL_FIELDS = ("label", "answer", "output")
UNPARSED = "(none)"
"""What a reply that names no label is read as: a column of the confusion matrix, and always wrong."""


def read_labelled(path: Path) -> list[dict]:
    """Rows {line, text, label}; a row without a text or a label fails with its file and line."""
    rows = []
    for number, record in read_rows(path):
        where = f"{path}:{number}"
        if not isinstance(record, dict):
            raise SuiteFileError(f"{where}: expected an object with a text and its label")
        text = text_field(record, TEXT_FIELDS, where)
        if record.get("input") and text != record["input"]:  # alpaca: joined as training joins it
            text = f"{text}\n\n{record['input']}"
        rows.append({"line": number, "text": text, "label": _label(record, where)})
    if not rows:
        raise SuiteFileError(f"{path}:1: no rows to classify")
    return rows


def _label(record: dict, where: str) -> str:
    for name in LABEL_FIELDS:
        value = record.get(name)
        if isinstance(value, int) and not isinstance(value, bool):  # 0/1 labels in JSON are numbers
            return str(value)
        if isinstance(value, str) and value.strip():
            return value.strip()
    raise SuiteFileError(f"{where}: expected a label, in one of the fields: {', '.join(LABEL_FIELDS)}")


def resolve_labels(rows: list[dict], configured: list[str], path: Path) -> tuple[list[str], list[dict]]:
    """The labels (`configured`, else the file's, sorted) and the rows with each label spelt as listed.

    A row's label matches a listed one after normalisation ("Positive" is `positive`); two labels that read the
    same, or a row whose label is not listed, fail before any model loads.
    """
    source = "eval.labels" if configured else str(path)
    labels = [str(label).strip() for label in configured] or sorted({row["label"] for row in rows})
    spelt: dict[str, str] = {}
    for label in labels:
        normal = _normal(label)
        if not normal:
            raise OnestopError(f"{source}: label {label!r} has no letters or digits for a reply to name")
        if normal in spelt:
            raise OnestopError(
                f"{source}: labels {spelt[normal]!r} and {label!r} read the same in a reply; keep one spelling"
            )
        spelt[normal] = label
    canonical = []
    for row in rows:
        label = spelt.get(_normal(row["label"]))
        if label is None:
            listed = ", ".join(labels)
            raise SuiteFileError(f"{path}:{row['line']}: label {row['label']!r} is not one of eval.labels ({listed})")
        canonical.append({**row, "label": label})
    return labels, canonical


def chat_prompt(text: str, labels: list[str], suite) -> list[dict]:
    """The messages a row is sent as: the system prompt, then the text between the suite's description and its
    label prompt (whose `{labels}` lists the labels)."""
    parts = [suite.description, text, (suite.label_prompt or "").replace("{labels}", ", ".join(labels))]
    messages = [{"role": "user", "content": "\n\n".join(p for p in parts if p)}]
    return [{"role": "system", "content": suite.system_prompt}, *messages] if suite.system_prompt else messages


def reply_label(reply: str, labels: list[str], question: str = "") -> str:
    """The label a reply names, compared after `normalize_answer`, else UNPARSED.

    The reply itself when it is a label; else the one label it names, after any repeat of the `question` it
    opens with. A reply that only repeats the question, or that names several labels, names none: a base model
    echoing "negative, neutral or positive" would otherwise earn the label listed first. A label inside a
    longer one (`spam` in `not spam`) is not named by it.
    """
    said = _normal(reply)
    normal = {label: _normal(label) for label in labels}
    for label, words in normal.items():
        if said == words:
            return label
    asked = _normal(question)
    if asked.startswith(said):
        return UNPARSED
    if asked and said.startswith(asked):
        said = said[len(asked) :].strip()
    spans = [(at, at + len(words), label) for label, words in normal.items() for at in _positions(said, words)]
    named = {name for a, b, name in spans if not any(c <= a and b <= d and d - c > b - a for c, d, _ in spans)}
    return named.pop() if len(named) == 1 else UNPARSED


def _normal(text: str) -> str:
    # whitespace first: normalize_answer drops a sentence's full stop only before a space, not a newline
    return normalize_answer(" ".join(text.split()))


def _positions(text: str, words: str) -> list[int]:
    """Where `words` starts in `text` as whole words."""
    found, padded, at = [], f" {text} ", 0
    while (at := padded.find(f" {words} ", at)) >= 0:
        found.append(at)
        at += 1
    return found


@dataclass
class LabelScores:
    overall: dict[str, dict[str, float | None]]
    """accuracy (with its standard error), macro_precision, macro_recall, macro_f1, unparsed (a count)."""
    per_class: dict[str, dict[str, dict[str, float | None]]]
    """{label: {precision, recall, f1, support}} for every label, in the labels' order."""
    columns: list[str]
    """The confusion matrix's columns: the labels, then UNPARSED."""
    confusion: list[list[int]]
    """Counts, one row per expected label (in the labels' order), one column per entry of `columns`."""


def score_labels(expected: list[str], predicted: list[str], labels: list[str]) -> LabelScores:
    """Scores of `predicted` (labels or UNPARSED) against `expected`, as scikit-learn counts them.

    A class's precision is 0 when nothing was read as it, its recall 0 when no row has it. The macro averages
    are means over the labels that some row has or some reply was read as (scikit-learn's default set), so a
    listed label that neither the file nor the model uses does not pull them down; an unparsed reply lowers
    its row's recall only.
    """
    columns = [*labels, UNPARSED]
    confusion = [[0] * len(columns) for _ in labels]
    for want, got in zip(expected, predicted, strict=True):
        confusion[labels.index(want)][columns.index(got)] += 1
    per_class, used = {}, []
    for index, label in enumerate(labels):
        hits = confusion[index][index]
        support = sum(confusion[index])
        read_as = sum(row[index] for row in confusion)
        precision = hits / read_as if read_as else 0.0
        recall = hits / support if support else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        per_class[label] = {
            name: {"value": float(value), "stderr": None}
            for name, value in (("precision", precision), ("recall", recall), ("f1", f1), ("support", support))
        }
        if support or read_as:
            used.append(label)

    def macro(name: str) -> dict[str, float | None]:
        return {"value": sum(per_class[label][name]["value"] for label in used) / len(used), "stderr": None}

    overall = {
        "accuracy": mean_with_stderr([float(want == got) for want, got in zip(expected, predicted, strict=True)]),
        "macro_precision": macro("precision"),
        "macro_recall": macro("recall"),
        "macro_f1": macro("f1"),
        "unparsed": {"value": float(predicted.count(UNPARSED)), "stderr": None},
    }
    return LabelScores(overall, per_class, columns, confusion)
