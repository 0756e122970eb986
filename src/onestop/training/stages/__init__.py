"""Training stages, one module each: its batch -> loss, what it needs loaded, the data it reads.

`stage=NAME` picks one from STAGES, the one table; the training entry point (onestop.training.train) asks the
chosen Stage and never names a stage itself. Adding a stage is one module declaring `STAGE = Stage(...)` and
one line below.
"""

from omegaconf import DictConfig

from onestop.core.errors import OnestopError
from onestop.training.stages import dpo, grpo, kto, orpo, pretrain, rm, sft, simpo
from onestop.training.stages.base import Stage

STAGES: dict[str, Stage] = {
    "sft": sft.STAGE,
    "pretrain": pretrain.STAGE,
    "dpo": dpo.STAGE,
    "kto": kto.STAGE,
    "orpo": orpo.STAGE,
    "simpo": simpo.STAGE,
    "rm": rm.STAGE,
    "grpo": grpo.STAGE,
}


def stage_of(cfg: DictConfig) -> Stage:
    """The stage `cfg.stage` names."""
    if cfg.stage not in STAGES:
        raise OnestopError(f"config key 'stage': expected one of {', '.join(STAGES)}, got {cfg.stage!r}")
    return STAGES[cfg.stage]
