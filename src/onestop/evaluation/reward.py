"""The `rm` suite: a reward model's pairwise accuracy on preference pairs — how often it scores the chosen answer
above the rejected one — and the mean margin between the two scores.

    invoke eval run_dir=runs/train/RM eval=rm eval.path=pairs.jsonl     a trained reward model (stage=rm)
    invoke eval model=tiny eval=rm eval.path=pairs.jsonl                the base with an untrained head: chance

FILE: preference pairs as `data=preference` reads them ({"prompt": text or messages ending with the user,
"chosen": ..., "rejected": ...}), each conversation rendered with the model's chat template as training
rendered it. A reward model scores; it never generates, so an endpoint is not a target here.
"""

from pathlib import Path

from omegaconf import DictConfig

from onestop.data.formats import preference
from onestop.data.records import Record
from onestop.evaluation.metrics import mean_with_stderr
from onestop.evaluation.suites import SuiteFileError, read_rows
from onestop.evaluation.targets import Target
from onestop.models.reward import RewardModel


def read_pairs(path: Path) -> list[dict]:
    """Rows {line, messages, chosen, rejected}; a row that is not a preference pair fails with its file and line."""
    rows = []
    for number, record in read_rows(path):
        where = f"{path}:{number}"
        if not isinstance(record, dict):
            raise SuiteFileError(f"{where}: expected an object with prompt, chosen and rejected")
        rows.append({"line": number, **preference(Record(record, where))})
    if not rows:
        raise SuiteFileError(f"{path}:1: no preference pairs to score")
    return rows


def score_pairs(scorer: RewardModel, rows: list[dict]) -> tuple[dict, list[dict]]:
    """{accuracy, margin} (each {value, stderr}) and one sample per pair: its scores and whether it ranked right.
    A tie counts as wrong: the model did not prefer the chosen answer."""
    prompts = [row["messages"] for row in rows]
    chosen = scorer.score_replies(prompts, [row["chosen"] for row in rows])
    rejected = scorer.score_replies(prompts, [row["rejected"] for row in rows])
    margins = [c - r for c, r in zip(chosen, rejected, strict=True)]
    metrics = {
        "accuracy": mean_with_stderr([float(m > 0) for m in margins]),
        "margin": mean_with_stderr(margins),
    }
    samples = [
        {
            "line": row["line"],
            "prompt": row["messages"][-1]["content"],
            "chosen_score": c,
            "rejected_score": r,
            "correct": c > r,
        }
        for row, c, r in zip(rows, chosen, rejected, strict=True)
    ]
    return metrics, samples


def load_scorer(cfg: DictConfig, target: Target, where: str) -> RewardModel:
    """The run's trained reward model, or the base model's untrained head (random, seeded with cfg.seed): the
    chance level a trained one is compared with."""
    if target.kind == "run":
        return RewardModel.load(target.identity["run_dir"], where, cfg.eval.batch_size)
    return RewardModel.untrained(cfg.model, cfg.seed, where, cfg.eval.batch_size)
