"""`invoke data.prepare` and the data report table printed before training."""

from omegaconf import DictConfig
from rich.console import Console
from rich.table import Table

from onestop.data.preference import feedback_as_unpaired
from onestop.data.prepare import DataReport, PreparedData, prepare
from onestop.models import load_processor, resolve_model_path


def report_table(report: DataReport):
    """A rich table of what happened to every record, for the terminal."""
    table = Table(title="Data report", show_header=False, title_justify="left")
    table.add_column("what")
    table.add_column("count", justify="right")
    for source in report.sources:
        used = f", used {source['used']} (weight {source['weight']:g})" if "used" in source else ""
        table.add_row(f"read {source['path']} ({source['format']})", f"{source['records']}{used}")
    table.add_row("records read", str(report.records_read))
    for reason, count in sorted(report.dropped.items()):
        table.add_row(f"dropped: {reason}", str(count))
    table.add_row("dropped: exact duplicates", str(report.duplicates))
    for step in report.curation:
        for row in curation_rows(step, several_sources=len(report.sources) > 1):
            table.add_row(*row)
    verb = "dropped" if report.overlength == "drop" else "truncated"
    over = report.dropped_overlength if report.overlength == "drop" else report.truncated
    table.add_row(f"over max_seq_len {report.max_seq_len}: {verb}", str(over))
    if report.dropped_no_answer_left:
        table.add_row("dropped: no answer token left after truncation", str(report.dropped_no_answer_left))
    table.add_row("train examples", str(report.train_records))
    table.add_row("validation examples", str(report.val_records))
    table.add_row("train tokens", str(report.train_tokens))
    if report.images:
        table.add_row("images / image tokens in train examples", f"{report.images} / {report.media_tokens}")
    table.add_row("tokens per example p50 / p95 / max", f"{report.tokens_p50} / {report.tokens_p95} / {report.max_len}")
    contamination = report.contamination
    for name, counts in contamination.items():
        if isinstance(counts, dict):
            table.add_row(
                f"contamination: {name} prompts sharing {contamination['ngram']} words in a row with training",
                f"{counts['contaminated']} of {counts['samples']}",
            )
    return table


def curation_rows(step: dict, several_sources: bool) -> list[tuple[str, str]]:
    """Rows of one curation step: kept / removed / changed / flagged (per source when several), then per reason."""
    rows = []
    outcomes = ("kept", "removed", "changed", "flagged")
    totals = {o: sum(c[o] for c in step["sources"].values()) for o in outcomes}
    for source, counts in [("", totals)] + (list(step["sources"].items()) if several_sources else []):
        shown = " / ".join(f"{counts[o]} {o}" for o in outcomes if counts[o] or o == "kept")
        rows.append((f"curate {step['step']}" + (f": {source}" if source else ""), shown))
    for reason, count in sorted(step["reasons"].items()):
        rows.append((f"curate {step['step']}: {reason}", str(count)))
    return rows


def curation_examples(report: DataReport) -> list[str]:
    """One line per curation example in the report: step, what happened and why, and an excerpt."""
    lines = []
    for step in report.curation:
        for example in step["examples"]:
            if "before" in example:
                text = f"{example['before'][:70]!r} -> {example['after'][:70]!r}"
            else:
                text = repr(example["text"][:140])
            lines.append(f"  {step['step']} {example['outcome']} ({example['reason']}): {text}")
    return lines


def print_report(prepared: PreparedData | None) -> None:
    if prepared is None:  # a streamed corpus is never prepared as a whole
        return

    console = Console(width=max(Console().width, 100))
    console.print(report_table(prepared.report))
    if prepared.report.curation:
        console.print("Curation examples (all in report.json, a chart in curation.png):", highlight=False)
        for line in curation_examples(prepared.report):
            console.print(line, highlight=False, markup=False)
    state = "reused from cache" if prepared.report.cache_hit else "written"
    console.print(f"Prepared data ({state}, fingerprint {prepared.report.fingerprint}): {prepared.directory}")


def run_prepare(cfg: DictConfig) -> PreparedData:
    """Prepare `cfg.data` for `cfg.model`'s tokenizer (no model weights are loaded) and report."""
    tokenizer = load_processor(cfg.model, resolve_model_path(cfg.model))
    data_cfg = feedback_as_unpaired(cfg.data)  # the web UI's ratings are read as rated answers, as training reads them
    prepared = prepare(data_cfg, tokenizer, seed=cfg.seed)
    print_report(prepared)
    chart = (
        f"  Curation: {prepared.directory / 'curation.png'}" if (prepared.directory / "curation.png").is_file() else ""
    )
    print(f"Report: {prepared.directory / 'report.json'}  Lengths: {prepared.directory / 'lengths.png'}{chart}")
    if (prepared.directory / "curated.jsonl").is_file():  # with data.curate and data.cache
        print(
            f"Curated records: {prepared.directory / 'curated.jsonl'} "
            f"(to train on them as they are: data={prepared.report.curated_format} data.path=THAT_FILE)"
        )
    return prepared
