"""Choosing between models: the classify suite's reading and scoring, several models in one command, ranking."""

import json
from pathlib import Path

import pytest
from conftest import ASSETS, TINY, compose, run_invoke
from omegaconf import OmegaConf

from onestop.cli import several_targets
from onestop.core.errors import OnestopError
from onestop.evaluation.classify import UNPARSED, chat_prompt, read_labelled, reply_label, resolve_labels, score_labels
from onestop.evaluation.report import compare
from onestop.training.train import train

SUITE = ASSETS / "eval" / "classify_small.jsonl"
LABELS = ["negative", "neutral", "positive"]
QUESTION = "The package arrived.\n\nAnswer with one of: negative, neutral, positive."


@pytest.mark.parametrize(
    ("reply", "label"),
    [
        ("Positive.", "positive"),  # the reply is a label, after normalisation
        ("The answer: NEGATIVE!", "negative"),  # the one label it names
        ("It is neutral, I think", "neutral"),
        ("pos", UNPARSED),
        ("", UNPARSED),
        ("Positive, not negative", UNPARSED),  # several labels: no guessing which one is meant
        ("negative, neutral or positive", UNPARSED),  # the label list echoed would otherwise earn `negative`
        ("The package arrived.\n\nAnswer with one of: negative,", UNPARSED),  # the question repeated, cut short
        ("The package arrived. Answer with one of: negative, neutral, positive. Neutral.", "neutral"),
    ],
)
def test_a_reply_is_read_as_the_one_label_it_names(reply, label):
    assert reply_label(reply, LABELS, QUESTION) == label


def test_a_label_inside_a_longer_one_is_not_named_by_it():
    labels = ["spam", "not spam"]
    assert reply_label("This is not spam", labels) == "not spam"
    assert reply_label("spam!", labels) == "spam"
    assert reply_label("spam, or not spam", labels) == UNPARSED


def test_scores_are_counted_per_class_as_by_hand():
    expected = ["a", "a", "b", "b", "c", "c"]
    predicted = ["a", "b", "b", UNPARSED, "a", "c"]
    scores = score_labels(expected, predicted, ["a", "b", "c", "d"])
    # a: 1 hit of 2 read as a, 1 of 2 rows; b: 1 of 2, 1 of 2; c: 1 of 1, 1 of 2; d: never used
    assert scores.confusion == [[1, 1, 0, 0, 0], [0, 1, 0, 0, 1], [1, 0, 1, 0, 0], [0, 0, 0, 0, 0]]
    assert scores.columns == ["a", "b", "c", "d", UNPARSED]
    values = {label: {m: v["value"] for m, v in metrics.items()} for label, metrics in scores.per_class.items()}
    assert values["a"] == {"precision": 0.5, "recall": 0.5, "f1": 0.5, "support": 2}
    assert values["c"] == {"precision": 1.0, "recall": 0.5, "f1": pytest.approx(2 / 3), "support": 2}
    assert values["d"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    overall = scores.overall
    assert overall["accuracy"]["value"] == pytest.approx(3 / 6)
    assert overall["accuracy"]["stderr"] == pytest.approx((0.5 * 0.5 * 6 / 5 / 6) ** 0.5)
    # macro: over a, b and c (d is in no row and no reply)
    assert overall["macro_precision"]["value"] == pytest.approx((0.5 + 0.5 + 1.0) / 3)
    assert overall["macro_recall"]["value"] == pytest.approx(0.5)
    assert overall["macro_f1"]["value"] == pytest.approx((0.5 + 0.5 + 2 / 3) / 3)
    assert overall["unparsed"]["value"] == 1


def test_a_label_no_row_has_counts_once_the_model_answers_it():
    scores = score_labels(["a", "a"], ["a", "b"], ["a", "b"])  # b: read once, wrongly; no row has it
    assert scores.overall["macro_precision"]["value"] == pytest.approx((1.0 + 0.0) / 2)
    assert scores.overall["macro_recall"]["value"] == pytest.approx((0.5 + 0.0) / 2)


def test_labels_come_from_the_file_or_the_config(tmp_path):
    rows = read_labelled(SUITE)
    assert len(rows) == 12 and rows[2] == {"line": 3, "text": "The package arrived on Tuesday.", "label": "neutral"}
    labels, _ = resolve_labels(rows, [], SUITE)
    assert labels == LABELS
    listed, spelt = resolve_labels([{"line": 1, "text": "x", "label": "Positive"}], ["positive", "negative"], SUITE)
    assert listed == ["positive", "negative"] and spelt[0]["label"] == "positive"
    expected = rf"{SUITE}:3: label 'neutral' is not one of eval.labels \(negative, positive\)"
    with pytest.raises(OnestopError, match=expected):
        resolve_labels(rows, ["negative", "positive"], SUITE)
    with pytest.raises(OnestopError, match="eval.labels: labels 'Yes' and 'yes!' read the same"):
        resolve_labels(rows, ["Yes", "yes!"], SUITE)

    alpaca = tmp_path / "rows.csv"
    alpaca.write_text("instruction,input,output\nClassify the review.,Great!,1\nClassify the review.,,0\n")
    assert [(r["text"], r["label"]) for r in read_labelled(alpaca)] == [
        ("Classify the review.\n\nGreat!", "1"),
        ("Classify the review.", "0"),
    ]
    unlabelled = tmp_path / "bad.jsonl"
    unlabelled.write_text('{"text": "fine", "label": "ok"}\n{"text": "no label"}\n')
    with pytest.raises(OnestopError, match=rf"{unlabelled}:2: expected a label, in one of the fields: label, answer"):
        read_labelled(unlabelled)


def test_the_prompt_lists_the_labels_after_the_text():
    suite = OmegaConf.create({"description": None, "system_prompt": "Be brief.", "label_prompt": "One of: {labels}."})
    assert chat_prompt("Nice.", ["bad", "good"], suite) == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Nice.\n\nOne of: bad, good."},
    ]


def test_several_targets_are_split_from_the_overrides():
    assert several_targets(["model=tiny", "eval=qa"]) is None
    assert several_targets(["eval=qa", "model=a,b", "logger=none"]) == ("model", ["a", "b"], ["eval=qa", "logger=none"])
    assert several_targets(["run_dir=runs/x,runs/y"]) == ("run_dir", ["runs/x", "runs/y"], [])
    assert several_targets(["eval.tasks=[a,b]", "model=tiny"]) is None  # a list, not several targets
    with pytest.raises(OnestopError, match="list several targets under one key"):
        several_targets(["model=a,b", "run_dir=x,y"])
    with pytest.raises(OnestopError, match="model=a,,b: an empty name between commas"):
        several_targets(["model=a,,b"])


def _results(folder: Path, metrics: dict[str, float], parameters: int | None = None) -> Path:
    folder.mkdir(parents=True)
    scores = {"classify": {name: {"value": value, "stderr": None} for name, value in metrics.items()}}
    facts = {"option": folder.name, "path": None, "parameters": parameters}
    (folder / "results.json").write_text(json.dumps({"metrics": scores, "model_facts": facts}))
    return folder


def test_compare_ranks_best_first_and_shows_model_facts(tmp_path, capsys):
    small = _results(tmp_path / "small", {"accuracy": 0.5, "macro_f1": 0.4, "unparsed": 1}, 1_500_000)
    large = _results(tmp_path / "large", {"accuracy": 0.75, "macro_f1": 0.3, "unparsed": 3}, 2_000_000_000)
    compare([str(small), str(large)], str(tmp_path / "a.png"))
    table = capsys.readouterr().out
    assert table.index("1. large") < table.index("2. small")  # the first metric by default: accuracy
    assert "classify / accuracy *" in table and "2.0B" in table and "1.5M" in table
    assert (tmp_path / "a.png").read_bytes()[:4] == b"\x89PNG"

    compare([str(small), str(large)], str(tmp_path / "b.png"), rank_by="classify/macro_f1")
    assert capsys.readouterr().out.index("1. small") > 0
    compare([str(large), str(small)], str(tmp_path / "c.png"), rank_by="unparsed")  # fewer is better
    table = capsys.readouterr().out
    assert table.index("1. small") < table.index("2. large") and "lower is better" in table
    with pytest.raises(OnestopError, match="--rank-by f1: not a metric the results share; choose one of: classify/"):
        compare([str(small), str(large)], rank_by="f1")


@pytest.mark.slow
def test_classify_suite_end_to_end_on_the_tiny_model(tmp_path):
    out = tmp_path / "out"
    result = run_invoke(
        "eval", "model=tiny", "hardware=cpu", "logger=none", "eval=classify", f"eval.path={SUITE}",
        f"hydra.run.dir={out}",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    saved = json.loads((out / "results.json").read_text())
    assert set(saved["metrics"]) == {"classify", *(f"classify/{label}" for label in LABELS)}
    assert set(saved["metrics"]["classify"]) == {"accuracy", "macro_precision", "macro_recall", "macro_f1", "unparsed"}
    assert set(saved["metrics"]["classify/neutral"]) == {"precision", "recall", "f1", "support"}
    assert saved["metrics"]["classify/neutral"]["support"]["value"] == 4
    facts = saved["model_facts"]
    assert {k: facts[k] for k in ("option", "path", "parameters")} == {
        "option": "tiny",
        "path": str(ASSETS / "tiny-qwen2"),
        "parameters": 139840,
    }
    assert 0.5 < facts["serving_gib"] < 0.6  # bf16 weights and KV cache of a tiny model, plus a GPU's overhead
    assert sum(map(sum, saved["confusion"]["counts"])) == len(saved["samples"]["classify"]) == 12
    assert (out / "confusion.png").read_bytes()[:4] == b"\x89PNG"
    assert "classify/positive" in result.stdout and f"Confusion matrix: {out / 'confusion.png'}" in result.stdout


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    """Two tiny LoRA runs of one step, with different ranks: two candidates that load in seconds."""
    root = tmp_path_factory.mktemp("candidates")
    for rank in (4, 8):
        train(compose(*TINY, "logger=none", "trainer.max_steps=1", f"method.r={rank}", run_dir=root / f"r{rank}"))
    return root / "r4", root / "r8"


@pytest.mark.slow
def test_several_runs_are_scored_and_ranked_in_one_command(two_runs, tmp_path):
    out = tmp_path / "pick"
    runs = ",".join(str(run) for run in two_runs)
    result = run_invoke(
        "eval", f"run_dir={runs}", "hardware=cpu", "logger=none", "eval=classify", f"eval.path={SUITE}",
        "eval.limit=4", f"hydra.run.dir={out}",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    facts = [json.loads((out / name / "results.json").read_text())["model_facts"] for name in ("r4", "r8")]
    assert [f["path"] for f in facts] == [str(run) for run in two_runs]
    assert facts[0]["parameters"] < facts[1]["parameters"]  # the rank-8 adapter is bigger
    assert (out / "r4" / "confusion.png").is_file() and (out / "compare.png").is_file()
    assert "Evaluation results side by side" in result.stdout and "classify / accuracy *" in result.stdout


def test_a_misspelt_candidate_fails_before_any_model_loads(tmp_path):
    overrides = ["logger=none", "eval=classify", f"eval.path={SUITE}", f"hydra.run.dir={tmp_path}"]
    result = run_invoke("eval", "model=tiny,tiny_typo", *overrides)
    assert result.returncode == 2 and "model=tiny_typo: unknown option" in result.stderr.strip().splitlines()[-1]
    assert not list(tmp_path.rglob("results.json"))
