"""Data preparation: read every source, validate, normalise, dedup, split, tokenize, cache, report.

`invoke data.prepare` runs it on its own; training runs the same function and reuses the cache when the
sources, the data config and the tokenizer are unchanged. Nothing is dropped silently: every record
that does not reach training is counted under its reason in the report.
"""

# Lazy imports: datasets, matplotlib (inside the functions that need them).

import glob
import hashlib
import json
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from onestop.core.errors import OnestopError
from onestop.core.files import save_figure_atomic, staged_directory
from onestop.core.paths import cache_dir
from onestop.data.contamination import contamination_report
from onestop.data.formats import CONVERSATION_FORMATS, RecordError, converter, map_columns
from onestop.data.records import is_hub_dataset_id, read_records
from onestop.data.tokenize import IGNORE_INDEX, tokenize_example

# Bump when preparation changes what it writes, so older caches are not reused.
PIPELINE_VERSION = 1
# Keys that change batching only; a different batch size reuses the same prepared data.
BATCHING_KEYS = ("batch_size", "num_workers", "packing", "streaming")


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
    train_tokens: int = 0
    tokens_p50: int = 0
    tokens_p95: int = 0
    max_len: int = 0
    max_seq_len: int = 0
    overlength: str = "truncate"
    contamination: dict = field(default_factory=dict)
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

    train: list[dict]
    val: list[dict]
    val_examples: list[dict]
    report: DataReport
    directory: Path


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
        records = read_records(source.path, source.split, source.subset)
        examples = []
        for record in records:
            try:
                examples.append(to_example(map_columns(record, source.columns), system_prompt))
            except RecordError as err:
                if not skip:
                    raise OnestopError(f"{err} (set data.on_error=skip to skip and count such records)") from None
                report.drop(err.reason)
        report.records_read += len(records)
        report.sources.append(
            {"path": source.path, "format": source.format, "records": len(records), "valid": len(examples)}
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


def tokenizer_fingerprint(tokenizer) -> str:
    probe = "onestop fingerprint probe: 一站式, 1234567890."
    parts = [
        tokenizer.name_or_path,
        str(len(tokenizer)),
        str(tokenizer.chat_template),
        json.dumps(tokenizer(probe, add_special_tokens=False)["input_ids"]),
        str(tokenizer.eos_token),
    ]
    return hashlib.sha256("\x00".join(parts).encode()).hexdigest()


def data_fingerprint(data_cfg: DictConfig, tokenizer, seed: int) -> str:
    """Changes when the sources' contents, the data config, the tokenizer or the seed change."""
    config = {k: v for k, v in OmegaConf.to_container(data_cfg, resolve=True).items() if k not in BATCHING_KEYS}
    digest = hashlib.sha256()
    digest.update(json.dumps([PIPELINE_VERSION, config, seed], sort_keys=True).encode())
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
    else:
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
        raise OnestopError(
            f"{sources[0].path}: no training records left of {report.records_read} read "
            f"({dropped or 'none valid'}; {len(val_examples)} held out for validation, data.val_ratio)"
        )

    train, _ = _tokenize_all(train_examples, tokenizer, data_cfg, report)
    if not train:
        raise OnestopError(every_example_dropped(sources[0].path, report, data_cfg))
    val, val_kept = _tokenize_all(val_examples, tokenizer, data_cfg, DataReport())
    val_examples = [example for example, kept in zip(val_examples, val_kept, strict=True) if kept]
    report.train_records, report.val_records = len(train), len(val)
    lengths = sorted(example_length(e) for e in train)
    report.train_tokens = sum(lengths)
    report.tokens_p50, report.tokens_p95 = _percentile(lengths, 50), _percentile(lengths, 95)
    report.max_len = lengths[-1] if lengths else 0

    report.contamination = contamination_report(train_examples, val_examples, data_cfg)
    prepared = PreparedData(train, val, val_examples, report, directory)
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


def example_length(example: dict) -> int:
    """Tokens of an example; a preference pair counts its longer side."""
    if "input_ids" in example:
        return len(example["input_ids"])
    return max(len(example["chosen_input_ids"]), len(example["rejected_input_ids"]))


def _percentile(sorted_values: list[int], q: int) -> int:
    if not sorted_values:
        return 0
    return sorted_values[min(len(sorted_values) - 1, round(q / 100 * (len(sorted_values) - 1)))]


def _tokenize_all(
    examples: list[dict], tokenizer, data_cfg: DictConfig, report: DataReport
) -> tuple[list[dict], list[bool]]:
    """Tokenized examples, and for each input whether it was kept (over-length or answerless ones are not)."""
    kept_flags = []
    tokenized = []
    # read once: an interpolated key (max_seq_len: ${model.max_seq_len}) is parsed again on every access
    max_seq_len, drop_overlength = data_cfg.max_seq_len, data_cfg.overlength == "drop"
    for example in examples:
        result = tokenize_example(tokenizer, example, max_seq_len)
        if result["overlength"] and drop_overlength:
            report.dropped_overlength += 1
            kept_flags.append(False)
            continue
        report.truncated += result["overlength"]
        label_keys = [k for k in result if k.endswith("labels")]
        if any(all(label == IGNORE_INDEX for label in result[k]) for k in label_keys):
            report.dropped_no_answer_left += 1
            kept_flags.append(False)
            continue
        kept_flags.append(True)
        tokenized.append({k: v for k, v in result.items() if k != "overlength"})
    return tokenized, kept_flags


def _save(prepared: PreparedData, lengths: list[int]) -> None:
    """Write the prepared data to a staging directory, then rename it into the cache in one step."""
    from datasets import Dataset, disable_progress_bars

    disable_progress_bars()
    with staged_directory(prepared.directory, replace=False) as staging:
        for name, rows in (("train", prepared.train), ("validation", prepared.val)):
            Dataset.from_list(rows).save_to_disk(str(staging / name)) if rows else (staging / name).mkdir()
        with open(staging / "validation_examples.jsonl", "w", encoding="utf-8") as handle:
            for example in prepared.val_examples:
                handle.write(json.dumps(example, ensure_ascii=False) + "\n")
        plot_lengths(lengths, prepared.report.max_seq_len, staging / "lengths.png")
        (staging / "report.json").write_text(json.dumps(asdict(prepared.report), indent=2, ensure_ascii=False))


def _load(directory: Path) -> PreparedData:
    from datasets import load_from_disk

    def rows(name: str) -> list[dict]:
        path = directory / name
        return load_from_disk(str(path)).to_list() if (path / "dataset_info.json").is_file() else []

    report_fields = json.loads((directory / "report.json").read_text())
    report = DataReport(**report_fields)
    report.cache_hit = True
    with open(directory / "validation_examples.jsonl", encoding="utf-8") as handle:
        val_examples = [json.loads(line) for line in handle]
    return PreparedData(rows("train"), rows("validation"), val_examples, report, directory)


def plot_lengths(lengths: list[int], max_seq_len: int, path: Path) -> None:
    """Histogram of training example lengths in tokens, with the max_seq_len limit marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7, 4))
    axes.hist(lengths, bins=min(50, max(len(set(lengths)), 1)), color="#4c72b0")
    axes.axvline(max_seq_len, color="#c44e52", linestyle="--", label=f"max_seq_len {max_seq_len}")
    axes.set_xlabel("tokens per example")
    axes.set_ylabel("examples")
    axes.set_title(f"{len(lengths)} training examples")
    axes.legend()
    figure.tight_layout()

    save_figure_atomic(figure, path, dpi=100)
    plt.close(figure)


def is_conversation_format(data_cfg: DictConfig) -> bool:
    return all(source.format in CONVERSATION_FORMATS for source in sources_of(data_cfg))
