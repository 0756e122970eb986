"""Keep onestop's lines, drop the libraries' own (unless ONESTOP_DEBUG=1).

A tiny `invoke train` used to print a dozen lines of other people's output before its own: transformers'
weight-loading bar, FutureWarnings and deprecation notices the libraries raise about each other, Lightning's
hardware lines ("GPU available: False") and advertising tip, lm-eval's hints. None of it tells a user
anything about their run; ONESTOP_DEBUG=1 brings all of it back.
"""

import contextlib
import io
import logging
import os
import sys
import warnings
from collections.abc import Iterator

from onestop.core.environment import debugging

# Environment read by the libraries when they are imported: set before any of them is.
QUIET_ENVIRONMENT = {
    "TRANSFORMERS_VERBOSITY": "error",
    "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",  # transformers' weight-loading bar reads this too
    "DATASETS_VERBOSITY": "error",
    "LMEVAL_LOG_LEVEL": "ERROR",  # lm-eval sets its logger's level from this whenever it configures logging
}
# Loggers whose INFO and WARNING lines are the libraries talking to themselves. Lightning resets its package
# loggers to INFO when it is imported, so the modules that actually log are named: a level set on them stays.
QUIET_LOGGERS = (
    "lightning.pytorch.utilities.rank_zero",
    "lightning.fabric.utilities.rank_zero",
    "lightning.pytorch.accelerators.cuda",
    "lightning.fabric.utilities.seed",
    "lightning.pytorch.utilities.seed",
    "DeepSpeed",
    "deepspeed",
    "datasets",
    "lm_eval",  # its modules log hints through loggers below this one: the level set here holds for them
    "httpx",
    "absl",
)


def quiet_third_party() -> None:
    """Silence third-party noise for this process and the processes it starts."""
    if debugging():
        return
    for name, value in QUIET_ENVIRONMENT.items():
        os.environ.setdefault(name, value)
    if not sys.stderr.isatty():
        # Other libraries' tqdm bars (lm-eval's requests) redraw with carriage returns: in a log, one line of
        # thousands of characters. onestop's own bars pass `disable` themselves and print lines there.
        os.environ.setdefault("TQDM_DISABLE", "1")
    for category in (FutureWarning, DeprecationWarning, PendingDeprecationWarning):
        warnings.filterwarnings("ignore", category=category)
    # Lightning's own pytree helper warns on every fit about a torch API it still uses.
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*")
    warnings.filterwarnings("ignore", message=r".*number of training batches .* is smaller than the logging interval.*")
    warnings.filterwarnings("ignore", message=r".*does not have many workers which may be a bottleneck.*")
    for name in QUIET_LOGGERS:
        logger = logging.getLogger(name)
        logger.setLevel(logging.ERROR)
        # A library may set its logger's level again when imported (DeepSpeed does); a filter stays.
        logger.addFilter(_errors_only)


def _errors_only(record: logging.LogRecord) -> bool:
    return record.levelno >= logging.ERROR


@contextlib.contextmanager
def library_output_dropped() -> Iterator[None]:
    """Within the block, a library's own prints (lm-eval's "bootstrapping for stddev: bleu") are dropped, and in a
    log (no terminal) its progress bars too, which it draws whatever TQDM_DISABLE says; lines that report an
    error still reach stderr. ONESTOP_DEBUG=1 leaves both streams alone."""
    if debugging():
        yield
        return
    errors = io.StringIO()
    keep_stderr = sys.stderr.isatty()
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            with contextlib.nullcontext() if keep_stderr else contextlib.redirect_stderr(errors):
                yield
    finally:
        reported = [line for line in errors.getvalue().splitlines() if "error" in line.lower()]
        if reported:
            print("\n".join(reported), file=sys.stderr, flush=True)
