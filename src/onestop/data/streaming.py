"""Streaming raw text larger than memory: read lazily, tokenize on the fly, cut into fixed-length blocks.

`data=text data.streaming=true data.path='corpus/**/*.jsonl'` trains on blocks of `data.max_seq_len`
tokens (loss on every token, documents separated by EOS) without preparing or holding the corpus. Files
are read line by line: `.jsonl` gives one document per line (its `text` field, or the column mapped with
`data.columns.text`), `.txt`/`.md` one document per file.

Resuming: a checkpoint records how many blocks were trained on; the stream skips that many blocks when it
restarts (re-reading, not re-training), so a resumed run sees exactly the blocks an unbroken run would.
"""

import json
from collections.abc import Iterator
from pathlib import Path

from torch.utils.data import IterableDataset

from onestop.core.errors import OnestopError
from onestop.data.records import malformed_json


class TextBlockStream(IterableDataset):
    """Blocks of `block_size` token ids from many text files, in file order, never all in memory."""

    def __init__(self, paths: list[str], tokenizer, block_size: int, text_field: str = "text"):
        super().__init__()
        if not paths:
            raise OnestopError("data.path: no files to stream")
        self.paths = paths
        self.tokenizer = tokenizer
        self.block_size = block_size
        self.text_field = text_field
        self.skip_blocks = 0
        self.tokens_read = 0

    def documents(self) -> Iterator[Iterator[str]]:
        """Each document as an iterator of text pieces (lines), so no document is read whole."""
        for path in self.paths:
            if Path(path).suffix == ".jsonl":
                with open(path, encoding="utf-8") as handle:
                    for number, line in enumerate(handle, start=1):
                        if line.strip():
                            yield iter([self._text_of(line, f"{path}:{number}")])
            else:
                with open(path, encoding="utf-8") as handle:
                    yield iter(handle)

    def _text_of(self, line: str, where: str) -> str:
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise malformed_json(where, err) from None
        text = record.get(self.text_field) if isinstance(record, dict) else None
        if not isinstance(text, str):
            raise OnestopError(f"{where}: missing text field '{self.text_field}' (map another with data.columns.text)")
        return text

    def token_ids(self) -> Iterator[int]:
        eos = self.tokenizer.eos_token_id
        for pieces in self.documents():
            for piece in pieces:
                ids = self.tokenizer(piece, add_special_tokens=False)["input_ids"]
                self.tokens_read += len(ids)
                yield from ids
            if eos is not None:
                yield eos

    def __iter__(self):
        skip, self.skip_blocks = self.skip_blocks, 0
        block: list[int] = []
        emitted = 0
        for token in self.token_ids():
            block.append(token)
            if len(block) == self.block_size:
                if emitted >= skip:
                    yield {"input_ids": block, "labels": list(block)}
                emitted += 1
                block = []
