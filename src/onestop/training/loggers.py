"""Experiment loggers. W&B goes offline by itself when no credentials are present."""

# Lazy imports: lightning (inside the functions that need them).

import os
from pathlib import Path

from omegaconf import DictConfig

from onestop.config.nodes import instantiate_node
from onestop.core.wandb_mode import wandb_mode


def build_logger(node: DictConfig | None, save_dir: Path):
    """The Lightning logger the `logger` config node names (its `kind` is for onestop, not the logger), or False."""
    if not node:
        return False
    return instantiate_node(node, ("kind",), save_dir=str(save_dir))


def wandb_logger(
    save_dir: str,
    project: str,
    name: str | None = None,
    entity: str | None = None,
    tags: list[str] | None = None,
    offline: bool | None = None,
    group: str | None = None,
):
    """A Lightning `WandbLogger` writing under `save_dir/wandb`; offline when no credentials are found."""
    from lightning.pytorch.loggers import WandbLogger

    mode = wandb_mode(offline)
    Path(save_dir).mkdir(parents=True, exist_ok=True)
    return WandbLogger(
        project=project,
        entity=entity,
        name=name or Path(save_dir).name,
        save_dir=save_dir,
        tags=list(tags or []),
        offline=mode != "online",
        # Said to wandb.init itself: Lightning's offline switch only sets WANDB_MODE, which W&B ignores once
        # an earlier run in this process (the demo's base-model evaluation) has read its settings.
        mode=mode,
        group=group or os.environ.get("WANDB_RUN_GROUP"),  # a sweep's trials share one group
    )


def wandb_sync_hint(logger) -> str | None:
    """The one line telling how to upload an offline W&B run, or None for other loggers / online runs."""
    from lightning.pytorch.loggers import WandbLogger

    if not isinstance(logger, WandbLogger) or not logger._offline:
        return None
    run_dir = Path(logger.experiment.dir).parent
    return f"W&B: logged offline (no credentials found); upload later with: wandb sync {run_dir}"


def finish_failed_run(logger) -> None:
    """Close the W&B run of a training that failed, so a later run in this process (the next trial of a
    sweep) opens its own instead of logging into this one. Lightning's logger leaves it open."""
    experiment = getattr(logger, "_experiment", None)
    if experiment is not None and hasattr(experiment, "finish"):
        experiment.finish(exit_code=1)
