"""The LightningModule: one causal LM, its optimizer and schedule, and the stage's batch -> loss
(onestop.training.stages); validation averages each micro-batch's loss weighted by what it counts."""

import time
from collections.abc import Callable

import lightning as L
import torch

from onestop.core.errors import OnestopError
from onestop.data.packing import real_token_mask
from onestop.data.windows import STEP_TOKENS
from onestop.training.sharding import clean_name, is_sharded
from onestop.training.stages.base import Objective


class TrainingModule(L.LightningModule):
    """Trains whatever parameters of `model` require grad on `objective`; checkpoints hold only those."""

    def __init__(
        self,
        model: torch.nn.Module,
        objective: Objective,
        optimizer: Callable,
        scheduler: Callable | None = None,
    ):
        super().__init__()
        self.model = model
        self.objective = objective
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.strict_loading = False  # checkpoints omit the frozen base weights
        self.tokens_seen = 0
        self.last_train_loss: float | None = None
        self.train_losses: list[float] = []
        self.train_seconds = 0.0
        self._step_started = 0.0
        self._val_loss_sum = 0.0
        self._val_count = 0
        self._val_logged: dict[str, float] = {}
        self.val_history: list[dict] = []
        self._epoch_slots = 0
        self._epoch_padding = 0
        self.padding_history: list[dict] = []

    def on_train_epoch_end(self) -> None:
        # Share of the token slots in this epoch's batches that held padding: what packing saves.
        fraction = self._epoch_padding / max(self._epoch_slots, 1)
        self.log("train/padding_fraction", fraction, on_step=False, on_epoch=True)
        self.padding_history.append({"epoch": self.current_epoch, "padding_fraction": fraction})
        self._epoch_slots = self._epoch_padding = 0

    def on_train_batch_start(self, batch, batch_idx: int) -> None:
        self._step_started = time.perf_counter()

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        terms = self.objective(self.model, batch)
        mean_loss = terms.loss_sum.detach() / max(terms.count, 1)
        self.last_train_loss = float(mean_loss)
        self.train_losses.append(self.last_train_loss)
        self.log("train/loss", mean_loss, on_step=True, on_epoch=False)
        for name, value in terms.logged.items():
            self.log(f"train/{name}", value, on_step=True, on_epoch=False)
        self.log("loss", mean_loss, prog_bar=True, logger=False, on_step=True, on_epoch=False)
        if "accuracy" in terms.logged:
            self.log("acc", terms.logged["accuracy"], prog_bar=True, logger=False, on_step=True, on_epoch=False)
        if "reward" in terms.logged:  # online RL: its loss stays near 0 by construction; the reward is what moves
            self.log("reward", terms.logged["reward"], prog_bar=True, logger=False, on_step=True, on_epoch=False)
        self.log("train/lr", self.optimizers().param_groups[0]["lr"], on_step=True, on_epoch=False)
        return terms.loss_sum * self.step_loss_scale(batch, terms.count)

    def step_loss_scale(self, batch: dict[str, torch.Tensor], count: int) -> torch.Tensor | float:
        """What turns this micro-batch's summed loss into its share of the step's mean over every labelled token.

        The frameworks divide what training_step returns by the accumulation steps (Lightning, and DeepSpeed
        once more) and average gradients over ranks; this undoes both and divides by the tokens of the whole
        step on every rank (onestop.data.windows). A batch without the count (a loader of pairs or rated answers,
        a custom loader) keeps its own mean over `count`.
        """
        if STEP_TOKENS not in batch:
            return 1.0 / max(count, 1)
        trainer = self.trainer
        step_tokens = trainer.strategy.reduce(batch[STEP_TOKENS].clone(), reduce_op="sum")
        divided_by = trainer.accumulate_grad_batches * (
            trainer.accumulate_grad_batches if trainer.strategy.handles_gradient_accumulation else 1
        )
        return divided_by * trainer.world_size / step_tokens.clamp(min=1)

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        self.train_seconds += time.perf_counter() - self._step_started
        real = real_token_mask(batch)
        self.tokens_seen += int(real.sum())
        self._epoch_slots += real.numel()
        self._epoch_padding += int((real == 0).sum())
        rate = self.tokens_seen / max(self.train_seconds, 1e-9)
        self.log("train/tokens_per_s", rate, on_step=True, on_epoch=False)
        self.log("tok/s", rate, prog_bar=True, logger=False, on_step=True, on_epoch=False)
        self.log("tokens", float(self.tokens_seen), prog_bar=True, logger=False, on_step=True, on_epoch=False)

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        with torch.no_grad():
            terms = self.objective(self.model, batch)
        # Sums weighted by what each batch counts, so the epoch value does not depend on how batches split.
        self._val_loss_sum += float(terms.loss_sum)
        self._val_count += terms.count
        for name, value in terms.logged.items():
            self._val_logged[name] = self._val_logged.get(name, 0.0) + float(value) * terms.count

    def on_validation_epoch_end(self) -> None:
        count = max(self._val_count, 1)
        val_loss = self._val_loss_sum / count
        for name, total in self._val_logged.items():
            self.log(f"val/{name}", total / count)
        self.log("val/loss", val_loss, prog_bar=True)
        if not self.trainer.sanity_checking and not any(h["step"] == self.global_step for h in self.val_history):
            self.val_history.append({"step": self.global_step, "val_loss": val_loss})
        self._val_loss_sum, self._val_count, self._val_logged = 0.0, 0, {}

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None) -> None:
        if gradient_clip_val and is_sharded(self.trainer):
            # Each rank holds a shard of the gradients: FSDP's own clip computes the norm across all of them.
            self.trainer.strategy.model.clip_grad_norm_(gradient_clip_val)
            return
        super().configure_gradient_clipping(optimizer, gradient_clip_val, gradient_clip_algorithm)

    def configure_optimizers(self):
        params = [p for p in self.model.parameters() if p.requires_grad]
        optimizer = self.optimizer_factory(params)
        if self.scheduler_factory is None:
            return optimizer
        scheduler = self.scheduler_factory(optimizer, total_steps=self.trainer.estimated_stepping_batches)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def trainable_keys(self) -> set[str]:
        """Names in a checkpoint's state_dict of the weights this run trains."""
        return {f"model.{clean_name(name)}" for name, p in self.model.named_parameters() if p.requires_grad}

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        trainable = self.trainable_keys()
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in trainable}
        checkpoint["onestop_counters"] = {
            "tokens_seen": self.tokens_seen,
            "train_seconds": self.train_seconds,
            "val_history": self.val_history,
            "train_losses": self.train_losses,
        }

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        # Loading is not strict (the frozen base is not in checkpoints), so a checkpoint of another model or
        # method would load nothing, silently, and fail later on its optimizer state with a traceback.
        # DeepSpeed checkpoints hold their weights elsewhere; FSDP names them per shard.
        state = checkpoint.get("state_dict")
        if state is not None and not is_sharded(self.trainer):
            expected = self.trainable_keys()
            missing = sorted(expected - state.keys())
            if missing:
                raise OnestopError(
                    f"config key 'resume': the checkpoint lacks {len(missing)} of the {len(expected)} weights this "
                    f"model and method train (e.g. {missing[0]}): it was saved by another model or method"
                )
        counters = checkpoint.get("onestop_counters", {})
        self.tokens_seen = counters.get("tokens_seen", 0)
        self.train_seconds = counters.get("train_seconds", 0.0)
        self.val_history = list(counters.get("val_history", []))
        self.train_losses = list(counters.get("train_losses", []))
