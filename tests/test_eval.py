"""The eval stage on the tiny model: local suites in-process and through a real server, W&B, compare."""

import json
import os
from pathlib import Path

import pytest
from conftest import ASSETS, TINY, TINY_DATA, compose, run_invoke
from helpers import wandb_history

from onestop.config.compose import compose as compose_config
from onestop.core.errors import OnestopError
from onestop.deploy.server import ServedModel
from onestop.evaluation.metrics import chosen_letter, rouge_l
from onestop.evaluation.run import evaluate
from onestop.evaluation.suites import read_mcq, read_qa, read_texts
from onestop.training.train import train

EVAL_ASSETS = ASSETS / "eval"


def test_mcq_layouts_read_to_the_same_questions():
    jsonl, mmlu = read_mcq(EVAL_ASSETS / "mcq.jsonl"), read_mcq(EVAL_ASSETS / "mmlu.csv")
    assert [r["answer"] for r in jsonl] == [1, 1, 2, 0]  # letter, index, A-D columns, the choice's text
    assert [r["answer"] for r in mmlu] == [1, 1, 2, 0]
    assert jsonl[2]["choices"] == ["Shark", "Trout", "Whale", "Eel"] == mmlu[2]["choices"]
    ceval = read_mcq(EVAL_ASSETS / "ceval.csv")
    assert len(ceval) == 3 and ceval[0]["choices"][1] == "水星" and ceval[2]["answer"] == 2


def test_qa_and_text_files_read_their_fields():
    rows = read_qa(EVAL_ASSETS / "qa.jsonl")
    assert rows[1] == {"prompt": "How many legs does a spider have?", "reference": "eight"}
    assert rows[2] == {"prompt": "Name the largest planet.\n\nAnswer with one word.", "reference": "Jupiter"}
    assert len(read_texts(EVAL_ASSETS / "text.txt")) == 3


def test_scores_of_generated_answers():
    assert chosen_letter("The answer is (C).", 4) == "C" and chosen_letter("I think E", 4) is None
    assert rouge_l("the cat sat", "the cat sat") == 1.0 and rouge_l("a b", "c d") == 0.0
    assert rouge_l("the cat sat on the mat", "the cat on a mat") == pytest.approx(2 * 0.8 * (4 / 6) / (0.8 + 4 / 6))


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["eval=mcq", f"eval.path={EVAL_ASSETS / 'bad_mcq.jsonl'}"], f"{EVAL_ASSETS / 'bad_mcq.jsonl'}:2: `answer`"),
        (["eval=qa", "eval.path=/nope/qa.jsonl"], "eval.path=/nope/qa.jsonl: no such file"),
        (["eval=qa"], "eval=qa: set eval.path=FILE"),
        (["run_dir=/nope"], "config key 'run_dir': /nope is not a training run (no config.yaml)"),
        (["eval=mmlu"], "eval=mcq eval.path=FILE (the MMLU/C-Eval CSV layout)"),
        (["eval=mcqq"], "eval=mcqq"),
    ],
)
def test_bad_eval_input_fails_in_one_line(tmp_path, overrides, expected):
    result = run_invoke("eval", "model=tiny", "logger=none", *overrides, f"hydra.run.dir={tmp_path / 'out'}")
    assert result.returncode == 2, result.stderr[-2000:]
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("onestop eval: error: ") and expected in last, last
    assert not (tmp_path / "out" / "results.json").exists()


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """A tiny LoRA run, logged to an offline W&B run."""
    run_dir = tmp_path_factory.mktemp("eval") / "lora"
    train(compose(*TINY, "logger=wandb", "trainer.max_steps=2", run_dir=run_dir))
    return run_dir


@pytest.fixture(scope="module")
def learned_run(tmp_path_factory):
    """A tiny full fine-tune that has memorised its training answers, so it says real words."""
    run_dir = tmp_path_factory.mktemp("eval") / "full"
    overrides = ["method=full", "optim.lr=3e-3", "trainer.max_steps=150", "trainer.max_epochs=1000"]
    train(compose(*TINY, "logger=none", "data.val_ratio=0", "scheduler.warmup_ratio=0", *overrides, run_dir=run_dir))
    return run_dir


def evaluate_cfg(*overrides: str, output: Path):
    cfg = compose_config("eval", ["model=tiny", "hardware=cpu", *overrides, f"hydra.run.dir={output}"])
    return evaluate(cfg)


def test_run_directory_scored_on_each_local_suite(trained_run, learned_run, tmp_path):
    learned = evaluate_cfg(
        f"run_dir={learned_run}", "eval=qa", f"eval.path={TINY_DATA}", "logger=none", output=tmp_path / "learned"
    )
    assert learned.metrics["qa"]["token_f1"]["value"] > 0.3, learned.samples  # it was trained on these answers
    assert learned.metrics["qa"]["exact_match"]["stderr"] is not None

    qa = evaluate_cfg(
        f"run_dir={trained_run}", "eval=qa", f"eval.path={TINY_DATA}", "logger=none", output=tmp_path / "qa"
    )
    scores = qa.metrics["qa"]
    assert set(scores) == {"exact_match", "contains", "token_f1", "rougeL", "bleu", "chrf"}

    results = json.loads((tmp_path / "qa" / "results.json").read_text())
    assert results["target"] == {
        "kind": "run",
        "run_dir": str(trained_run),
        "adapter": str(trained_run / "adapter"),
        "model": "tiny",
        "model_path": str(ASSETS / "tiny-qwen2"),
    }
    assert (
        len(results["samples"]["qa"])
        == results["n_samples"]["qa"]["effective"]
        == len(TINY_DATA.read_text().splitlines())
    )
    assert results["config"]["eval"]["path"] == str(TINY_DATA)

    mcq = evaluate_cfg(
        f"run_dir={trained_run}",
        "eval=mcq",
        f"eval.path={EVAL_ASSETS / 'mmlu.csv'}",
        "logger=none",
        output=tmp_path / "mcq",
    )
    assert 0 <= mcq.metrics["mcq"]["acc"]["value"] <= 1 and len(mcq.samples["mcq"]) == 4
    ppl = evaluate_cfg(
        f"run_dir={trained_run}",
        "eval=ppl",
        f"eval.path={EVAL_ASSETS / 'text.txt'}",
        "logger=none",
        output=tmp_path / "ppl",
    )
    assert ppl.metrics["ppl"]["byte_perplexity"]["value"] > 1


def test_scores_are_logged_into_the_training_runs_wandb_run(trained_run, tmp_path):
    evaluate_cfg(
        f"run_dir={trained_run}",
        "eval=qa",
        f"eval.path={EVAL_ASSETS / 'qa.jsonl'}",
        "logger=wandb",
        output=tmp_path / "out",
    )
    runs = sorted((trained_run / "wandb").glob("offline-run-*"))
    assert len({r.name.rsplit("-", 1)[1] for r in runs}) == 1 and len(runs) >= 2  # one W&B run id, resumed
    [eval_file] = [
        f for r in runs for f in r.glob("run-*.wandb") if any("eval/qa/exact_match" in h for h in wandb_history(f))
    ]
    assert any("eval/qa/rougeL" in h for h in wandb_history(eval_file))


def test_same_numbers_in_process_and_as_served(learned_run, tmp_path):
    suite = ["eval=qa", f"eval.path={TINY_DATA}", "logger=none", "eval.max_new_tokens=24"]
    in_process = evaluate_cfg(f"run_dir={learned_run}", *suite, output=tmp_path / "in_process")
    with ServedModel(learned_run / "model") as served:
        as_served = evaluate_cfg(
            f"endpoint={served.base_url}", f"endpoint_model={served.model_name}", *suite, output=tmp_path / "served"
        )
    answers = [str(s["response"]).strip() for s in in_process.samples["qa"]]
    assert answers == [str(s["response"]).strip() for s in as_served.samples["qa"]]
    assert sum(bool(a) for a in answers) > len(answers) // 2, answers  # real words, not empty strings
    for metric, score in in_process.metrics["qa"].items():
        assert as_served.metrics["qa"][metric]["value"] == pytest.approx(score["value"]), metric


@pytest.mark.slow
def test_compare_prints_a_table_and_saves_a_png(trained_run, tmp_path):
    for name in ("a", "b"):
        evaluate_cfg(
            f"run_dir={trained_run}",
            "eval=qa",
            f"eval.path={EVAL_ASSETS / 'qa.jsonl'}",
            "logger=none",
            output=tmp_path / name,
        )
    result = run_invoke("eval.compare", str(tmp_path / "a"), str(tmp_path / "b"), "--output", str(tmp_path / "c.png"))
    assert result.returncode == 0, result.stderr[-2000:]
    assert "qa / exact_match" in result.stdout and "qa / chrf" in result.stdout
    assert (tmp_path / "c.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    one = run_invoke("eval.compare", str(tmp_path / "a"))
    assert one.returncode == 2 and "at least two" in one.stderr


def test_periodic_evaluation_is_logged_during_training(tmp_path, monkeypatch):
    def no_fork():
        raise AssertionError("evaluation forked: a child of a process running torch threads can deadlock")

    # lm-eval bootstraps BLEU/chrF standard errors in a forked pool unless told not to.
    monkeypatch.delenv("DISABLE_MULTIPROC", raising=False)
    monkeypatch.setattr(os, "fork", no_fork)

    cfg = compose(
        *TINY,
        "logger=csv",
        "trainer.max_steps=4",
        "periodic_eval.every_n_steps=2",
        "periodic_eval.suite=qa",
        f"periodic_eval.path={EVAL_ASSETS / 'qa.jsonl'}",
        "periodic_eval.limit=2",
        run_dir=tmp_path / "run",
    )
    result = train(cfg)
    assert [h["step"] for h in result.metrics["periodic_eval"]] == [2, 4]
    header = (result.run_dir / "csv" / "metrics.csv").read_text().splitlines()[0].split(",")
    assert {"eval/qa/exact_match", "eval/qa/token_f1"} <= set(header)


def test_periodic_evaluation_rejects_an_unknown_suite(tmp_path):
    cfg = compose(
        *TINY,
        "logger=none",
        "trainer.max_steps=1",
        "periodic_eval.every_n_steps=1",
        "periodic_eval.suite=nope",
        run_dir=tmp_path / "r",
    )
    with pytest.raises(OnestopError, match="periodic_eval.suite=nope: no such suite"):
        train(cfg)


@pytest.mark.parametrize("hardware", ["fsdp_cpu", "deepspeed_zero3_cpu"])
def test_periodic_evaluation_with_sharded_weights_is_refused_before_training(tmp_path, hardware):
    cfg = compose(
        *[o for o in TINY if not o.startswith("hardware=")],
        f"hardware={hardware}",
        "logger=none",
        "periodic_eval.every_n_steps=1",
        f"periodic_eval.path={EVAL_ASSETS / 'qa.jsonl'}",
        run_dir=tmp_path / "r",
    )
    with pytest.raises(OnestopError, match="periodic_eval.every_n_steps: evaluating during training needs the whole"):
        train(cfg)
    assert not (tmp_path / "r").exists()


def test_base_model_scored_in_process(tmp_path):
    result = evaluate_cfg("eval=mcq", f"eval.path={EVAL_ASSETS / 'mcq.jsonl'}", "logger=none", output=tmp_path / "out")
    assert set(result.metrics["mcq"]) == {"acc", "acc_norm"}
    saved = json.loads((tmp_path / "out" / "results.json").read_text())
    assert saved["target"] == {"kind": "model", "model": "tiny", "model_path": str(ASSETS / "tiny-qwen2")}
    assert [s["target"] for s in sorted(saved["samples"]["mcq"], key=lambda s: s["doc_id"])] == [1, 1, 2, 0]
