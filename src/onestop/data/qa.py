"""Question-answer pairs from documents: chunk Markdown/text, ask an OpenAI-compatible model, keep what holds.

`invoke data.qa source='docs/*.md' endpoint.base_url=URL endpoint.model=NAME` writes `qa.jsonl`, a
`messages` dataset (`invoke train data=messages data.path=RUN/qa.jsonl`) in which every pair keeps the
source file and chunk it came from. Every chunk asked is recorded in `progress.jsonl` as soon as its reply
is in, so a rerun with the same `output` asks only the chunks not yet done. Nothing is dropped silently:
the report counts unparseable replies, invalid pairs by reason, and duplicates.
"""

# Lazy imports: openai (inside the functions that need them).

import glob
import hashlib
import json
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from omegaconf import DictConfig
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from onestop.core.errors import OnestopError
from onestop.core.files import write_json, write_text_atomic

DOCUMENT_SUFFIXES = (".md", ".markdown", ".txt")
_HEADING = re.compile(r"^#{1,6} ", re.MULTILINE)


@dataclass(frozen=True)
class Chunk:
    source: str
    index: int
    text: str

    @property
    def chunk_id(self) -> str:
        """Stable across runs: the same text of the same file is the same chunk."""
        return hashlib.sha256(f"{self.source}\x00{self.text}".encode()).hexdigest()[:16]


@dataclass
class QAReport:
    documents: int = 0
    chunks: int = 0
    chunks_asked: int = 0
    chunks_from_progress: int = 0
    replies_unparseable: int = 0
    pairs_returned: int = 0
    pairs_invalid: dict[str, int] = field(default_factory=dict)
    duplicates: int = 0
    pairs_written: int = 0
    retries: int = 0


def find_documents(source: str) -> list[Path]:
    path = Path(source)
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.suffix in DOCUMENT_SUFFIXES and p.is_file())
    else:
        files = sorted(Path(p) for p in glob.glob(source, recursive=True) if Path(p).is_file())
    if not files:
        raise OnestopError(f"config key 'source': no .md or .txt documents match {source}")
    return files


def split_sections(text: str) -> list[str]:
    """Markdown sections (a heading and what follows it), then paragraphs: the natural units of meaning."""
    starts = [m.start() for m in _HEADING.finditer(text)]
    bounds = sorted({0, *starts, len(text)})
    sections = [text[a:b].strip() for a, b in zip(bounds, bounds[1:], strict=False)]
    return [s for s in sections if s]


def chunk_document(path: Path, text: str, size: int, overlap: int) -> list[Chunk]:
    """Chunks of at most `size` characters: whole sections when they fit, else paragraphs, else slices."""
    if overlap >= size:
        raise OnestopError(f"config key 'overlap_chars': must be below chunk_chars ({size}), got {overlap}")
    pieces: list[str] = []
    for section in split_sections(text):
        if len(section) <= size:
            pieces.append(section)
            continue
        for paragraph in (p.strip() for p in section.split("\n\n") if p.strip()):
            step = size - overlap
            pieces += [paragraph[i : i + size] for i in range(0, max(len(paragraph) - overlap, 1), step)]
    chunks, current = [], ""
    for piece in pieces:
        if current and len(current) + 2 + len(piece) > size:
            chunks.append(current)
            tail = current[-overlap:] if overlap else ""
            current = f"{tail}\n\n{piece}" if tail and len(tail) + 2 + len(piece) <= size else piece
        else:
            current = f"{current}\n\n{piece}" if current else piece
    if current:
        chunks.append(current)
    return [Chunk(str(path), index, text) for index, text in enumerate(chunks)]


def parse_pairs(reply: str) -> list | None:
    """The JSON list in a reply (bare or in a ``` fence); None when there is none."""
    fenced = re.search(r"```(?:json)?\s*(.*?)```", reply, re.DOTALL)
    candidates = [fenced.group(1)] if fenced else []
    start, end = reply.find("["), reply.rfind("]")
    if start != -1 and end > start:
        candidates.append(reply[start : end + 1])
    for candidate in candidates:
        try:
            value = json.loads(candidate)
        except json.JSONDecodeError:
            continue
        if isinstance(value, list):
            return value
    return None


def invalid_reason(pair, cfg: DictConfig) -> str | None:
    if not isinstance(pair, dict) or not all(isinstance(pair.get(key), str) for key in ("question", "answer")):
        return "not a {question, answer} object"
    question, answer = pair["question"].strip(), pair["answer"].strip()
    if not question:
        return "empty question"
    if len(answer) < cfg.min_answer_chars:
        return "answer too short"
    if len(answer) > cfg.max_answer_chars:
        return "answer too long"
    if normalise(answer) == normalise(question):
        return "answer repeats the question"
    return None


def normalise(text: str) -> str:
    return re.sub(r"\W+", " ", text.lower()).strip()


class Generator:
    """Asks the endpoint for pairs, with a rate limit and retries with exponential backoff."""

    def __init__(self, cfg: DictConfig, report: QAReport):
        from openai import OpenAI

        endpoint = cfg.endpoint
        if not endpoint.base_url:
            raise OnestopError("config key 'endpoint.base_url': not set (or set OPENAI_BASE_URL)")
        if not endpoint.model:
            raise OnestopError("config key 'endpoint.model': not set (or set OPENAI_MODEL)")
        self.cfg, self.report = cfg, report
        self.client = OpenAI(
            base_url=endpoint.base_url,
            api_key=endpoint.api_key or "not-needed",  # local servers accept any key
            timeout=endpoint.timeout,
            max_retries=0,  # retries are ours, counted in the report
        )
        self.interval = 60.0 / cfg.requests_per_minute if cfg.requests_per_minute > 0 else 0.0
        self._last_request = 0.0

    def ask(self, chunk: Chunk) -> str:
        import openai

        prompt = self.cfg.prompt.format(n=self.cfg.pairs_per_chunk, source=Path(chunk.source).name, chunk=chunk.text)
        delay = self.cfg.backoff_seconds
        for attempt in range(self.cfg.max_retries + 1):
            wait = self._last_request + self.interval - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            self._last_request = time.monotonic()
            try:
                reply = self.client.chat.completions.create(
                    model=self.cfg.endpoint.model,
                    messages=[{"role": "user", "content": prompt}],
                    temperature=self.cfg.temperature,
                    max_tokens=self.cfg.max_tokens,
                )
                return reply.choices[0].message.content or ""
            except (openai.APIConnectionError, openai.RateLimitError, openai.InternalServerError) as err:
                if attempt == self.cfg.max_retries:
                    raise OnestopError(
                        f"endpoint {self.cfg.endpoint.base_url}: {type(err).__name__} after "
                        f"{self.cfg.max_retries + 1} attempts ({str(err).splitlines()[0][:200]})"
                    ) from None
                self.report.retries += 1
                time.sleep(delay)
                delay *= 2
            except openai.APIStatusError as err:
                raise OnestopError(
                    f"endpoint {self.cfg.endpoint.base_url}: HTTP {err.status_code} ({str(err).splitlines()[0][:200]})"
                ) from None
        raise AssertionError("unreachable")


def generate_qa(cfg: DictConfig) -> tuple[Path, QAReport]:
    """Chunk every document, ask for pairs (skipping chunks already done), validate, dedup, write."""
    out = Path(cfg.output)
    report = QAReport()
    documents = find_documents(cfg.source)
    report.documents = len(documents)
    chunks = []
    for path in documents:
        text = path.read_text(encoding="utf-8")
        if text.strip():
            chunks += chunk_document(path, text, cfg.chunk_chars, cfg.overlap_chars)
    if not chunks:
        raise OnestopError(f"config key 'source': every document under {cfg.source} is empty")
    report.chunks = len(chunks)
    generator = Generator(cfg, report)  # fails on a missing endpoint before anything is written

    out.mkdir(parents=True, exist_ok=True)
    progress_file = out / "progress.jsonl"
    done = {}
    if progress_file.is_file():
        for line in progress_file.read_text(encoding="utf-8").splitlines():
            entry = json.loads(line)
            done[entry["chunk_id"]] = entry["reply"]
    columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn()]
    with Progress(*columns) as bar, open(progress_file, "a", encoding="utf-8") as progress:
        task = bar.add_task("asking for pairs", total=len(chunks))
        for chunk in chunks:
            if chunk.chunk_id in done:
                report.chunks_from_progress += 1
            else:
                done[chunk.chunk_id] = generator.ask(chunk)
                report.chunks_asked += 1
                progress.write(json.dumps({"chunk_id": chunk.chunk_id, "reply": done[chunk.chunk_id]}) + "\n")
                progress.flush()
            bar.advance(task)

    rows, seen = [], set()
    for chunk in chunks:
        pairs = parse_pairs(done[chunk.chunk_id])
        if pairs is None:
            report.replies_unparseable += 1
            continue
        report.pairs_returned += len(pairs)
        for pair in pairs:
            reason = invalid_reason(pair, cfg)
            if reason:
                report.pairs_invalid[reason] = report.pairs_invalid.get(reason, 0) + 1
                continue
            key = normalise(pair["question"])
            if key in seen:
                report.duplicates += 1
                continue
            seen.add(key)
            rows.append(
                {
                    "messages": [
                        {"role": "user", "content": pair["question"].strip()},
                        {"role": "assistant", "content": pair["answer"].strip()},
                    ],
                    "source": chunk.source,
                    "chunk_id": chunk.chunk_id,
                }
            )
    report.pairs_written = len(rows)
    write_text_atomic(out / "qa.jsonl", "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    write_json(out / "report.json", asdict(report))
    return out / "qa.jsonl", report


def run_qa(cfg: DictConfig) -> None:
    path, report = generate_qa(cfg)
    table = Table(title="Question-answer generation", show_header=False, title_justify="left")
    table.add_column("what")
    table.add_column("count", justify="right")
    for key, value in asdict(report).items():
        if isinstance(value, dict):
            for reason, count in sorted(value.items()):
                table.add_row(f"pairs dropped: {reason}", str(count))
        else:
            table.add_row(key.replace("_", " "), str(value))
    Console().print(table)
    print(f"Pairs: {path}  (train on them: invoke train data=messages data.path={path})")
    print(f"Run directory: {path.parent}", flush=True)
