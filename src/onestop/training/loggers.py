"""Experiment loggers. W&B goes offline by itself when no credentials are present."""

import netrc
import os
from pathlib import Path
from urllib.parse import urlparse


def wandb_credentials_present() -> bool:
    """True when W&B can authenticate: WANDB_API_KEY or a netrc entry for the W&B host."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname
    try:
        return netrc.netrc().authenticators(host) is not None
    except (FileNotFoundError, netrc.NetrcParseError):
        return False


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

    if offline is None:
        offline = os.environ.get("WANDB_MODE") in {"offline", "dryrun"} or not wandb_credentials_present()
    os.environ.setdefault("WANDB_SILENT", "true")
    Path(save_dir).mkdir(parents=True, exist_ok=True)
    return WandbLogger(
        project=project,
        entity=entity,
        name=name or Path(save_dir).name,
        save_dir=save_dir,
        tags=list(tags or []),
        offline=offline,
        # Said to wandb.init itself: Lightning's offline switch only sets WANDB_MODE, which W&B ignores once
        # an earlier run in this process (the demo's base-model evaluation) has read its settings.
        mode="offline" if offline else "online",
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
