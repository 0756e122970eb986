"""Evaluation speed: generation that ends each answer where it ends, worker processes, concurrent requests.

invoke bench.eval                                    # tiny and gemma3_270m on the demo's held-out questions
invoke bench.eval --models tiny --rows 8 --workers 1,2 --concurrency 1,4,8

Three tables, each with a check that the faster way gives the same answers or scores:

- generation: the demo's before-training evaluation (its held-out questions, its system prompt, greedy answers
  through lm-eval) run by lm-eval's stock `hf` model and by onestop's (`in_process_lm`);
- workers: `invoke eval model=M eval=qa eval.path=<held-out questions> eval.workers=N`, model loading included;
- endpoint: the same suite against a tiny deployment with `eval.concurrency=C` requests in flight.
"""

# Lazy imports: lm_eval (inside the functions that need them).

import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from onestop.config.compose import compose
from onestop.core.files import write_json
from onestop.core.rundir import read_results
from onestop.data.sft import SFTDataModule
from onestop.deploy.service import serving
from onestop.evaluation.generation import end_of_turn, in_process_lm
from onestop.evaluation.heldout import heldout_questions
from onestop.evaluation.run import eval_config, evaluate, suite_config
from onestop.models import load_causal_lm, load_tokenizer, resolve_model_path
from onestop.models.precision import weights_dtype
from onestop.training.hardware import trainer_hardware


def bench_eval(
    models: list[str], rows: int | None, workers: list[int], concurrency: list[int], output: str | None
) -> dict:
    """Time each way of evaluating on the first `rows` held-out questions (all with None); write results.json."""
    out = Path(output or f"runs/bench/eval/{time.strftime('%Y-%m-%d_%H-%M-%S')}").absolute()
    questions, system_prompt = demo_questions(out)
    report: dict = {"rows": rows, "generation": [], "workers": [], "endpoint": []}
    for model in models:
        report["generation"] += generation_rows(model, questions, system_prompt, rows, out / "generation" / model)
        report["workers"] += worker_rows(model, questions, system_prompt, rows, workers, out / "workers" / model)
    if concurrency:
        report["endpoint"] = endpoint_rows(questions, system_prompt, rows, concurrency, out / "endpoint")
    write_json(out / "results.json", report)
    for key, title in (
        ("generation", "The demo's before-training answers: lm-eval's stock hf model vs onestop's"),
        ("workers", "In-process eval=qa by worker processes (model loading included)"),
        ("endpoint", "eval=qa against a tiny deployment by requests in flight"),
    ):
        if report[key]:
            print_table(report[key], title)
    print(f"Results: {out / 'results.json'}", flush=True)
    return report


def demo_questions(out: Path) -> tuple[Path, str | None]:
    """The demo's held-out questions as a qa file, and the system prompt the demo asks them with."""
    cfg = compose("train", ["recipe=gemma3_270m_lora_demo", "logger=none"])
    tokenizer = load_tokenizer(cfg.model, resolve_model_path(cfg.model))
    datamodule = SFTDataModule(cfg.data, tokenizer, seed=cfg.seed)
    datamodule.setup()
    path = out / "heldout_questions.jsonl"
    return path, heldout_questions(datamodule.val_conversations, path)


def generation_rows(model: str, questions: Path, system_prompt: str | None, rows: int | None, out: Path) -> list:
    """The demo's before phase twice on the same loaded model: lm-eval's `hf` model, then onestop's."""
    from lm_eval.models.huggingface import HFLM

    cfg = compose("train", ["recipe=gemma3_270m_lora_demo", f"model={model}", "logger=none"])
    suite = suite_config("demo", path=str(questions), system_prompt=system_prompt, limit=rows)
    tokenizer = load_tokenizer(cfg.model, resolve_model_path(cfg.model))
    weights = load_causal_lm(cfg.model, weights_dtype(trainer_hardware(cfg.hardware)["precision"]))
    common = {"model": cfg.model, "hardware": cfg.hardware, "logger": None, "seed": cfg.seed}
    ways = {
        "lm-eval hf": lambda: HFLM(pretrained=weights, tokenizer=tokenizer, batch_size=suite.batch_size),
        "onestop": lambda: in_process_lm(weights, tokenizer, suite.batch_size, end_of_turn(tokenizer)),
    }
    table, answers, steps = [], {}, [0]
    weights.register_forward_hook(lambda *_: steps.__setitem__(0, steps[0] + 1))  # one call per generated token
    for way, build in ways.items():
        steps[0] = 0
        started, cpu = time.perf_counter(), time.process_time()
        result = evaluate(
            eval_config(suite, output_dir=str(out / way.replace(" ", "-")), **common), lm=build(), quiet=True
        )
        seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
        answers[way] = [s["response"] for s in sorted(result.samples["demo"], key=lambda s: s["doc_id"])]
        table.append(
            {"model": model, "way": way, "questions": len(answers[way]), "forward passes": steps[0]}
            | {
                "seconds": round(seconds, 1),
                "cpu seconds": round(cpu, 1),
                "exact_match": result.flat()["demo/exact_match"],
            }
        )
    for row in table:
        row["same answers"] = answers[row["way"]] == answers["lm-eval hf"]
        row["speed-up"] = round(table[0]["seconds"] / row["seconds"], 2)
    return table


def worker_rows(
    model: str, questions: Path, system_prompt: str | None, rows: int | None, workers: list[int], out: Path
) -> list:
    """`invoke eval eval=qa` on the held-out questions with each number of worker processes."""
    table, first = [], None
    for count in workers:
        overrides = [*qa_overrides(questions, rows), f"model={model}", f"eval.workers={count}"]
        result, seconds = timed_eval([*overrides, f"hydra.run.dir={out / str(count)}"], system_prompt)
        first = first or (result, seconds)
        table.append(
            {"model": model, "workers": count, "seconds": round(seconds, 1)}
            | {"speed-up": round(first[1] / seconds, 2), "same scores": result.flat() == first[0].flat()}
        )
    return table


def endpoint_rows(questions: Path, system_prompt: str | None, rows: int | None, levels: list[int], out: Path) -> list:
    """eval=qa against `invoke deploy model=tiny` with each number of requests in flight."""
    table, first = [], None
    with serving(compose("deploy", ["model=tiny", "deploy=transformers", "port=0", "name=bench-eval"])) as served:
        for count in levels:
            overrides = [*qa_overrides(questions, rows), "model=tiny", f"eval.concurrency={count}"]
            target = [f"endpoint={served.base_url}", f"endpoint_model={served.name}"]
            result, seconds = timed_eval([*overrides, *target, f"hydra.run.dir={out / str(count)}"], system_prompt)
            first = first or (result, seconds)
            table.append(
                {"concurrency": count, "seconds": round(seconds, 1), "speed-up": round(first[1] / seconds, 2)}
                | {"same scores": result.flat() == first[0].flat()}
            )
    return table


def qa_overrides(questions: Path, rows: int | None) -> list[str]:
    """The demo suite's settings as `invoke eval eval=qa` keys."""
    overrides = ["eval=qa", f"eval.path={questions}", "eval.max_new_tokens=48", "logger=none"]
    return overrides + ([f"eval.limit={rows}"] if rows else [])


def timed_eval(overrides: list[str], system_prompt: str | None):
    """The evaluation and its wall time as results.json records it (model loading and workers included)."""
    cfg = compose("eval", overrides)
    cfg.eval.system_prompt = system_prompt  # set here: a prompt's punctuation needs no override quoting
    result = evaluate(cfg)
    seconds = read_results(result.output_dir)["seconds"]
    return result, seconds


def print_table(rows: list[dict], title: str) -> None:
    table = Table(title=title)
    for column in rows[0]:
        table.add_column(column, justify="left" if column in {"model", "way"} else "right")
    for row in rows:
        table.add_row(*(f"{v:.2f}" if isinstance(v, float) and k == "exact_match" else str(v) for k, v in row.items()))
    Console(width=120).print(table)
