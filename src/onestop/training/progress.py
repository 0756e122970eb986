"""The training progress display: loss, tokens/s and validation loss (and online RL's reward), nothing else.

On a terminal a bar redraws in place; in a log (CI, a pipe, a file) a redrawing bar would leave one line of
thousands of carriage returns, so there a line is printed after the first step, about every 30 s, at the end,
and after each validation.
"""

import math
import sys
import time

from lightning.pytorch.callbacks import ProgressBar, RichProgressBar

LOG_INTERVAL_S = 30.0


class RichBar(RichProgressBar):
    def get_metrics(self, trainer, pl_module) -> dict:
        metrics = super().get_metrics(trainer, pl_module)
        metrics.pop("v_num", None)
        return metrics


class LogLines(ProgressBar):
    """One plain line about every `interval` seconds of training, and one per validation."""

    def __init__(self, interval: float = LOG_INTERVAL_S):
        super().__init__()
        self.interval = interval
        self._enabled = True
        self._started = self._last = 0.0

    def disable(self) -> None:
        self._enabled = False

    def enable(self) -> None:
        self._enabled = True

    def on_train_start(self, trainer, pl_module) -> None:
        self._started = time.monotonic()
        self._last = -math.inf

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        now = time.monotonic()
        total = trainer.estimated_stepping_batches
        last = math.isfinite(total) and trainer.global_step >= total
        if self._enabled and (now - self._last >= self.interval or last):
            self._last = now
            print(self.line(trainer, now), flush=True)

    def on_validation_end(self, trainer, pl_module) -> None:
        value = trainer.callback_metrics.get("val/loss")
        if self._enabled and not trainer.sanity_checking and value is not None:
            print(f"step {trainer.global_step}: validation loss {float(value):.4f}", flush=True)

    def line(self, trainer, now: float) -> str:
        total = trainer.estimated_stepping_batches
        step = trainer.global_step
        parts = [f"step {step}/{total}" if math.isfinite(total) else f"step {step}"]
        if trainer.max_epochs and trainer.max_epochs > 0:
            parts.append(f"epoch {trainer.current_epoch + 1}/{trainer.max_epochs}")
        metrics = trainer.progress_bar_metrics
        if "loss" in metrics:
            parts.append(f"loss {float(metrics['loss']):.4f}")
        if "reward" in metrics:
            parts.append(f"reward {float(metrics['reward']):.3f}")
        if "tok/s" in metrics:
            parts.append(f"{float(metrics['tok/s']):.0f} tok/s")
        elapsed = now - self._started
        parts.append(f"{_clock(elapsed)} elapsed")
        if math.isfinite(total) and 0 < step < total:
            parts.append(f"about {_clock(elapsed / step * (total - step))} left")
        return ", ".join(parts)


def _clock(seconds: float) -> str:
    minutes, seconds = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{seconds:02d}" if hours else f"{minutes}:{seconds:02d}"


def progress_bar():
    """Rich bar on a terminal; plain lines where output is captured (CI logs, pipes, files)."""
    return RichBar() if sys.stdout.isatty() else LogLines()
