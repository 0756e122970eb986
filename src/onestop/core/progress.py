"""A progress bar for long loops outside training (Lightning draws its own)."""

import sys

from tqdm import tqdm


def progress(total: int, unit: str, disable: bool = False) -> tqdm:
    """A bar that redraws on a terminal and, in a log without one, prints a line about every 30 s."""
    return tqdm(
        total=total, desc=unit, mininterval=0.5 if sys.stderr.isatty() else 30, file=sys.stderr, disable=disable
    )
