"""Periodic evaluation during training: a small suite every N optimizer steps, logged with the losses."""

from pathlib import Path

from lightning.pytorch.callbacks import Callback
from omegaconf import DictConfig, OmegaConf

from onestop.core.errors import OnestopError
from onestop.evaluation.generation import end_of_turn, in_process_lm
from onestop.evaluation.run import evaluate, suite_config


class PeriodicEvaluation(Callback):
    """Runs `periodic_eval.suite` through lm-eval on the model being trained, on global rank 0."""

    def __init__(
        self,
        every_n_steps: int,
        suite: str,
        path: str | None,
        limit: int | None,
        *,
        model_cfg: DictConfig,
        tokenizer,
        seed: int,
        run_dir: Path,
    ):
        """The `periodic_eval` node's fields, then what the training run knows: its model, tokenizer, seed, dir."""
        self.every_n_steps = every_n_steps
        self.suite = suite_config(suite, path=path, limit=limit, log_samples=False)
        if self.suite.kind in {"mcq", "qa", "ppl", "classify"} and not self.suite.path:
            raise OnestopError(f"periodic_eval.path: suite {suite} needs a file")
        self.config = OmegaConf.create(
            {"eval": self.suite, "model": model_cfg, "seed": seed, "output_dir": str(run_dir), "endpoint": None}
        )
        self.tokenizer = tokenizer
        self.history: list[dict] = []
        self._last_step = 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if step == self._last_step or step % self.every_n_steps:
            return  # gradient accumulation: several batches share one optimizer step
        self._last_step = step
        if not trainer.is_global_zero:
            return
        model = pl_module.model
        was_training, use_cache = model.training, model.config.use_cache
        model.eval()
        model.config.use_cache = True
        try:
            stops = end_of_turn(self.tokenizer) if self.suite.chat_template else []
            lm = in_process_lm(model, self.tokenizer, self.suite.batch_size, stops)
            result = evaluate(self.config, lm=lm, tokenizer=self.tokenizer, quiet=True)
        finally:
            model.config.use_cache = use_cache
            model.train(was_training)
        scores = result.logged(self.suite.name)
        self.history.append({"step": step, **scores})
        if trainer.logger:
            trainer.logger.log_metrics(scores, step=step)
