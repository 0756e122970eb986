"""The training progress bar: loss, tokens/s and validation loss, nothing else."""

import sys

from lightning.pytorch.callbacks import RichProgressBar, TQDMProgressBar


class _HideVersion:
    def get_metrics(self, trainer, pl_module) -> dict:
        metrics = super().get_metrics(trainer, pl_module)
        metrics.pop("v_num", None)
        return metrics


class RichBar(_HideVersion, RichProgressBar):
    pass


class TQDMBar(_HideVersion, TQDMProgressBar):
    pass


def progress_bar():
    """Rich bar on a terminal; plain tqdm lines where output is captured (CI logs, pipes)."""
    return RichBar() if sys.stdout.isatty() else TQDMBar()
