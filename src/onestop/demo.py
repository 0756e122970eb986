"""The offline demo: LoRA-tune Gemma-3-270M on the demo Q&A set and compare before against after.

invoke demo                      # the full run, about 10 minutes on 2 CPU cores
invoke demo trainer.max_steps=4  # a smoke run
"""

from dataclasses import asdict
from pathlib import Path

from omegaconf import DictConfig

SAMPLES = 3
MAX_NEW_TOKENS = 48
SHOWN_CHARS = 160  # a base model rambles to MAX_NEW_TOKENS; the table shows the start, demo.json all


def evaluate(model, tokenizer, datamodule) -> dict:
    """Held-out loss plus greedy answers to every held-out question, scored against the references."""
    from onestop.evaluation.heldout import generate_answers, heldout_loss, score_answers

    prompts = [conv[:-1] for conv in datamodule.val_conversations]
    references = [conv[-1]["content"] for conv in datamodule.val_conversations]
    answers = generate_answers(model, tokenizer, prompts, max_new_tokens=MAX_NEW_TOKENS)
    return {
        "heldout_loss": heldout_loss(model, datamodule.val_dataloader()),
        **asdict(score_answers(answers, references)),
        "answers": answers,
    }


def run_demo(cfg: DictConfig) -> dict:
    """Evaluate the base model, train with `cfg`, evaluate again, print both side by side."""
    from onestop.data import SFTDataModule
    from onestop.models import load_causal_lm, load_tokenizer, resolve_model_path
    from onestop.training.export import write_json
    from onestop.training.hardware import trainer_hardware, weights_dtype
    from onestop.training.train import train

    model_path = resolve_model_path(cfg.model)
    tokenizer = load_tokenizer(cfg.model, model_path)
    datamodule = SFTDataModule(cfg.data, tokenizer, seed=cfg.seed)
    datamodule.setup()
    if not datamodule.val_conversations:
        from onestop.errors import OnestopError

        raise OnestopError("the demo compares held-out answers: set data.val_path or data.val_ratio > 0")
    print(f"Scoring the base model on {len(datamodule.val_conversations)} held-out questions...", flush=True)
    # Same weight dtype as training will use, so before and after differ only by the adapter.
    base = load_causal_lm(cfg.model, weights_dtype(trainer_hardware(cfg.hardware)["precision"]), model_path)
    before = evaluate(base, tokenizer, datamodule)
    del base

    result = train(cfg)
    print("Scoring the fine-tuned model...", flush=True)
    after = evaluate(result.model, tokenizer, result.datamodule)

    report = {"before": before, "after": after, "questions": datamodule.val_conversations}
    write_json(result.run_dir / "demo.json", report)
    print_comparison(before, after, datamodule.val_conversations, result.run_dir)
    print(f"Run directory: {result.run_dir}", flush=True)
    return report


def print_comparison(before: dict, after: dict, conversations: list[list[dict]], run_dir: Path) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=max(Console().width, 120))
    scores = Table(title="Held-out questions (paraphrases never seen in training)")
    scores.add_column("metric")
    scores.add_column("before", justify="right")
    scores.add_column("after", justify="right")
    scores.add_row("loss on answers (lower is better)", f"{before['heldout_loss']:.3f}", f"{after['heldout_loss']:.3f}")
    scores.add_row("exact-match answers", f"{before['exact_match']:.0%}", f"{after['exact_match']:.0%}")
    scores.add_row("token F1", f"{before['token_f1']:.2f}", f"{after['token_f1']:.2f}")
    console.print(scores)

    samples = Table(title=f"{SAMPLES} held-out answers, before vs after", show_lines=True)
    for column in ("question", "reference", "before", "after"):
        samples.add_column(column, overflow="fold")
    for index in range(min(SAMPLES, len(conversations))):
        conversation = conversations[index]
        samples.add_row(
            conversation[-2]["content"],
            conversation[-1]["content"],
            _clip(before["answers"][index]),
            _clip(after["answers"][index]),
        )
    console.print(samples)


def _clip(text: str) -> str:
    return text if len(text) <= SHOWN_CHARS else text[: SHOWN_CHARS - 1] + "…"
