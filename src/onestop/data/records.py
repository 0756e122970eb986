"""Reading raw records from JSON, JSONL, CSV and Parquet files or a Hugging Face dataset id.

Every record keeps where it came from (`file:line`, `file[row]`), so a bad record is reported by place.
"""

# Lazy imports: pyarrow, datasets (inside the functions that need them).

import csv
import itertools
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from onestop.core.errors import OnestopError
from onestop.core.hub import hub_reachable

FILE_SUFFIXES = (".json", ".jsonl", ".csv", ".parquet", ".txt", ".md")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
# JSON Lines hold one record per line; a longer line is a file of another kind (one giant JSON document, a
# binary file), refused when reached rather than read whole into memory.
MAX_LINE_BYTES = 64 << 20


@dataclass(frozen=True)
class Record:
    """One raw record and where it came from, for error messages."""

    fields: dict
    where: str


def is_hub_dataset_id(path: str) -> bool:
    """`org/name` that is not a local file: a dataset on the Hugging Face Hub."""
    return bool(_HUB_ID.match(path)) and not Path(path).exists() and not path.endswith(FILE_SUFFIXES)


def read_records(path: str | Path, split: str = "train", subset: str | None = None) -> list[Record]:
    """Records of one file (`.json` list, `.jsonl`, `.csv`, `.parquet`, `.txt`/`.md` whole-file text) or hub id."""
    return list(iter_records(path, split, subset))


def iter_records(path: str | Path, split: str = "train", subset: str | None = None) -> Iterator[Record]:
    """`read_records` one at a time: a JSON Lines file is read line by line and never held whole."""
    if isinstance(path, str) and is_hub_dataset_id(path):
        return iter(_read_hub(path, split, subset))
    path = Path(path)
    if path.is_dir():
        raise OnestopError(f"{path}: a folder; expected a data file, or a glob for several such as {path / '*.jsonl'}")
    if not path.is_file():
        raise OnestopError(f"{path}: no such data file")
    if path.suffix == ".parquet":
        return iter(_read_parquet(path))
    if path.suffix in {".txt", ".md", ".csv", ".json"} or _first_byte(path) == b"[":
        text = _decode(path.read_bytes(), path)
        if not text.strip():
            raise OnestopError(f"{path}: the file is empty; expected records")
        if path.suffix in {".txt", ".md"}:
            return iter([Record({"text": text}, str(path))])
        if path.suffix == ".csv":
            return iter(_read_csv(path, text))
        return iter(_read_json_list(path, text))
    return _read_jsonl(path)


def _first_byte(path: Path) -> bytes:
    """The first byte that is not white space (nor a UTF-8 byte-order mark): `[` opens a JSON list."""
    with open(path, "rb") as handle:
        while block := handle.read(1 << 16):
            stripped = block.lstrip(b" \t\r\n\xef\xbb\xbf")
            if stripped:
                return stripped[:1]
    return b""


def _decode(data: bytes, path: Path, first_line: int = 1) -> str:
    """UTF-8 text (a byte-order mark dropped); bytes that are not UTF-8 are named by line and column."""
    try:
        return data.decode("utf-8-sig" if first_line == 1 else "utf-8")
    except UnicodeDecodeError as err:
        line = first_line + data.count(b"\n", 0, err.start)
        column = err.start - (data.rfind(b"\n", 0, err.start) + 1) + 1
        raise OnestopError(
            f"{path}:{line}: not UTF-8 text (byte 0x{data[err.start]:02x} at column {column}); save the file as UTF-8"
        ) from None


def _read_jsonl(path: Path) -> Iterator[Record]:
    """One record per line, read line by line: a line over MAX_LINE_BYTES (not JSON Lines) fails when reached,
    without the file ever being held whole."""
    count = 0
    with open(path, "rb") as handle:
        for number in itertools.count(1):
            raw = handle.readline(MAX_LINE_BYTES + 1)
            if not raw:
                break
            if len(raw) > MAX_LINE_BYTES and not raw.endswith(b"\n"):
                raise OnestopError(
                    f"{path}:{number}: a line longer than {MAX_LINE_BYTES >> 20} MiB; "
                    "expected one JSON record per line (JSON Lines)"
                )
            line = _decode(raw, path, number).rstrip("\r\n")
            if not line.strip():
                continue
            where = f"{path}:{number}"
            try:
                fields = json.loads(line)
            except json.JSONDecodeError as err:
                raise malformed_json(where, err) from None
            if not isinstance(fields, dict):
                raise OnestopError(f"{where}: expected a JSON object per line, got {type(fields).__name__}")
            count += 1
            yield Record(fields, where)
    if not count:
        raise OnestopError(f"{path}: the file is empty; expected records")


def malformed_json(where: str, err: json.JSONDecodeError) -> OnestopError:
    """The one-line error for JSON that does not parse, at `where` (FILE:LINE)."""
    return OnestopError(f"{where}: malformed JSON ({err.msg.removesuffix(' at')} at column {err.colno})")


def _read_json_list(path: Path, text: str) -> list[Record]:
    try:
        items = json.loads(text)
    except json.JSONDecodeError as err:
        raise malformed_json(f"{path}:{err.lineno}", err) from None
    if not isinstance(items, list):
        raise OnestopError(f"{path}: expected a JSON list of records, got {type(items).__name__}")
    records = []
    for index, fields in enumerate(items):
        where = f"{path}[{index}]"
        if not isinstance(fields, dict):
            raise OnestopError(f"{where}: expected a JSON object, got {type(fields).__name__}")
        records.append(Record(fields, where))
    return records


def _read_csv(path: Path, text: str) -> list[Record]:
    reader = csv.DictReader(text.splitlines())
    records = []
    try:
        if not reader.fieldnames:
            raise OnestopError(f"{path}:1: expected a header row naming the columns")
        for row in reader:
            where = f"{path}:{reader.line_num}"
            if None in row:
                raise OnestopError(f"{where}: more cells than the {len(reader.fieldnames)} header columns")
            records.append(Record({key: _maybe_json(value) for key, value in row.items()}, where))
    except csv.Error as err:  # a cell over the csv module's size limit, a stray NUL byte
        # line_num counts the lines read whole: the bad one is the next.
        raise OnestopError(f"{path}:{reader.line_num + 1}: not readable as CSV ({err})") from None
    return records


def _maybe_json(cell: str | None):
    """CSV cells holding a JSON list or object (a conversation, a history) are decoded; others stay text."""
    if cell and cell.lstrip()[:1] in "[{":
        try:
            return json.loads(cell)
        except json.JSONDecodeError:
            return cell
    return cell


def _read_parquet(path: Path) -> list[Record]:
    import pyarrow.parquet as pq

    try:
        rows = pq.read_table(path).to_pylist()
    except Exception as err:  # pyarrow raises several unrelated types for a damaged file
        reason = " ".join(str(err).split())[:160]
        raise OnestopError(f"{path}: not a readable Parquet file ({reason})") from None
    if not rows:
        raise OnestopError(f"{path}: the file is empty; expected records")
    return [Record(fields, f"{path}[row {index}]") for index, fields in enumerate(rows)]


def _read_hub(dataset_id: str, split: str, subset: str | None) -> list[Record]:
    from datasets import load_dataset

    try:
        if not hub_reachable():
            raise ConnectionError("the hub is unreachable")
        rows = load_dataset(dataset_id, subset, split=split)
    except Exception as err:
        raise OnestopError(
            f"data.path={dataset_id}: cannot load it from the Hugging Face Hub ({type(err).__name__}); "
            "offline, download the dataset where the hub is reachable and set data.path to the local file"
        ) from None
    return [Record(dict(fields), f"{dataset_id}[{split}][{index}]") for index, fields in enumerate(rows)]
