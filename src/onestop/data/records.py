"""Reading record files (JSON list or JSONL) with errors that name the file and line."""

import json
from dataclasses import dataclass
from pathlib import Path

from onestop.errors import OnestopError


@dataclass(frozen=True)
class Record:
    """One raw record and where it came from, for error messages."""

    fields: dict
    where: str


def read_records(path: str | Path) -> list[Record]:
    """Records of a `.json` (list of objects) or `.jsonl` (one object per line) file."""
    path = Path(path)
    if not path.is_file():
        raise OnestopError(f"{path}: no such data file")
    text = path.read_text(encoding="utf-8")
    if not text.strip():
        raise OnestopError(f"{path}: the file is empty; expected JSON or JSONL records")
    if path.suffix == ".json" or text.lstrip().startswith("["):
        return _read_json_list(path, text)
    records = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            fields = json.loads(line)
        except json.JSONDecodeError as err:
            raise OnestopError(f"{where}: malformed JSON ({err.msg} at column {err.colno})") from None
        if not isinstance(fields, dict):
            raise OnestopError(f"{where}: expected a JSON object per line, got {type(fields).__name__}")
        records.append(Record(fields, where))
    return records


def _read_json_list(path: Path, text: str) -> list[Record]:
    try:
        items = json.loads(text)
    except json.JSONDecodeError as err:
        raise OnestopError(f"{path}:{err.lineno}: malformed JSON ({err.msg} at column {err.colno})") from None
    if not isinstance(items, list):
        raise OnestopError(f"{path}: expected a JSON list of records, got {type(items).__name__}")
    records = []
    for index, fields in enumerate(items):
        where = f"{path}[{index}]"
        if not isinstance(fields, dict):
            raise OnestopError(f"{where}: expected a JSON object, got {type(fields).__name__}")
        records.append(Record(fields, where))
    return records
