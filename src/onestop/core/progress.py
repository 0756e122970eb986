"""A progress bar for long loops outside training (Lightning's display is onestop.training.progress)."""

import sys

from tqdm import tqdm


class _Lines:
    """tqdm redraws its bar with carriage returns; written to a log, each redraw becomes a line of its own."""

    def __init__(self, stream):
        self.stream = stream

    def write(self, text: str) -> None:
        text = text.replace("\r", "").rstrip("\n")
        if text.strip():
            self.stream.write(text + "\n")

    def flush(self) -> None:
        self.stream.flush()


def progress(total: int, unit: str, disable: bool = False) -> tqdm:
    """A bar that redraws on a terminal and, in a log without one, prints a line about every 30 s."""
    terminal = sys.stderr.isatty()
    return tqdm(
        total=total,
        desc=unit,
        mininterval=0.5 if terminal else 30,
        file=sys.stderr if terminal else _Lines(sys.stderr),
        disable=disable,
        dynamic_ncols=terminal,
        ncols=None if terminal else 100,
    )
