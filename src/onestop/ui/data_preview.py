"""Data (`/data`): a dataset file as the model sees it, rendered with its chat template, the tokens that carry
loss highlighted, with the validation report of `invoke data.prepare`.

The same code as training reads, converts and tokenizes the file (onestop.data); nothing is cached or written.
"""

import shlex
from dataclasses import asdict
from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse

from onestop.config.compose import compose
from onestop.config.groups import list_group_options
from onestop.core.errors import OnestopError
from onestop.data.prepare import DataReport, load_examples, prepare, sources_of
from onestop.data.tokenize import IGNORE_INDEX, tokenize_example
from onestop.models import load_tokenizer, resolve_model_path
from onestop.ui.pages import COMPOSE_LOCK, render, safe_path

router = APIRouter()

DEFAULT_SHOWN = 5
MAX_SHOWN = 50
_tokenizers: dict[str, object] = {}  # model option -> its tokenizer: loading one takes seconds


@router.get("/data", response_class=HTMLResponse)
def data_page(
    request: Request, path: str = "", model: str = "tiny", data: str = "alpaca", limit: int = DEFAULT_SHOWN
) -> HTMLResponse:
    context = {
        "path": path,
        "model": model,
        "data": data,
        "limit": limit,
        "models": list_group_options("model"),
        "formats": list_group_options("data"),
        "examples": [],
        "report": None,
        "error": "",
    }
    commands = []
    if path:
        overrides = [f"model={model}", f"data={data}", f"data.path={path}"]
        commands = ["invoke data.prepare " + shlex.join(overrides)]
        try:
            file = safe_path(request, path)
            if not file.is_file():
                raise OnestopError(f"data.path={path}: no such file")
            context |= preview(overrides[:2] + [f"data.path={file}"], min(max(limit, 1), MAX_SHOWN))
        except OnestopError as error:
            context["error"] = str(error)
    return render(request, "data.html", title="Data", active="data", commands=commands, **context)


def preview(overrides: list[str], limit: int) -> dict:
    """The first `limit` examples tokenized as training tokenizes them, and the report of the whole file."""
    with COMPOSE_LOCK:
        cfg = compose("train", [*overrides, "data.cache=false"])
    tokenizer = _tokenizer(cfg)
    examples = []
    for source in load_examples(sources_of(cfg.data), cfg.data, DataReport()):
        examples += source[: limit - len(examples)]
    shown = [_rendered(tokenizer, example, cfg.data.max_seq_len) for example in examples]
    report = prepare(cfg.data, tokenizer, seed=cfg.seed, use_cache=False).report
    return {"examples": shown, "report": _report_rows(report), "max_seq_len": cfg.data.max_seq_len}


def _tokenizer(cfg):
    key = str(cfg.model.name)
    if key not in _tokenizers:
        _tokenizers[key] = load_tokenizer(cfg.model, resolve_model_path(cfg.model))
    return _tokenizers[key]


def _rendered(tokenizer, example: dict, max_seq_len: int) -> dict:
    """An example as spans of text, each marked whether its tokens carry loss; a preference pair as two."""
    tokenized = tokenize_example(tokenizer, example, max_seq_len)
    sides = [("chosen", "chosen_"), ("rejected", "rejected_")] if "chosen_input_ids" in tokenized else [("", "")]
    rendered = []
    for label, prefix in sides:
        ids, labels = tokenized[f"{prefix}input_ids"], tokenized[f"{prefix}labels"]
        rendered.append(
            {
                "label": label,
                "spans": _spans(tokenizer, ids, labels),
                "tokens": len(ids),
                "loss_tokens": sum(1 for t in labels if t != IGNORE_INDEX),
            }
        )
    return {"sides": rendered, "truncated": bool(tokenized.get("overlength"))}


def _spans(tokenizer, ids: list[int], labels: list[int]) -> list[dict]:
    """Runs of tokens that alike carry loss or not, decoded together (a character split over tokens stays whole)."""
    spans: list[dict] = []
    start = 0
    for index in range(1, len(ids) + 1):
        if index == len(ids) or (labels[index] != IGNORE_INDEX) != (labels[start] != IGNORE_INDEX):
            spans.append(
                {
                    "text": tokenizer.decode(ids[start:index], skip_special_tokens=False),
                    "loss": labels[start] != IGNORE_INDEX,
                    "tokens": index - start,
                }
            )
            start = index
    return spans


def _report_rows(report: DataReport) -> list[tuple[str, str]]:
    rows = []
    for source in report.sources:
        rows.append((f"read {Path(source['path']).name} ({source['format']})", f"{source['records']} records"))
    data = asdict(report)
    for key in (
        "records_read",
        "duplicates",
        "truncated",
        "dropped_overlength",
        "dropped_no_answer_left",
        "train_records",
        "val_records",
        "train_tokens",
    ):
        rows.append((key.replace("_", " "), str(data[key])))
    for reason, count in sorted(report.dropped.items()):
        rows.append((f"dropped: {reason}", str(count)))
    rows.append(("tokens per example p50 / p95 / max", f"{report.tokens_p50} / {report.tokens_p95} / {report.max_len}"))
    for name, counts in report.contamination.items():
        if isinstance(counts, dict):
            rows.append((f"contamination ({name})", f"{counts['contaminated']} of {counts['samples']}"))
    return rows
