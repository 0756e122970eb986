"""Data preparation: read every source, validate, normalise, dedup, split, tokenize, cache, report.

`invoke data.prepare` runs it on its own; training runs the same function and reuses the cache when the
sources, the data config and the tokenizer are unchanged. Nothing is dropped silently: every record
that does not reach training is counted under its reason in the report.
"""

# Lazy imports: matplotlib (inside the function that needs it).

import glob
import hashlib
import json
import multiprocessing
import os
import random
from collections import deque
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from omegaconf import DictConfig, OmegaConf

from onestop.core.errors import OnestopError
from onestop.core.files import save_figure_atomic, staged_directory
from onestop.core.paths import cache_dir
from onestop.core.progress import progress
from onestop.data.contamination import contamination_report, eval_texts, prompt_text
from onestop.data.curate import Context, as_record, curate, curation_steps
from onestop.data.formats import RecordError, converter, map_columns
from onestop.data.media import MediaError, tokenize_with_media
from onestop.data.records import is_hub_dataset_id, iter_records
from onestop.data.token_rows import TokenRows, TokenRowsBuilder
from onestop.data.tokenize import IGNORE_INDEX
from onestop.models.processor import reads_images, text_tokenizer

# Bump when preparation changes what it writes, so older caches are not reused.
PIPELINE_VERSION = 2
# Keys that change batching or how fast preparation runs, not its result: changing them reuses the cache.
BATCHING_KEYS = ("batch_size", "num_workers", "packing", "padding_free", "streaming", "num_proc")
# Examples tokenized per task: large enough that handing a chunk to a worker process costs little.
TOKENIZE_CHUNK = 2000
# Source format -> the data option that reads its curated records back (curated.jsonl).
CURATED_FORMATS = {
    "alpaca": "messages",
    "sharegpt": "messages",
    "messages": "messages",
    "text": "text",
    "preference": "preference",
}
# From this many examples on, `data.num_proc=auto` tokenizes in every allowed core and a progress bar shows.
LARGE_DATA_EXAMPLES = 20_000


@dataclass
class DataReport:
    """What happened to every record; printed, saved as report.json, and stored in metrics.json."""

    sources: list[dict] = field(default_factory=list)
    records_read: int = 0
    dropped: dict[str, int] = field(default_factory=dict)
    duplicates: int = 0
    train_records: int = 0
    val_records: int = 0
    truncated: int = 0
    dropped_overlength: int = 0
    dropped_no_answer_left: int = 0
    images: int = 0
    media_tokens: int = 0
    train_tokens: int = 0
    tokens_p50: int = 0
    tokens_p95: int = 0
    max_len: int = 0
    max_seq_len: int = 0
    overlength: str = "truncate"
    contamination: dict = field(default_factory=dict)
    curation: list[dict] = field(default_factory=list)
    curated_format: str = ""  # the data option that reads curated.jsonl back: messages, text or preference
    fingerprint: str = ""
    cache_hit: bool = False

    def drop(self, reason: str) -> None:
        self.dropped[reason] = self.dropped.get(reason, 0) + 1

    def summary(self) -> str:
        line = (
            f"data: {self.train_records} train / {self.val_records} validation examples from "
            f"{self.records_read} records, {self.train_tokens} train tokens (p50 {self.tokens_p50}, "
            f"p95 {self.tokens_p95}, max {self.max_len})"
        )
        notes = [f"{n} dropped: {reason}" for reason, n in sorted(self.dropped.items())]
        if self.duplicates:
            notes.append(f"{self.duplicates} exact duplicates dropped")
        for step in self.curation:
            counts = {o: sum(c[o] for c in step["sources"].values()) for o in ("removed", "changed", "flagged")}
            done = ", ".join(f"{n} {outcome}" for outcome, n in counts.items() if n)
            notes.append(f"curate {step['step']}: {done or 'nothing to do'}")
        if self.images:
            notes.append(f"{self.images} images ({self.media_tokens} image tokens) in training examples")
        if self.truncated:
            notes.append(f"{self.truncated} truncated to max_seq_len {self.max_seq_len}")
        if self.dropped_overlength:
            notes.append(f"{self.dropped_overlength} over max_seq_len {self.max_seq_len} dropped")
        if self.dropped_no_answer_left:
            notes.append(f"{self.dropped_no_answer_left} dropped: no answer token left after truncation")
        return line + ("; " + "; ".join(notes) if notes else "")


@dataclass
class PreparedData:
    """Tokenized train and validation examples, the validation conversations, and the report."""

    train: TokenRows
    val: TokenRows
    val_examples: list[dict]
    report: DataReport
    directory: Path
    curated: list[dict] | None = None  # with data.curate: every curated record, before the split, to save


@dataclass(frozen=True)
class Source:
    path: str
    format: str
    columns: dict
    weight: float
    split: str
    subset: str | None


def sources_of(data_cfg: DictConfig, paths_key: str = "path") -> list[Source]:
    """The data sources of a config: `data.mix` entries, or the single `data.path`, globs expanded."""
    entries = OmegaConf.to_container(data_cfg.mix, resolve=True) if data_cfg.get("mix") else None
    if not entries:
        entries = [{"path": data_cfg[paths_key]}]
    sources = []
    for index, entry in enumerate(entries):
        key = f"data.mix[{index}]" if data_cfg.get("mix") else f"data.{paths_key}"
        if not isinstance(entry, dict) or not entry.get("path"):
            raise OnestopError(f"config key '{key}': expected a mapping with a 'path'")
        unknown = set(entry) - {"path", "format", "columns", "weight", "split", "subset"}
        if unknown:
            raise OnestopError(
                f"config key '{key}': unknown key(s) {', '.join(sorted(unknown))}; "
                "expected path, format, columns, weight, split, subset"
            )
        weight = float(entry.get("weight", 1.0))
        if weight <= 0:
            raise OnestopError(f"config key '{key}.weight': expected a positive number, got {weight}")
        for path in _expand(str(entry["path"]), key):
            sources.append(
                Source(
                    path=path,
                    format=entry.get("format") or data_cfg.format,
                    columns={**OmegaConf.to_container(data_cfg.columns, resolve=True), **(entry.get("columns") or {})},
                    weight=weight,
                    split=entry.get("split") or data_cfg.split,
                    subset=entry.get("subset") or data_cfg.subset,
                )
            )
    return sources


def _expand(path: str, key: str) -> list[str]:
    if is_hub_dataset_id(path) or not any(ch in path for ch in "*?["):
        return [path]
    matches = sorted(p for p in glob.glob(path, recursive=True) if Path(p).is_file())
    if not matches:
        raise OnestopError(f"config key '{key}': no files match {path}")
    return matches


def load_examples(sources: list[Source], data_cfg: DictConfig, report: DataReport) -> list[list[dict]]:
    """Normalised examples of every source (one list per source); bad records raise or are counted."""
    skip, system_prompt = data_cfg.on_error == "skip", data_cfg.system_prompt
    per_source = []
    for source in sources:
        to_example = converter(source.format)
        examples, records = [], 0
        for record in iter_records(source.path, source.split, source.subset):
            records += 1
            try:
                examples.append(to_example(map_columns(record, source.columns), system_prompt))
            except RecordError as err:
                if not skip:
                    raise OnestopError(f"{err} (set data.on_error=skip to skip and count such records)") from None
                report.drop(err.reason)
        report.records_read += records
        report.sources.append(
            {"path": source.path, "format": source.format, "records": records, "valid": len(examples)}
        )
        per_source.append(examples)
    return per_source


def dedup(per_source: list[list[dict]], report: DataReport) -> list[list[dict]]:
    """Drop exact duplicates across all sources (first occurrence kept)."""
    seen: set[bytes] = set()  # digests, not the examples' text: a second copy of the corpus otherwise
    kept = []
    for examples in per_source:
        unique = []
        for example in examples:
            text = json.dumps(example, sort_keys=True, ensure_ascii=False)
            key = hashlib.blake2b(text.encode(), digest_size=16).digest()
            if key in seen:
                report.duplicates += 1
                continue
            seen.add(key)
            unique.append(example)
        kept.append(unique)
    return kept


def apply_weights(per_source: list[list[dict]], sources: list[Source], seed: int, report: DataReport) -> list[dict]:
    """Mix sources: weight 0.5 keeps a random half of a source, 2 repeats it twice, 1.5 once and a half."""
    rng = random.Random(seed)
    mixed = []
    for examples, source, info in zip(per_source, sources, report.sources, strict=True):
        whole, fraction = divmod(source.weight, 1.0)
        chosen = examples * int(whole) + rng.sample(examples, round(fraction * len(examples)))
        info.update(weight=source.weight, used=len(chosen))
        mixed += chosen
    rng.shuffle(mixed)
    return mixed


def tokenizer_fingerprint(processor) -> str:
    tokenizer = text_tokenizer(processor)
    probe = "onestop fingerprint probe: 一站式, 1234567890."
    parts = [
        tokenizer.name_or_path,
        str(len(tokenizer)),
        str(tokenizer.chat_template),
        json.dumps(tokenizer(probe, add_special_tokens=False)["input_ids"]),
        str(tokenizer.eos_token),
    ]
    if reads_images(processor):  # how images become pixels and tokens
        parts.append(processor.image_processor.to_json_string())
    return hashlib.sha256("\x00".join(parts).encode()).hexdigest()


def data_fingerprint(data_cfg: DictConfig, tokenizer, seed: int) -> str:
    """Changes when the sources' contents, the data config (data.curate too), the tokenizer or the seed change."""
    config = {k: v for k, v in OmegaConf.to_container(data_cfg, resolve=True).items() if k not in BATCHING_KEYS}
    digest = hashlib.sha256()
    digest.update(json.dumps([PIPELINE_VERSION, config, seed], sort_keys=True).encode())
    for step in curation_steps(data_cfg):  # the libraries' versions and the blocklists' contents
        digest.update(json.dumps(step.fingerprint()).encode())
    digest.update(tokenizer_fingerprint(tokenizer).encode())
    paths = [s.path for s in sources_of(data_cfg)]
    if data_cfg.val_path:
        paths += [s.path for s in sources_of(data_cfg, "val_path")]
    paths += list(data_cfg.contamination.eval_paths)
    for path in paths:
        digest.update(path.encode())
        if Path(path).is_file():
            with open(path, "rb") as handle:
                for block in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(block)
    return digest.hexdigest()[:20]


def prepared_dir(fingerprint: str) -> Path:
    return cache_dir() / "datasets" / fingerprint


def prepare(data_cfg: DictConfig, tokenizer, seed: int = 42, use_cache: bool = True) -> PreparedData:
    """Prepared train/validation data for `data_cfg` and `tokenizer`, from the cache when unchanged."""
    steps = curation_steps(data_cfg)  # a wrong data.curate entry stops here, before any file is read
    fingerprint = data_fingerprint(data_cfg, tokenizer, seed)
    directory = prepared_dir(fingerprint)
    if use_cache and data_cfg.cache and (directory / "report.json").is_file():
        return _load(directory)

    report = DataReport(fingerprint=fingerprint, max_seq_len=data_cfg.max_seq_len, overlength=data_cfg.overlength)
    sources = sources_of(data_cfg)
    per_source = dedup(load_examples(sources, data_cfg, report), report)
    if data_cfg.val_path:
        val_report = DataReport()
        val_groups = load_examples(sources_of(data_cfg, "val_path"), data_cfg, val_report)
        val_examples = [example for group in val_groups for example in group]
        for reason, count in val_report.dropped.items():
            report.dropped[f"validation: {reason}"] = count
    if steps:
        eval_sets = {"validation": [prompt_text(e) for e in val_examples]} if data_cfg.val_path else {}
        eval_sets.update({str(path): eval_texts(path) for path in data_cfg.contamination.eval_paths})
        processes = tokenizing_processes(data_cfg.num_proc, sum(map(len, per_source)))
        context = Context(sources=[source.path for source in sources], eval_sets=eval_sets, processes=processes)
        per_source, report.curation = curate(per_source, steps, context)
        curated = [example for examples in per_source for example in examples]  # before the split moves them
        report.curated_format = "/".join(sorted({CURATED_FORMATS.get(s.format, s.format) for s in sources}))
    if not data_cfg.val_path:
        if not 0 <= data_cfg.val_ratio < 1:
            raise OnestopError(f"config key 'data.val_ratio': expected 0 <= ratio < 1, got {data_cfg.val_ratio}")
        rng = random.Random(seed)
        val_examples = []
        for examples in per_source:
            shuffled = examples[:]
            rng.shuffle(shuffled)
            n_val = round(len(shuffled) * data_cfg.val_ratio)
            val_examples += shuffled[:n_val]
            examples[:] = shuffled[n_val:]
    train_examples = apply_weights(per_source, sources, seed, report)
    if not train_examples:
        dropped = "; ".join(f"{n} dropped: {reason}" for reason, n in sorted(report.dropped.items()))
        curated = [f"{removed} removed by data.curate {step['step']}" for step, removed in curation_removals(report)]
        dropped = "; ".join(part for part in [dropped, *curated] if part)
        raise OnestopError(
            f"{sources[0].path}: no training records left of {report.records_read} read "
            f"({dropped or 'none valid'}; {len(val_examples)} held out for validation, data.val_ratio)"
        )

    processes = tokenizing_processes(data_cfg.num_proc, len(train_examples) + len(val_examples))
    train, _ = _tokenize_all(train_examples, tokenizer, data_cfg, report, processes)
    if not len(train):
        raise OnestopError(every_example_dropped(sources[0].path, report, data_cfg))
    val, val_kept = _tokenize_all(val_examples, tokenizer, data_cfg, DataReport(), processes)
    val_examples = [example for example, kept in zip(val_examples, val_kept, strict=True) if kept]
    report.train_records, report.val_records = len(train), len(val)
    lengths = np.sort(train.example_lengths())
    report.train_tokens = int(lengths.sum())
    report.tokens_p50, report.tokens_p95 = _percentile(lengths, 50), _percentile(lengths, 95)
    report.max_len = int(lengths[-1])

    report.contamination = contamination_report(train_examples, val_examples, data_cfg)
    prepared = PreparedData(train, val, val_examples, report, directory, curated if steps else None)
    if data_cfg.cache:
        _save(prepared, lengths)
    return prepared


def every_example_dropped(path: str, report: DataReport, data_cfg: DictConfig) -> str:
    """Why no training example is left after tokenizing, and the setting that changes it."""
    limit = f"data.max_seq_len={data_cfg.max_seq_len}"
    causes, changes = [], ["raise data.max_seq_len"]
    if report.dropped_overlength:
        causes.append(f"{report.dropped_overlength} longer than {limit} with data.overlength=drop")
        changes.append("set data.overlength=truncate")
    if report.dropped_no_answer_left:
        causes.append(
            f"{report.dropped_no_answer_left} with no answer token within {limit} (the prompt, tool schemas "
            "included, fills it)"
        )
    return f"{path}: every training example was dropped: {', '.join(causes)}; {' or '.join(changes)}"


def _percentile(sorted_values: np.ndarray, q: int) -> int:
    if not len(sorted_values):
        return 0
    return int(sorted_values[min(len(sorted_values) - 1, round(q / 100 * (len(sorted_values) - 1)))])


def tokenizing_processes(num_proc, examples: int) -> int:
    """Processes for `data.num_proc`: a number as given; `auto`, every allowed core (at most 8) for large data."""
    if num_proc == "auto":
        return min(len(os.sched_getaffinity(0)), 8) if examples >= LARGE_DATA_EXAMPLES else 1
    if isinstance(num_proc, bool) or not isinstance(num_proc, int) or num_proc < 1:
        raise OnestopError(f"config key 'data.num_proc': expected auto or a whole number >= 1, got {num_proc!r}")
    return num_proc


@dataclass
class TokenizedChunk:
    """Tokenized examples of one chunk, whether each input was kept, and what was truncated or dropped."""

    rows: TokenRows
    kept: list[bool]
    truncated: int = 0
    dropped_overlength: int = 0
    dropped_no_answer_left: int = 0
    images: int = 0
    media_tokens: int = 0
    media_errors: list[MediaError] = field(default_factory=list)


def tokenize_chunk(tokenizer, examples: list[dict], max_seq_len: int, drop_overlength: bool) -> TokenizedChunk:
    """Token ids and labels of `examples`; over-length (with overlength=drop) or answerless ones are left out, and
    those whose images cannot be used (collected in `media_errors`)."""
    builder, kept = TokenRowsBuilder(), []
    truncated = dropped_overlength = dropped_no_answer_left = images = media_tokens = 0
    media_errors = []
    for example in examples:
        try:
            result = tokenize_with_media(tokenizer, example, max_seq_len)
        except MediaError as err:
            media_errors.append(err)
            kept.append(False)
            continue
        media = (result.pop("images", 0), result.pop("media_tokens", 0))
        if result["overlength"] and drop_overlength:
            dropped_overlength += 1
            kept.append(False)
            continue
        truncated += result["overlength"]
        label_keys = [k for k in result if k.endswith("labels")]
        if any(all(label == IGNORE_INDEX for label in result[k]) for k in label_keys):
            dropped_no_answer_left += 1
            kept.append(False)
            continue
        kept.append(True)
        images, media_tokens = images + media[0], media_tokens + media[1]
        builder.append({k: v for k, v in result.items() if k != "overlength"})
    return TokenizedChunk(
        builder.build(), kept, truncated, dropped_overlength, dropped_no_answer_left, images, media_tokens, media_errors
    )


def _tokenize_all(
    examples: list[dict], tokenizer, data_cfg: DictConfig, report: DataReport, processes: int = 1
) -> tuple[TokenRows, list[bool]]:
    """Tokenized examples, and for each input whether it was kept (over-length or answerless ones are not).

    Chunk by chunk, in `processes` worker processes when more than one, results taken in order: the rows
    are the same whatever the number of processes.
    """
    # read once: an interpolated key (max_seq_len: ${model.max_seq_len}) is parsed again on every access
    max_seq_len, drop_overlength = data_cfg.max_seq_len, data_cfg.overlength == "drop"
    chunks = (examples[start : start + TOKENIZE_CHUNK] for start in range(0, len(examples), TOKENIZE_CHUNK))
    builder, kept = TokenRowsBuilder(), []
    quiet = len(examples) < LARGE_DATA_EXAMPLES
    with progress(len(examples), "examples tokenized", disable=quiet) as bar:
        for chunk in _tokenized_chunks(chunks, tokenizer, max_seq_len, drop_overlength, processes):
            builder.extend(chunk.rows)
            kept += chunk.kept
            report.truncated += chunk.truncated
            report.dropped_overlength += chunk.dropped_overlength
            report.dropped_no_answer_left += chunk.dropped_no_answer_left
            report.images, report.media_tokens = report.images + chunk.images, report.media_tokens + chunk.media_tokens
            for error in chunk.media_errors:
                if data_cfg.on_error != "skip":
                    raise OnestopError(f"{error} (set data.on_error=skip to skip and count such records)")
                report.drop(error.reason)
            bar.update(len(chunk.kept))
    return builder.build(), kept


def _tokenized_chunks(
    chunks: Iterator[list[dict]], tokenizer, max_seq_len: int, drop_overlength: bool, processes: int
) -> Iterator[TokenizedChunk]:
    """Each chunk tokenized, in order; with several processes, at most two chunks per process in flight, so the
    examples waiting to be tokenized are never copied whole into the queue."""
    if processes <= 1:
        for chunk in chunks:
            yield tokenize_chunk(tokenizer, chunk, max_seq_len, drop_overlength)
        return
    # spawn, not fork: the parent may hold torch's and the tokenizer's threads, which a fork would copy mid-use
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(processes, mp_context=context, initializer=_keep_tokenizer, initargs=(tokenizer,)) as pool:
        pending = deque()
        for chunk in chunks:
            pending.append(pool.submit(_tokenize_in_worker, chunk, max_seq_len, drop_overlength))
            if len(pending) >= 2 * processes:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


_worker_tokenizer = None  # the tokenizer a worker process received once, at its start


def _keep_tokenizer(tokenizer) -> None:
    global _worker_tokenizer
    _worker_tokenizer = tokenizer


def _tokenize_in_worker(examples: list[dict], max_seq_len: int, drop_overlength: bool) -> TokenizedChunk:
    return tokenize_chunk(_worker_tokenizer, examples, max_seq_len, drop_overlength)


def _save(prepared: PreparedData, lengths: np.ndarray) -> None:
    """Write the prepared data to a staging directory, then rename it into the cache in one step."""
    with staged_directory(prepared.directory, replace=False) as staging:
        for name, rows in (("train", prepared.train), ("validation", prepared.val)):
            (staging / name).mkdir()
            rows.save(staging / name)
        with open(staging / "validation_examples.jsonl", "w", encoding="utf-8") as handle:
            for example in prepared.val_examples:
                handle.write(json.dumps(example, ensure_ascii=False) + "\n")
        plot_lengths(lengths, prepared.report.max_seq_len, staging / "lengths.png")
        if prepared.curated is not None:
            plot_curation(prepared.report, staging / "curation.png")
            with open(staging / "curated.jsonl", "w", encoding="utf-8") as handle:
                for example in prepared.curated:
                    handle.write(json.dumps(as_record(example), ensure_ascii=False) + "\n")
        (staging / "report.json").write_text(json.dumps(asdict(prepared.report), indent=2, ensure_ascii=False))


def _load(directory: Path) -> PreparedData:
    report_fields = json.loads((directory / "report.json").read_text())
    report = DataReport(**report_fields)
    report.cache_hit = True
    with open(directory / "validation_examples.jsonl", encoding="utf-8") as handle:
        val_examples = [json.loads(line) for line in handle]
    train, val = TokenRows.load(directory / "train"), TokenRows.load(directory / "validation")
    return PreparedData(train, val, val_examples, report, directory)


def plot_lengths(lengths: np.ndarray, max_seq_len: int, path: Path) -> None:
    """Histogram of training example lengths in tokens, with the max_seq_len limit marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7, 4))
    axes.hist(lengths, bins=min(50, max(len(np.unique(lengths)), 1)), color="#4c72b0")
    axes.axvline(max_seq_len, color="#c44e52", linestyle="--", label=f"max_seq_len {max_seq_len}")
    axes.set_xlabel("tokens per example")
    axes.set_ylabel("examples")
    axes.set_title(f"{len(lengths)} training examples")
    axes.legend()
    figure.tight_layout()

    save_figure_atomic(figure, path, dpi=100)
    plt.close(figure)


def curation_removals(report: DataReport) -> list[tuple[dict, int]]:
    """Each curation step of `report` with the records it removed, for those that removed any."""
    removals = [(step, sum(c["removed"] for c in step["sources"].values())) for step in report.curation]
    return [(step, n) for step, n in removals if n]


def plot_curation(report: DataReport, path: Path) -> None:
    """Bar chart of the records each curation step removed, changed and flagged, in the steps' order."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [step["step"] for step in report.curation]
    figure, axes = plt.subplots(figsize=(max(7, 1.4 * len(names)), 4))
    positions = np.arange(len(names))
    bars_of = (("removed", "#c44e52", -0.27), ("changed", "#4c72b0", 0.0), ("flagged", "#dd8452", 0.27))
    for outcome, colour, offset in bars_of:
        counts = [sum(c[outcome] for c in step["sources"].values()) for step in report.curation]
        bars = axes.bar(positions + offset, counts, width=0.27, color=colour, label=outcome)
        axes.bar_label(bars, labels=[str(n) if n else "" for n in counts], fontsize=8)
    axes.set_xticks(positions, names, rotation=15)
    axes.set_ylabel("records")
    axes.set_title(f"data.curate on {report.records_read} records, in order")
    axes.legend()
    figure.tight_layout()

    save_figure_atomic(figure, path, dpi=100)
    plt.close(figure)
