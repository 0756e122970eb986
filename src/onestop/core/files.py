"""Atomic writes: a file or directory appears whole or not at all."""

import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path


def write_text_atomic(path: Path, text: str) -> None:
    """Write `text` (UTF-8) to a temporary file beside `path`, then rename it into place."""
    write_bytes_atomic(path, text.encode("utf-8"))


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """Write `data` to a temporary file beside `path`, then rename it into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    os.replace(tmp, path)


def write_json(path: Path, data: dict) -> None:
    write_text_atomic(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


def save_figure_atomic(figure, path: Path, dpi: int = 120) -> None:
    """Render a matplotlib figure to PNG beside `path`, then rename it into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".png", dir=path.parent)
    os.close(fd)
    figure.savefig(tmp, format="png", dpi=dpi)
    os.replace(tmp, path)


@contextmanager
def staged_directory(target: Path, replace: bool = True):
    """Yield a staging directory beside `target`; when the block succeeds it becomes `target` in one rename.

    `replace=False` keeps an existing `target` (another process wrote the same content and may be reading it).
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        yield staging
        if target.exists():
            if not replace:
                return
            shutil.rmtree(target)
        staging.rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def save_pretrained_atomic(model, tokenizer, target: Path) -> Path:
    """`save_pretrained` of model (or peft adapter) and tokenizer into `target`, via a staging directory."""
    with staged_directory(target) as staging:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
    return target


def copy_tree_atomic(source: Path, target: Path) -> Path:
    """A copy of the directory `source` at `target`, appearing whole."""
    with staged_directory(target) as staging:
        shutil.copytree(source, staging, dirs_exist_ok=True)
    return target
