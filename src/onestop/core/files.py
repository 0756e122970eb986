"""Durable atomic writes: a file or directory appears whole or not at all, and survives a power cut.

Each write goes to a temporary name beside its target, is flushed to the disk (fsync), renamed into
place, and the rename itself made durable (fsync of the directory). Without the fsyncs a crash can
leave a target that exists, renamed, but holds zeros or nothing: the rename reached the disk before
the data. A full disk, a read-only or unwritable directory ends in one line naming the path.
"""

import errno
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from onestop.core.errors import OnestopError

DISK_FULL = (errno.ENOSPC, errno.EDQUOT)
NOT_WRITABLE = (errno.EACCES, errno.EPERM, errno.EROFS)


def disk_full(error: BaseException) -> bool:
    """Whether `error` says the disk (or quota) is full; safetensors reports it as text, not as an OSError."""
    if isinstance(error, OSError) and error.errno in DISK_FULL:
        return True
    return any(text in str(error) for text in ("No space left on device", "Disk quota exceeded"))


def write_error(path: Path, error: BaseException, what: str = "") -> OnestopError | None:
    """The one-line error for a failed write of `path`, or None when `error` is not about the disk."""
    what = f"; {what}" if what else ""
    if disk_full(error):
        return OnestopError(f"{path}: no space left on device{what}; free some space and run again")
    if isinstance(error, OSError) and error.errno in NOT_WRITABLE:
        return OnestopError(f"{path}: cannot write there ({error.strerror}){what}")
    return None


@contextmanager
def reported_as_user_error(path: Path, what: str = "") -> Iterator[None]:
    """A full disk or an unwritable place while the block writes `path` becomes one line naming it."""
    try:
        yield
    except Exception as error:
        found = write_error(path, error, what)
        if found is None:
            raise
        raise found from error


def fsync_path(path: Path) -> None:
    """Make a file's contents, or a directory's names (a rename into it), durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def replace_durably(tmp: Path, target: Path) -> None:
    """Rename the flushed file or directory `tmp` onto `target` and make the rename durable."""
    os.replace(tmp, target)
    fsync_path(target.parent)


@contextmanager
def temporary_beside(path: Path, suffix: str = "", what: str = "") -> Iterator[tuple[int, Path]]:
    """An open file descriptor and name of a new temporary file beside `path`; the file is removed unless the
    block renames it away. A full disk or an unwritable place ends in one line naming `path` (and `what`)."""
    with reported_as_user_error(path, what):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    try:
        with reported_as_user_error(path, what):
            yield fd, Path(tmp)
    finally:
        if os.path.lexists(tmp):
            os.unlink(tmp)


def write_text_atomic(path: Path, text: str) -> None:
    """Write `text` (UTF-8) to a temporary file beside `path`, then rename it into place."""
    write_bytes_atomic(path, text.encode("utf-8"))


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """Write `data` to a temporary file beside `path`, flush it to the disk, then rename it into place."""
    path = Path(path)
    with temporary_beside(path) as (fd, tmp):
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        replace_durably(tmp, path)


def write_json(path: Path, data: dict) -> None:
    write_text_atomic(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


def save_figure_atomic(figure, path: Path, dpi: int = 120) -> None:
    """Render a matplotlib figure to PNG beside `path`, then rename it into place."""
    path = Path(path)
    with temporary_beside(path, suffix=".png") as (fd, tmp):
        os.close(fd)
        figure.savefig(tmp, format="png", dpi=dpi)
        fsync_path(tmp)
        replace_durably(tmp, path)


def _fsync_tree(root: Path) -> None:
    for directory, _, files in os.walk(root):
        for name in files:
            fsync_path(Path(directory) / name)
        fsync_path(Path(directory))


@contextmanager
def staged_directory(target: Path, replace: bool = True):
    """Yield a staging directory beside `target`; when the block succeeds it becomes `target` in one rename.

    `replace=False` keeps an existing `target` (another process wrote the same content and may be reading it).
    A full disk or an unwritable place, in the block or in the rename, ends in one line naming `target`;
    an existing `target` is then left as it was.
    """
    target = Path(target)
    with reported_as_user_error(target, "nothing was replaced"):
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        with reported_as_user_error(target, "nothing was replaced"):
            yield staging
            if target.exists() and not replace:
                return
            _fsync_tree(staging)  # before an existing target goes: the new one is on the disk first
            if target.exists():
                shutil.rmtree(target)
            staging.rename(target)
            fsync_path(target.parent)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def save_pretrained_atomic(model, tokenizer, target: Path, state_dict: dict | None = None) -> Path:
    """`save_pretrained` of model (or peft adapter) and tokenizer into `target`, via a staging directory;
    `state_dict`, when given, is saved in place of the model's own tensors."""
    with staged_directory(target) as staging:
        model.save_pretrained(staging, **({"state_dict": state_dict} if state_dict is not None else {}))
        tokenizer.save_pretrained(staging)
    return target


def copy_tree_atomic(source: Path, target: Path) -> Path:
    """A copy of the directory `source` at `target`, appearing whole."""
    with staged_directory(target) as staging:
        shutil.copytree(source, staging, dirs_exist_ok=True)
    return target
