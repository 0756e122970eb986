"""Per-answer scores for lm-eval's `process_results`: the `qa` suite's metrics and lettered answers to `mcq`."""

import re

from onestop.evaluation.heldout import normalize_answer, token_f1

QA_METRICS = [
    {"metric": "exact_match", "aggregation": "mean", "higher_is_better": True},
    {"metric": "contains", "aggregation": "mean", "higher_is_better": True},
    {"metric": "token_f1", "aggregation": "mean", "higher_is_better": True},
    {"metric": "rougeL", "aggregation": "mean", "higher_is_better": True},
    # Corpus-level: lm-eval's sacrebleu aggregations take (reference, prediction) pairs.
    {"metric": "bleu", "aggregation": "bleu", "higher_is_better": True},
    {"metric": "chrf", "aggregation": "chrf", "higher_is_better": True},
]


def rouge_l(prediction: str, reference: str) -> float:
    """ROUGE-L F-measure on normalised words (so it also works for text rouge_score's tokenizer drops)."""
    pred, ref = normalize_answer(prediction).split(), normalize_answer(reference).split()
    if not pred or not ref:
        return float(pred == ref)
    previous = [0] * (len(ref) + 1)
    for word in pred:
        current = [0]
        for j, other in enumerate(ref, start=1):
            current.append(previous[j - 1] + 1 if word == other else max(previous[j], current[j - 1]))
        previous = current
    common = previous[-1]
    if not common:
        return 0.0
    precision, recall = common / len(pred), common / len(ref)
    return 2 * precision * recall / (precision + recall)


def score_qa(doc: dict, results: list[str]) -> dict:
    prediction, reference = results[0].strip(), doc["reference"]
    normal_prediction, normal_reference = normalize_answer(prediction), normalize_answer(reference)
    return {
        "exact_match": float(normal_prediction == normal_reference),
        "contains": float(bool(normal_reference) and normal_reference in normal_prediction),
        "token_f1": token_f1(prediction, reference),
        "rougeL": rouge_l(prediction, reference),
        "bleu": (reference, prediction),
        "chrf": (reference, prediction),
    }


_LETTER = re.compile(r"\b([A-Z])\b")


def chosen_letter(response: str, choices: int) -> str | None:
    """The first standalone capital letter among the choices in a generated answer ("B", "B.", "(B) ...")."""
    for match in _LETTER.finditer(response):
        if ord(match.group(1)) - ord("A") < choices:
            return match.group(1)
    return None


def score_mcq_generation(doc: dict, results: list[str]) -> dict:
    letter = chosen_letter(results[0], len(doc["choices"]))
    return {"acc": float(letter is not None and ord(letter) - ord("A") == doc["answer"])}


def mean_with_stderr(values: list[float]) -> dict[str, float | None]:
    """{"value": mean, "stderr": standard error of the mean} of per-row scores, as lm-eval reports them
    (sample standard deviation over sqrt(n); for 0/1 scores that is the binomial sqrt(p(1-p)/(n-1)))."""
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return {"value": mean, "stderr": None}
    variance = sum((v - mean) ** 2 for v in values) / (n - 1)
    return {"value": mean, "stderr": (variance / n) ** 0.5}
