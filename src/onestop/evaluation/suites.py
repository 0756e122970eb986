"""Evaluation suites as lm-evaluation-harness tasks: public benchmarks by name, and the user's own files.

Local suites need no code: `mcq` (question, choices, answer: the MMLU/C-Eval CSV layouts or JSONL),
`qa` (prompt and reference answer), `ppl` (text). Each file is read and checked here, so a bad row fails
with its file and line before any model loads; the rows then become an lm-eval `ConfigurableTask`.
"""

# Lazy imports: datasets, lm_eval (inside the functions that need them).

import csv
import json
import string
from collections.abc import Callable
from pathlib import Path

from omegaconf import DictConfig

from onestop.core.errors import OnestopError
from onestop.evaluation import metrics

LETTERS = string.ascii_uppercase

# Public suites: lm-eval task (or group) names, and the hub dataset each one downloads.
PUBLIC_SUITES: dict[str, tuple[list[str], str]] = {
    "mmlu": (["mmlu"], "cais/mmlu"),
    "cmmlu": (["cmmlu"], "haonan-li/cmmlu"),
    "ceval": (["ceval-valid"], "ceval/ceval-exam"),
    "gsm8k": (["gsm8k"], "openai/gsm8k"),
    "arc": (["arc_easy", "arc_challenge"], "allenai/ai2_arc"),
    "hellaswag": (["hellaswag"], "Rowan/hellaswag"),
}
LOCAL_KINDS = ("mcq", "qa", "ppl")
PROMPT_FIELDS = ("prompt", "question", "instruction")
REFERENCE_FIELDS = ("reference", "answer", "output", "response")


class SuiteFileError(OnestopError):
    """A row of a local suite file that cannot be used; the message names the file and line."""


def read_rows(path: Path) -> list[tuple[int, dict]]:
    """(line number, record) pairs from a .jsonl, .json or .csv file with a header row."""
    if not path.is_file():
        raise SuiteFileError(f"eval.path={path}: no such file")
    if path.suffix == ".jsonl":
        rows = []
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            try:
                rows.append((number, json.loads(line)))
            except json.JSONDecodeError as err:
                raise SuiteFileError(f"{path}:{number}: not valid JSON ({err.msg})") from None
        return rows
    if path.suffix == ".json":
        text = path.read_text(encoding="utf-8")
        if not text.strip():
            return []  # the reader says what the file should have held
        try:
            records = json.loads(text)
        except json.JSONDecodeError as err:
            raise SuiteFileError(f"{path}:{err.lineno}: not valid JSON ({err.msg})") from None
        if not isinstance(records, list):
            raise SuiteFileError(f"{path}:1: expected a JSON list of records")
        return list(enumerate(records, start=1))
    if path.suffix == ".csv":
        with path.open(newline="", encoding="utf-8") as handle:
            return [(number, row) for number, row in enumerate(csv.DictReader(handle), start=2)]
    raise SuiteFileError(f"eval.path={path}: expected a .jsonl, .json or .csv file")


def text_field(record: dict, names: tuple[str, ...], where: str) -> str:
    """The first non-empty text among the fields `names`; a row without one fails naming `where`."""
    for name in names:
        value = record.get(name)
        if isinstance(value, str) and value.strip():
            return value
    raise SuiteFileError(f"{where}: expected a non-empty text field, one of: {', '.join(names)}")


def read_qa(path: Path) -> list[dict]:
    """Rows {prompt, reference}; alpaca's instruction + input is joined like training joins it."""
    rows = []
    for number, record in read_rows(path):
        where = f"{path}:{number}"
        if not isinstance(record, dict):
            raise SuiteFileError(f"{where}: expected an object with a prompt and a reference answer")
        prompt = text_field(record, PROMPT_FIELDS, where)
        if record.get("input"):
            prompt = f"{prompt}\n\n{record['input']}"
        rows.append({"prompt": prompt, "reference": text_field(record, REFERENCE_FIELDS, where)})
    if not rows:
        raise SuiteFileError(
            f"eval.path={path}: the file holds no questions; expected records with a prompt "
            f"({', '.join(PROMPT_FIELDS)}) and a reference answer ({', '.join(REFERENCE_FIELDS)})"
        )
    return rows


def read_mcq(path: Path) -> list[dict]:
    """Rows {question, choices, answer (index)} from JSONL/JSON, or CSV in the MMLU or C-Eval layout."""
    if not path.is_file():
        raise SuiteFileError(f"eval.path={path}: no such file")
    rows = _read_mcq_csv(path) if path.suffix == ".csv" else _read_mcq_records(path)
    if not rows:
        raise SuiteFileError(
            f"eval.path={path}: the file holds no questions; expected records with question, choices and answer "
            "(or the MMLU/C-Eval CSV layout)"
        )
    return rows


def _read_mcq_records(path: Path) -> list[dict]:
    rows = []
    for number, record in read_rows(path):
        where = f"{path}:{number}"
        if not isinstance(record, dict):
            raise SuiteFileError(f"{where}: expected an object with question, choices and answer")
        choices = record.get("choices")
        if choices is None:
            choices = [record[letter] for letter in LETTERS if letter in record]
        rows.append(_mcq_row(record.get("question"), choices, record.get("answer"), where))
    return rows


def _read_mcq_csv(path: Path) -> list[dict]:
    with path.open(newline="", encoding="utf-8") as handle:
        table = list(csv.reader(handle))
    if not any(cell.strip() for cells in table for cell in cells):
        return []
    header = [cell.strip() for cell in table[0]]
    rows = []
    if "question" in header and "answer" in header:  # C-Eval: id,question,A,B,C,D,answer[,explanation]
        letters = [h for h in header if len(h) == 1 and h in LETTERS]
        for number, cells in enumerate(table[1:], start=2):
            record = dict(zip(header, cells, strict=False))
            choices = [record.get(letter, "") for letter in letters]
            rows.append(_mcq_row(record.get("question"), choices, record.get("answer"), f"{path}:{number}"))
        return rows
    for number, cells in enumerate(table, start=1):  # MMLU: question,A,B,C,D,answer with no header
        if len(cells) < 4:
            raise SuiteFileError(f"{path}:{number}: expected question, at least two choices and the answer letter")
        rows.append(_mcq_row(cells[0], cells[1:-1], cells[-1], f"{path}:{number}"))
    return rows


def _mcq_row(question, choices, answer, where: str) -> dict:
    if not isinstance(question, str) or not question.strip():
        raise SuiteFileError(f"{where}: expected a non-empty `question`")
    if not isinstance(choices, list) or len(choices) < 2 or not all(isinstance(c, str) for c in choices):
        raise SuiteFileError(f"{where}: expected `choices`, a list of at least two texts (or columns A, B, ...)")
    if isinstance(answer, bool) or answer is None:
        index = None
    elif isinstance(answer, int):
        index = answer
    elif isinstance(answer, str) and answer.strip().upper() in LETTERS[: len(choices)] and len(answer.strip()) == 1:
        index = LETTERS.index(answer.strip().upper())
    elif isinstance(answer, str) and answer in choices:
        index = choices.index(answer)
    else:
        index = None
    if index is None or not 0 <= index < len(choices):
        raise SuiteFileError(
            f"{where}: `answer` must be a letter A-{LETTERS[len(choices) - 1]}, an index, or one of the choices; "
            f"got {answer!r}"
        )
    return {"question": question, "choices": choices, "answer": index}


def read_texts(path: Path) -> list[dict]:
    """Rows {text}: a JSONL/JSON/CSV `text` field, or the paragraphs of a .txt/.md file."""
    if path.suffix in {".txt", ".md"}:
        if not path.is_file():
            raise SuiteFileError(f"eval.path={path}: no such file")
        paragraphs = [p.strip() for p in path.read_text(encoding="utf-8").split("\n\n")]
        rows = [{"text": p} for p in paragraphs if p]
    else:
        rows = [{"text": text_field(r, ("text",), f"{path}:{n}")} for n, r in read_rows(path)]
    if not rows:
        raise SuiteFileError(f"{path}:1: no text to measure")
    return rows


def mcq_prompt(doc: dict) -> str:
    lines = [doc["question"].strip(), *(f"{LETTERS[i]}. {c}" for i, c in enumerate(doc["choices"]))]
    return "\n".join(lines) + "\nAnswer:"


def _dataset(rows: list[dict]) -> Callable:
    def load(**_):
        from datasets import Dataset, DatasetDict

        return DatasetDict({"test": Dataset.from_list(rows)})

    return load


def local_task(suite: DictConfig, mode: str, stop_strings: list[str]):
    """The lm-eval task for a local suite. `mode` is `loglikelihood` or `generate` (APIs can only generate)."""
    from lm_eval.api.task import ConfigurableTask

    path = Path(suite.path).expanduser()
    common = {
        "task": f"{suite.name}",
        "test_split": "test",
        "fewshot_split": "test",  # few-shot examples are drawn from the other rows, never the row itself
        "num_fewshot": suite.num_fewshot,
        "description": suite.description or "",
        "metadata": {"version": 1, "path": str(path)},
    }
    generation = {"until": stop_strings, "max_gen_toks": suite.max_new_tokens, "do_sample": False}
    if suite.kind == "qa":
        config = {
            **common,
            "custom_dataset": _dataset(read_qa(path)),
            "output_type": "generate_until",
            "doc_to_text": lambda doc: doc["prompt"],
            "doc_to_target": lambda doc: doc["reference"],
            "target_delimiter": "",
            "fewshot_delimiter": "\n\n",
            "generation_kwargs": generation,
            "process_results": metrics.score_qa,
            "metric_list": metrics.QA_METRICS,
        }
    elif suite.kind == "mcq" and mode == "loglikelihood":
        config = {
            **common,
            "custom_dataset": _dataset(read_mcq(path)),
            "output_type": "multiple_choice",
            "doc_to_text": mcq_prompt,
            "doc_to_choice": lambda doc: list(LETTERS[: len(doc["choices"])]),
            "doc_to_target": lambda doc: doc["answer"],
            "target_delimiter": " ",
            "metric_list": [
                {"metric": "acc", "aggregation": "mean", "higher_is_better": True},
                {"metric": "acc_norm", "aggregation": "mean", "higher_is_better": True},
            ],
        }
    elif suite.kind == "mcq":
        config = {
            **common,
            "custom_dataset": _dataset(read_mcq(path)),
            "output_type": "generate_until",
            "doc_to_text": mcq_prompt,
            "doc_to_target": lambda doc: LETTERS[doc["answer"]],
            "target_delimiter": " ",
            "generation_kwargs": {**generation, "max_gen_toks": min(suite.max_new_tokens, 16)},
            "process_results": metrics.score_mcq_generation,
            "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True}],
        }
    elif suite.kind == "ppl":
        if mode != "loglikelihood":
            raise OnestopError("eval=ppl: perplexity needs token log-probabilities; evaluate in-process, not endpoint=")
        config = {
            **common,
            "custom_dataset": _dataset(read_texts(path)),
            "output_type": "loglikelihood_rolling",
            "doc_to_text": "",
            "doc_to_target": lambda doc: doc["text"],
            "num_fewshot": 0,
            "metric_list": [
                {"metric": "word_perplexity", "aggregation": "weighted_perplexity", "higher_is_better": False},
                {"metric": "byte_perplexity", "aggregation": "weighted_perplexity", "higher_is_better": False},
                {"metric": "bits_per_byte", "aggregation": "bits_per_byte", "higher_is_better": False},
            ],
        }
    else:
        raise OnestopError(f"eval.kind={suite.kind}: expected one of public, {', '.join(LOCAL_KINDS)}")
    return ConfigurableTask(config=config)
