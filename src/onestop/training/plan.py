"""What a run does where its config leaves the choice to onestop, decided once before the model loads.

    plan = RunPlan.batches(cfg, stage, family)     # packing and padding-free batches (`auto` resolved)
    plan = plan.fitted(cfg, longest)               # loss chunks and the pre-flight's micro-batch
    plan.run_config(cfg)                           # the config as this run uses it: its config.yaml

The composed config is never changed; the choices travel as this value to the data module and the trainer.
"""

from dataclasses import dataclass, replace

from omegaconf import DictConfig, OmegaConf

from onestop.core.errors import OnestopError
from onestop.data.packing import resolve_packing, resolve_padding_free
from onestop.training.preflight import memory_preflight, resolve_loss_chunk
from onestop.training.stages.base import Stage


@dataclass(frozen=True)
class RunPlan:
    stage: Stage
    packing: bool
    """Examples packed into rows of data.max_seq_len tokens (data.packing)."""
    padding_free: bool
    """Each micro-batch's examples end to end in one row (data.padding_free)."""
    batch_size: int
    """Examples (or packed rows) per micro-batch on each device (data.batch_size, or the pre-flight's choice for
    data.global_batch_size)."""
    accumulate_grad_batches: int
    """Micro-batches per optimizer step (trainer.accumulate_grad_batches, or the pre-flight's choice)."""
    loss_chunk_size: int | None = None
    """Labelled positions the head and loss take at a time (train.loss_chunk_size); 0: all at once; None: not
    decided yet (`fitted` decides)."""
    notes: tuple[str, ...] = ()
    """Lines the run prints about its choices."""

    @classmethod
    def batches(cls, cfg: DictConfig, stage: Stage, family: str) -> "RunPlan":
        """How examples are batched: `data.packing` and `data.padding_free` resolved for `stage` and the model's
        architecture `family`. A stage that scores whole sequences refuses chunked losses here, before any
        model or data loads."""
        if stage.scored_whole:
            chunk = cfg.train.loss_chunk_size
            switch = (
                "loss_chunk_size"
                if chunk not in (0, "auto")
                else "cut_cross_entropy"
                if cfg.train.cut_cross_entropy
                else None
            )
            if switch:
                raise OnestopError(
                    f"config key 'train.{switch}': stage={stage.name} scores whole sequences with the whole head; "
                    f"set train.{switch}={'0' if switch == 'loss_chunk_size' else 'false'}"
                )
        packing = resolve_packing(cfg, family, stage.one_row_inexact)
        padding_free, note = resolve_padding_free(cfg, family, packing, stage.one_row_inexact)
        return cls(
            stage=stage,
            packing=packing,
            padding_free=padding_free,
            batch_size=int(cfg.data.batch_size),
            accumulate_grad_batches=int(cfg.trainer.accumulate_grad_batches),
            notes=(note,) if note else (),
        )

    def fitted(self, cfg: DictConfig, longest: int | None) -> "RunPlan":
        """The loss chunk (`train.loss_chunk_size=auto`) and, for data.global_batch_size, the micro-batch and
        accumulation that fit this machine; a run that will not fit stops here (hardware.memory_check).
        `longest`: the longest sequence the data makes (None: data.max_seq_len)."""
        planned = self.run_config(cfg)
        chunk = 0 if self.stage.scored_whole else resolve_loss_chunk(planned, longest)
        note, chosen = memory_preflight(self.run_config(cfg, loss_chunk_size=chunk), longest)
        batch_size, accumulation = chosen or (self.batch_size, self.accumulate_grad_batches)
        return replace(
            self,
            loss_chunk_size=chunk,
            batch_size=batch_size,
            accumulate_grad_batches=accumulation,
            notes=(*self.notes, note) if note else self.notes,
        )

    def data(self, data_cfg: DictConfig) -> DictConfig:
        """A new `data` node: `data_cfg` with this plan's batching, as the data module reads it."""
        return OmegaConf.merge(
            data_cfg, {"packing": self.packing, "padding_free": self.padding_free, "batch_size": self.batch_size}
        )

    def run_config(self, cfg: DictConfig, **train) -> DictConfig:
        """A new config: `cfg` with this plan's choices in place of `auto` and of what the pre-flight chose."""
        if self.loss_chunk_size is not None:
            train = {"loss_chunk_size": self.loss_chunk_size, **train}
        return OmegaConf.merge(
            cfg,
            {
                "data": {"packing": self.packing, "padding_free": self.padding_free, "batch_size": self.batch_size},
                "trainer": {"accumulate_grad_batches": self.accumulate_grad_batches},
                "train": train,
            },
        )
