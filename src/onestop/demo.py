"""The offline demo: LoRA-tune Gemma-3-270M on the demo Q&A set and compare before against after.

invoke demo                      # the full run, about 11 minutes on 2 CPU cores
invoke demo trainer.max_steps=4  # a smoke run

Before and after are measured by the eval stage (lm-evaluation-harness on the held-out questions, the
same as `invoke eval run_dir=RUN eval=demo`), plus the loss on the held-out answers.
"""

import copy

from omegaconf import DictConfig
from rich.console import Console
from rich.table import Table

from onestop.core.errors import OnestopError
from onestop.core.rundir import RunDir, results_file
from onestop.data.sft import SFTDataModule
from onestop.deploy.service import ask_served
from onestop.evaluation.generation import end_of_turn, in_process_lm
from onestop.evaluation.heldout import heldout_loss, heldout_questions
from onestop.evaluation.run import eval_config, evaluate, suite_config
from onestop.models import load_causal_lm, load_tokenizer, resolve_model_path
from onestop.models.precision import weights_dtype
from onestop.training.hardware import trainer_hardware
from onestop.training.train import train

SAMPLES = 3
SHOWN_CHARS = 160  # a base model rambles to max_new_tokens; the table shows the start, results.json all
HEADLINE = ("exact_match", "token_f1", "contains", "rougeL", "chrf")


def run_demo(cfg: DictConfig) -> dict:
    """Evaluate the base model, train with `cfg`, evaluate the run, print both side by side."""
    run = RunDir(cfg.paths.run_dir)
    # Before minutes of scoring the base model: a directory that holds a run refuses now. Claimed once here,
    # so training (told not to overwrite again) keeps the base model's scores written below.
    with run.locked():
        run.claim(cfg.get("resume"), bool(cfg.get("overwrite")))
    cfg = copy.deepcopy(cfg)
    cfg.overwrite = False
    model_path = resolve_model_path(cfg.model)
    tokenizer = load_tokenizer(cfg.model, model_path)
    datamodule = SFTDataModule(cfg.data, tokenizer, seed=cfg.seed)
    datamodule.setup()
    if not datamodule.val_conversations:
        raise OnestopError("the demo compares held-out answers: set data.val_path or data.val_ratio > 0")
    questions = run.eval_dir / "heldout_questions.jsonl"
    system_prompt = heldout_questions(datamodule.val_conversations, questions)
    suite = suite_config("demo", path=str(questions), system_prompt=system_prompt)
    common = {"model": cfg.model, "hardware": cfg.hardware, "logger": cfg.logger, "seed": cfg.seed}

    print(f"Scoring the base model on {len(datamodule.val_conversations)} held-out questions...", flush=True)
    # Same weight dtype as training, so before and after differ only by the adapter.
    base = load_causal_lm(cfg.model, weights_dtype(trainer_hardware(cfg.hardware)["precision"]), model_path)
    before_loss = heldout_loss(base, datamodule.val_dataloader())
    before_cfg = eval_config(suite, output_dir=str(run.eval_dir / "base"), **common)
    before = evaluate(before_cfg, lm=in_process_lm(base, tokenizer, suite.batch_size, end_of_turn(tokenizer)))
    del base

    result = train(cfg)
    print("Scoring the fine-tuned run...", flush=True)
    after_loss = heldout_loss(result.model, result.datamodule.val_dataloader())
    after_cfg = eval_config(suite, run_dir=str(result.run_dir), output_dir=str(run.eval_dir / "run"), **common)
    after = evaluate(after_cfg)

    report = {
        "before": {"heldout_loss": before_loss, **before.flat()},
        "after": {"heldout_loss": after_loss, **after.flat()},
        "results": {"before": str(results_file(before.output_dir)), "after": str(results_file(after.output_dir))},
    }
    result.run.write_demo_report(report)
    print_comparison(report, before, after)
    print(f"Compare any two evaluations: invoke eval.compare {before.output_dir} {after.output_dir}")

    question = datamodule.val_conversations[0][-2]["content"]
    print("Serving the fine-tuned model (invoke deploy) and asking it through the openai SDK...", flush=True)
    base_url, answer = ask_served(result.run_dir, question, cfg.model)
    report["served"] = {"base_url": base_url, "question": question, "answer": answer}
    result.run.write_demo_report(report)
    print(f"Q: {question}\nA ({base_url}): {answer}")
    print(f"Serve it yourself: invoke deploy run_dir={result.run_dir}   then: invoke chat")
    print(f"Run directory: {result.run_dir}", flush=True)
    return report


def print_comparison(report: dict, before, after) -> None:
    console = Console(width=max(Console().width, 120))
    scores = Table(title="Held-out questions (paraphrases never seen in training)")
    scores.add_column("metric")
    scores.add_column("before", justify="right")
    scores.add_column("after", justify="right")
    loss_before, loss_after = report["before"]["heldout_loss"], report["after"]["heldout_loss"]
    scores.add_row("loss on answers (lower is better)", f"{loss_before:.3f}", f"{loss_after:.3f}")
    for metric in HEADLINE:
        key = f"demo/{metric}"
        if key in report["before"] and key in report["after"]:
            shown = "{:.0%}" if metric in {"exact_match", "contains"} else "{:.2f}"
            scores.add_row(metric, shown.format(report["before"][key]), shown.format(report["after"][key]))
    console.print(scores)

    samples = Table(title=f"{SAMPLES} held-out answers, before vs after", show_lines=True)
    for column in ("question", "reference", "before", "after"):
        samples.add_column(column, overflow="fold")
    pairs = zip(before.samples.get("demo", []), after.samples.get("demo", []), strict=False)
    for index, (old, new) in enumerate(sorted(pairs, key=lambda pair: pair[0]["doc_id"])):
        if index == SAMPLES:
            break
        samples.add_row(old["doc"]["prompt"], old["target"], _clip(old["response"]), _clip(new["response"]))
    console.print(samples)


def _clip(text) -> str:
    text = str(text).strip()
    return text if len(text) <= SHOWN_CHARS else text[: SHOWN_CHARS - 1] + "…"
