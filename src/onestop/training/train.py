"""The training stage: seed -> data -> model -> method -> trainer -> fit -> export -> metrics."""

import time
from dataclasses import asdict, dataclass
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from onestop.training.export import export_trained, job_config, write_json, write_text_atomic


@dataclass
class TrainResult:
    run_dir: Path
    model: object
    tokenizer: object
    datamodule: object
    metrics: dict


def train(cfg: DictConfig) -> TrainResult:
    """Fine-tune `cfg.model` on `cfg.data` with `cfg.method`; every artefact lands in `cfg.paths.run_dir`."""
    import lightning as L
    from hydra.utils import instantiate
    from lightning.pytorch.callbacks import ModelCheckpoint

    from onestop.data import SFTDataModule
    from onestop.data.report import copy_data_report, print_report
    from onestop.models import load_causal_lm, load_tokenizer, resolve_model_path
    from onestop.models.loading import quantization_config
    from onestop.training.hardware import trainer_hardware, weights_dtype
    from onestop.training.loggers import wandb_sync_hint
    from onestop.training.module import CausalLMModule
    from onestop.training.progress import progress_bar

    L.seed_everything(cfg.seed, workers=True, verbose=False)
    hardware = trainer_hardware(cfg.hardware)
    quantization_config(cfg.method.get("quantization"))  # a 4-bit request on a CPU fails here, before any work

    model_path = resolve_model_path(cfg.model)
    tokenizer = load_tokenizer(cfg.model, model_path)
    datamodule = SFTDataModule(cfg.data, tokenizer, seed=cfg.seed)
    datamodule.setup()
    print_report(datamodule.prepared)

    model = load_causal_lm(
        cfg.model, weights_dtype(hardware["precision"]), model_path, quantization=cfg.method.get("quantization")
    )
    model = instantiate(cfg.method)(model)
    model.train()  # from_pretrained returns eval mode; LoRA dropout must be live while training
    module = CausalLMModule(model, instantiate(cfg.optim), instantiate(cfg.scheduler))

    # Created only now: a config, data or model error leaves no half-made run directory behind.
    run_dir = Path(cfg.paths.run_dir).absolute()
    run_dir.mkdir(parents=True, exist_ok=True)
    write_text_atomic(run_dir / "config.yaml", OmegaConf.to_yaml(job_config(cfg)))
    copy_data_report(datamodule.prepared, run_dir)

    logger = instantiate(cfg.logger, save_dir=str(run_dir)) if cfg.logger else False
    if logger:
        logger.log_hyperparams(job_config(cfg))
    checkpoint = ModelCheckpoint(dirpath=run_dir / "checkpoints", save_last=True, save_top_k=0)
    trainer = instantiate(
        cfg.trainer,
        **hardware,
        default_root_dir=str(run_dir),
        logger=logger,
        callbacks=[checkpoint, progress_bar()],
        limit_val_batches=1.0 if datamodule.val_set else 0,
    )
    started = time.perf_counter()
    trainer.fit(module, datamodule=datamodule)
    last_validated = module.val_history[-1]["step"] if module.val_history else None
    if datamodule.val_set and last_validated != trainer.global_step:
        trainer.validate(module, datamodule=datamodule, verbose=False)
    export_dir = export_trained(model, tokenizer, run_dir)

    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    metrics = {
        "train_loss": module.last_train_loss,
        "val_loss": module.val_history[-1]["val_loss"] if module.val_history else None,
        "val_history": module.val_history,
        "steps": trainer.global_step,
        "epochs": trainer.current_epoch,
        "tokens_seen": module.tokens_seen,
        "tokens_per_s": module.tokens_seen / max(module.train_seconds, 1e-9),
        "train_seconds": module.train_seconds,
        "wall_seconds": time.perf_counter() - started,
        "trainable_params": trainable,
        "total_params": sum(p.numel() for p in model.parameters()),
        "precision": hardware["precision"],
        "data": asdict(datamodule.report),
        "export": str(export_dir),
    }
    write_json(run_dir / "metrics.json", metrics)
    if logger:
        logger.finalize("success")
        hint = wandb_sync_hint(logger)
        if hint:
            print(hint)
        if hasattr(logger, "experiment") and hasattr(logger.experiment, "finish"):
            logger.experiment.finish()
    print(f"Run directory: {run_dir}", flush=True)
    return TrainResult(run_dir, model, tokenizer, datamodule, metrics)
