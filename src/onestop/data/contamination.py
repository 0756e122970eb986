"""Contamination check: word n-grams shared between the training data and the evaluation sets in use.

An evaluation question that appears (n consecutive words or more) in the training data measures recall,
not skill. The check compares the training examples' full text against each evaluation sample's prompt
(its user turns; the whole text for raw-text samples): answers may legitimately be shared, as in a
paraphrase held-out set, questions may not.
"""

import re

from omegaconf import DictConfig

from onestop.data.records import read_records

_WORD = re.compile(r"\w+")


def ngrams(text: str, n: int) -> set[tuple[str, ...]]:
    words = _WORD.findall(text.lower())
    return {tuple(words[i : i + n]) for i in range(len(words) - n + 1)}


def example_text(example: dict) -> str:
    if "text" in example:
        return example["text"]
    parts = [m.get("content") or "" for m in example.get("messages", [])]
    return "\n".join(parts + [example.get("chosen", ""), example.get("rejected", "")])


def prompt_text(example: dict) -> str:
    if "text" in example:
        return example["text"]
    return "\n".join(m.get("content") or "" for m in example.get("messages", []) if m["role"] == "user")


def contamination_report(train: list[dict], validation: list[dict], data_cfg: DictConfig) -> dict:
    """Per evaluation set: samples checked and how many share an n-gram with the training data."""
    settings = data_cfg.contamination
    if not settings.enabled:
        return {}
    n = settings.ngram
    eval_sets = {"validation": [prompt_text(e) for e in validation]}
    for path in settings.eval_paths:
        eval_sets[str(path)] = eval_texts(path)
    # The evaluation prompts' n-grams are held and the training text streams past them: memory follows the
    # evaluation sets, not the training corpus (a million training rows hold about a hundred million n-grams).
    owners: dict[tuple[str, ...], list[tuple[str, int]]] = {}
    for name, texts in eval_sets.items():
        for index, text in enumerate(texts):
            for gram in ngrams(text, n):
                owners.setdefault(gram, []).append((name, index))
    contaminated: dict[str, set[int]] = {name: set() for name in eval_sets}
    if owners:
        for example in train:
            words = _WORD.findall(example_text(example).lower())
            for start in range(len(words) - n + 1):
                for name, index in owners.get(tuple(words[start : start + n]), ()):
                    contaminated[name].add(index)
    report = {"ngram": n}
    for name, texts in eval_sets.items():
        report[name] = {"samples": len(texts), "contaminated": len(contaminated[name])}
    return report


def eval_texts(path: str) -> list[str]:
    """Prompts of an evaluation file in any layout: a question/prompt/instruction field, else all strings."""
    texts = []
    for record in read_records(path):
        fields = record.fields
        for key in ("question", "prompt", "instruction", "input", "text"):
            if isinstance(fields.get(key), str) and fields[key].strip():
                texts.append(fields[key])
                break
        else:
            texts.append(" ".join(str(v) for v in fields.values() if isinstance(v, str)))
    return texts
