"""Tokenized examples held compactly: each column is one flat int32 array, with the end offset of every row.

A Python list of token ids costs about 36 bytes a token (an 8-byte pointer to a 28-byte int); the same
tokens in an int32 array cost 4. Prepared data of a million instruction rows therefore takes about a GiB
instead of twenty, and the cache on disk holds the same arrays, memory-mapped when read back, so a
training process reads only the rows it uses. A row is handed out as a dict of plain lists, the shape
the collators and packing take.
"""

import array
import json
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from onestop.core.errors import OnestopError

ROWS_FILE = "rows.json"


class TokenRows(Sequence):
    """Rows of token-id columns (`input_ids`, `labels`; `chosen_*`/`rejected_*` for preference pairs)."""

    def __init__(self, values: dict[str, np.ndarray], ends: dict[str, np.ndarray]):
        if values.keys() != ends.keys():
            raise ValueError("every column needs its row ends")
        counts = {len(column_ends) for column_ends in ends.values()}
        if len(counts) > 1:
            raise ValueError(f"columns of different row counts: {sorted(counts)}")
        self.values, self.ends = values, ends
        self.count = counts.pop() if counts else 0

    @property
    def columns(self) -> list[str]:
        return list(self.values)

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(self.count))]
        if index < 0:
            index += self.count
        if not 0 <= index < self.count:
            raise IndexError(f"row {index} of {self.count}")
        row = {}
        for name, values in self.values.items():
            ends = self.ends[name]
            start = int(ends[index - 1]) if index else 0
            row[name] = values[start : int(ends[index])].tolist()
        return row

    def lengths(self, column: str = "input_ids") -> np.ndarray:
        """Tokens of every row in `column` (int64), without reading the rows."""
        ends = np.asarray(self.ends[column], dtype=np.int64)
        return np.diff(ends, prepend=0)

    def example_lengths(self) -> np.ndarray:
        """Tokens of every example; a preference pair counts its longer side."""
        if "input_ids" in self.values:
            return self.lengths()
        if not self.values:
            return np.zeros(0, dtype=np.int64)
        return np.maximum(self.lengths("chosen_input_ids"), self.lengths("rejected_input_ids"))

    def save(self, directory: Path) -> None:
        """The arrays as .npy files in `directory` (which must exist), with a small index of the columns."""
        for name in self.values:
            np.save(directory / f"{name}.npy", np.asarray(self.values[name], dtype=np.int32))
            np.save(directory / f"{name}.ends.npy", np.asarray(self.ends[name], dtype=np.int64))
        (directory / ROWS_FILE).write_text(json.dumps({"rows": self.count, "columns": self.columns}))

    @classmethod
    def load(cls, directory: Path) -> "TokenRows":
        """Rows saved by `save`, memory-mapped: nothing is read into memory until a row is."""
        try:
            index = json.loads((directory / ROWS_FILE).read_text())
            values = {name: np.load(directory / f"{name}.npy", mmap_mode="r") for name in index["columns"]}
            ends = {name: np.load(directory / f"{name}.ends.npy", mmap_mode="r") for name in index["columns"]}
        except (OSError, ValueError, KeyError) as err:
            raise OnestopError(
                f"{directory}: the prepared data is damaged ({type(err).__name__}); delete the folder to prepare again"
            ) from None
        return cls(values, ends)


class TokenRowsBuilder:
    """Collects rows (dicts of token-id lists) into int32 arrays as they come, then builds `TokenRows`."""

    def __init__(self):
        self.values: dict[str, array.array] = {}
        self.ends: dict[str, array.array] = {}

    def append(self, row: dict[str, Iterable[int]]) -> None:
        for name, ids in row.items():
            values = self.values.setdefault(name, array.array("i"))
            values.extend(ids)
            self.ends.setdefault(name, array.array("q")).append(len(values))

    def extend(self, rows: "TokenRows") -> None:
        """Append every row of another `TokenRows` (a chunk tokenized elsewhere), arrays at a time."""
        for name in rows.columns:
            values = self.values.setdefault(name, array.array("i"))
            offset = len(values)
            values.frombytes(np.ascontiguousarray(rows.values[name], dtype=np.int32).tobytes())
            self.ends.setdefault(name, array.array("q")).frombytes(
                (np.asarray(rows.ends[name], dtype=np.int64) + offset).tobytes()
            )

    def build(self) -> TokenRows:
        return TokenRows(
            {name: np.frombuffer(values, dtype=np.int32) for name, values in self.values.items()},
            {name: np.frombuffer(self.ends[name], dtype=np.int64) for name in self.values},
        )
