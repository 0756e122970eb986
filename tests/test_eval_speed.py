"""Faster evaluation, same answers: batched generation equals one prompt at a time, each row stops where its
answer ends and a batch with its last row, lm-eval's suites get the same answers as from its stock `hf` model,
and worker processes score like one process."""

import json
from pathlib import Path

import pytest
import torch

from onestop.bench.eval import bench_eval
from onestop.config.compose import compose as compose_config
from onestop.core.errors import OnestopError
from onestop.evaluation.generation import end_of_turn, generate_greedy, in_process_lm, length_order
from onestop.evaluation.run import evaluate
from onestop.models import load_causal_lm, load_tokenizer

EVAL_ASSETS = Path(__file__).parent / "assets" / "eval"
NEW_TOKENS = 10


@pytest.fixture(scope="module")
def lively(tmp_path_factory):
    """The tiny model with its weights redrawn larger (seeded): its greedy answers differ from prompt to prompt,
    so rows stop at different lengths. Saved too, for worker processes to load as model.path."""
    cfg = compose_config("eval", ["model=tiny"])
    tokenizer, model = load_tokenizer(cfg.model), load_causal_lm(cfg.model, "float32")
    torch.manual_seed(0)
    with torch.no_grad():
        for weight in model.parameters():
            if weight.dim() == 2:
                weight.normal_(0, 0.3)
    path = tmp_path_factory.mktemp("lively")
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    texts = [json.loads(line)["text"] for line in (EVAL_ASSETS / "classify_small.jsonl").read_text().splitlines()]
    prompts = [
        tokenizer.apply_chat_template([{"role": "user", "content": t}], tokenize=False, add_generation_prompt=True)
        for t in texts[:6]
    ]
    one_by_one = [
        generate_greedy(model, tokenizer, [p], max_new_tokens=NEW_TOKENS, batch_size=1, stop_ids=[])[0] for p in prompts
    ]
    return model, tokenizer, path, prompts, one_by_one


def count_forwards(model) -> list[int]:
    calls = [0]

    def hook(*_):
        calls[0] += 1

    model.register_forward_hook(hook)
    return calls


def test_batched_generation_stops_each_row_and_gives_the_one_by_one_answers(lively):
    model, tokenizer, _, prompts, one_by_one = lively
    # a token the rows first produce at different positions: rows of one batch stop at different steps
    firsts = {t: {row.index(t) for row in one_by_one if t in row} for row in one_by_one for t in row}
    stop = max(sorted(firsts), key=lambda t: len(firsts[t]))
    assert len(firsts[stop]) > 1
    expected = [row[: row.index(stop) + 1] if stop in row else row for row in one_by_one]

    calls = count_forwards(model)
    batched = generate_greedy(model, tokenizer, prompts, max_new_tokens=NEW_TOKENS, batch_size=4, stop_ids=[stop])

    assert batched == expected
    lengths = [len(ids) for ids in tokenizer(prompts, add_special_tokens=False)["input_ids"]]
    order = length_order(lengths, prompts)
    batches = [order[:4], order[4:]]
    assert calls[0] == sum(max(len(expected[i]) for i in batch) for batch in batches)  # one step per longest row


def test_lm_eval_requests_get_the_stock_answers_and_stop_at_stop_strings(lively):
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    model, tokenizer, _, prompts, one_by_one = lively
    texts = [tokenizer.decode(row, skip_special_tokens=True) for row in one_by_one]
    # two stop strings that several answers contain: rows of one batch meet different ones
    pieces = sorted({p for row in one_by_one for t in row if (p := tokenizer.decode([t])).strip().isalpha()})
    first, *others = sorted(pieces, key=lambda p: -sum(p in text for text in texts))
    stops = [first, next(p for p in others if p not in first and first not in p)]
    assert all(sum(stop in text for text in texts) > 1 for stop in stops)
    kwargs = {"until": stops, "max_gen_toks": NEW_TOKENS, "do_sample": False}
    requests = [Instance("generate_until", {}, (p, kwargs), i) for i, p in enumerate(prompts)]

    stock_calls = count_forwards(model)
    stock = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=4).generate_until(requests)
    calls = count_forwards(model)
    ours = in_process_lm(model, tokenizer, 4, end_of_turn(tokenizer)).generate_until(requests)

    cut = [min((text.split(stop)[0] for stop in stops), key=len) for text in texts]
    assert ours == stock == cut
    assert calls[0] < stock_calls[0] - calls[0]  # (the first hook counted both runs) fewer steps than stock


@pytest.mark.slow  # two worker processes start and load the model, twice
def test_two_workers_give_the_scores_and_answers_of_one(lively, tmp_path):
    path = lively[2]
    common = ["model=tiny", f"model.path={path}", "hardware=cpu", "logger=none", f"eval.max_new_tokens={NEW_TOKENS}"]
    suites = {
        "qa": ["eval=qa", f"eval.path={EVAL_ASSETS / 'qa.jsonl'}", "eval.batch_size=2"],
        "classify": ["eval=classify", f"eval.path={EVAL_ASSETS / 'classify_small.jsonl'}", "eval.batch_size=4"],
    }
    for name, suite in suites.items():
        one, two = (
            evaluate(
                compose_config(
                    "eval", [*common, *suite, f"eval.workers={n}", f"hydra.run.dir={tmp_path / name / str(n)}"]
                )
            )
            for n in (1, 2)
        )
        assert two.metrics == one.metrics
        assert two.samples == one.samples
        facts = json.loads((two.output_dir / "results.json").read_text())["model_facts"]
        assert facts["parameters"] == sum(p.numel() for p in lively[0].parameters())


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["eval.workers=0"], "eval.workers=0: expected 1 or more"),
        (["eval.concurrency=4"], "eval.concurrency=4: requests in flight to an endpoint; in-process, use eval.workers"),
        (
            ["eval.workers=2", "endpoint=http://127.0.0.1:9/v1", "endpoint_model=m"],
            "eval.workers=2: an endpoint is scaled with eval.concurrency",
        ),
    ],
)
def test_scale_out_keys_fail_in_one_line_before_a_model_loads(overrides, expected, tmp_path):
    cfg = compose_config(
        "eval", ["model=tiny", "logger=none", "eval=qa", f"eval.path={EVAL_ASSETS / 'qa.jsonl'}", *overrides]
    )
    with pytest.raises(OnestopError, match=expected.replace(".", r"\.")):
        evaluate(cfg)


@pytest.mark.slow  # worker processes and a deployment
def test_eval_benchmark_at_its_smallest(tmp_path):
    report = bench_eval(["tiny"], 2, [1, 2], [1, 2], str(tmp_path))
    assert [row["way"] for row in report["generation"]] == ["lm-eval hf", "onestop"]
    assert all(row["same answers"] for row in report["generation"])
    assert [row["workers"] for row in report["workers"]] == [1, 2] and all(r["same scores"] for r in report["workers"])
    assert [row["concurrency"] for row in report["endpoint"]] == [1, 2]
    assert all(row["same scores"] for row in report["endpoint"])
    assert json.loads((tmp_path / "results.json").read_text()) == report
