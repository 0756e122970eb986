"""Writing a run's artefacts atomically: a file or directory appears whole or not at all."""

import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

from omegaconf import DictConfig, OmegaConf


def write_text_atomic(path: Path, text: str) -> None:
    """Write `text` to a temporary file beside `path`, then rename it into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text)
    os.replace(tmp, path)


def save_figure_atomic(figure, path: Path, dpi: int = 120) -> None:
    """Render a matplotlib figure to PNG beside `path`, then rename it into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".png", dir=path.parent)
    os.close(fd)
    figure.savefig(tmp, format="png", dpi=dpi)
    os.replace(tmp, path)


def write_json(path: Path, data: dict) -> None:
    write_text_atomic(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


def job_config(cfg: DictConfig) -> dict:
    """The resolved config of a run, without Hydra's own node."""
    return {
        k: OmegaConf.to_container(v, resolve=True) if OmegaConf.is_config(v) else v
        for k, v in cfg.items()
        if k != "hydra"
    }


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


def export_trained(model, tokenizer, run_dir: Path) -> Path:
    """`run_dir/adapter` (PEFT format) for adapter methods, else a plain transformers `run_dir/model`."""
    from peft import PeftModel

    name = "adapter" if isinstance(model, PeftModel) else "model"
    if name == "model":
        model.config.use_cache = True
    return save_pretrained_atomic(model, tokenizer, run_dir / name)
