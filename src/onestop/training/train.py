"""The training stage: seed -> data -> model -> method -> trainer -> fit -> export -> metrics."""

import contextlib
import pickle
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import lightning as L
import torch
from hydra.utils import instantiate
from lightning.pytorch.callbacks import ModelCheckpoint
from omegaconf import DictConfig

from onestop.core.errors import OnestopError
from onestop.core.rundir import RunDir, job_config
from onestop.data.preference import feedback_as_unpaired
from onestop.data.prepare import prepare
from onestop.data.prompts import PromptDataModule
from onestop.data.report import print_report
from onestop.data.sft import SFTDataModule
from onestop.data.vocabulary import train_tokenizer
from onestop.methods import method_from_config
from onestop.methods.prompt import is_prompt_learning
from onestop.models import load_causal_lm, load_processor, resolve_model_path
from onestop.models.loading import model_type, quantization_config
from onestop.models.precision import weights_dtype
from onestop.models.scratch import fresh_model
from onestop.recipes import data_fingerprints, hardware_facts, provenance, provenance_warnings, recipe_text
from onestop.training.fastpaths import apply_liger_kernels, check_gpu_switches, compile_decoder
from onestop.training.hardware import (
    build_strategy,
    prepare_model_for_hardware,
    shards_weights,
    share_cores,
    trainer_hardware,
)
from onestop.training.loggers import build_logger, finish_failed_run, wandb_sync_hint
from onestop.training.module import TrainingModule
from onestop.training.plan import RunPlan
from onestop.training.progress import progress_bar
from onestop.training.resume import (
    AtomicCheckpointIO,
    SaveOnSignal,
    StoppedBySignal,
    TrainingPosition,
    first_process,
    resume_path,
)
from onestop.training.sharding import full_parameters, parameters_per_rank, weights_sharded
from onestop.training.stages import stage_of
from onestop.training.stages.reference import Reference
from onestop.training.weights import export_trained, start_from_run


@dataclass
class TrainResult:
    run: RunDir
    model: object
    tokenizer: object
    datamodule: object
    metrics: dict

    @property
    def run_dir(self) -> Path:
        return self.run.path


def train(cfg: DictConfig, callbacks: Sequence = ()) -> TrainResult:
    """Fine-tune `cfg.model` on `cfg.data` with `cfg.method`; every artefact lands in `cfg.paths.run_dir`.

    `callbacks`: further Lightning callbacks (benchmarks measuring the steps, a page watching progress).
    While it runs, the run directory is locked: a second run pointed at it refuses (`RunDir.locked`). A directory
    that holds a finished or stopped run refuses too, unless `resume` continues it or `overwrite` replaces it.
    """
    run = RunDir(cfg.paths.run_dir)
    # One process locks for the run: the ranks Lightning or a launcher starts share the directory with it.
    with run.locked() if first_process() else contextlib.nullcontext():
        if first_process():  # the other ranks start once rank 0 has written here
            run.claim(cfg.resume, bool(cfg.get("overwrite")))
        return _train(cfg, run, callbacks)


def _train(cfg: DictConfig, run: RunDir, callbacks: Sequence) -> TrainResult:
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    stage = stage_of(cfg)
    hardware = trainer_hardware(cfg.hardware)
    quantization_config(cfg.method.get("quantization"))  # a 4-bit request on a CPU fails here, before any work
    check_gpu_switches(cfg.train, cfg.hardware)
    share_cores(cfg.hardware)
    run_dir = run.path
    resume_from = resume_path(cfg.resume, run)  # before any work: `resume=auto` with nothing to resume stops here
    if cfg.periodic_eval.every_n_steps and shards_weights(cfg.hardware):
        raise OnestopError(
            f"periodic_eval.every_n_steps: evaluating during training needs the whole model on rank 0, and "
            f"hardware.strategy={cfg.hardware.strategy} shards it; evaluate afterwards with invoke eval run_dir=..."
        )

    model_path = resolve_model_path(cfg.model)
    tokenizer = load_processor(cfg.model, model_path)  # a text model's tokenizer; with images, its processor
    if cfg.model.train_tokenizer:
        if not cfg.model.from_scratch:
            raise OnestopError("model.train_tokenizer: a new vocabulary needs model.from_scratch=true")
        tokenizer = train_tokenizer(tokenizer, cfg.data, cfg.model.train_tokenizer)
    data_cfg = feedback_as_unpaired(cfg.data)  # the web UI's ratings are read as rated answers
    plan = RunPlan.batches(cfg, stage, model_type(cfg.model, model_path))
    online = stage.layout == "prompts"  # prompts only: the stage samples its answers while it trains
    prepared = None if cfg.data.streaming or online else prepare(plan.data(data_cfg), tokenizer, seed=cfg.seed)
    print_report(prepared)
    plan = plan.fitted(cfg, None if plan.packing or prepared is None else prepared.report.max_len or None)
    for line in plan.notes:
        print(line, flush=True)
    run_cfg = plan.run_config(cfg)  # what this run does, `auto` resolved: its config.yaml and recipe
    datamodule = (
        PromptDataModule(plan.data(data_cfg), tokenizer, seed=cfg.seed)
        if online
        else SFTDataModule(
            plan.data(data_cfg),
            tokenizer,
            seed=cfg.seed,
            stage=stage.name,
            accumulate_grad_batches=plan.accumulate_grad_batches,
            layout=stage.layout,
            prepared=prepared,
        )
    )
    datamodule.setup()

    fingerprints = data_fingerprints(datamodule.report.fingerprint, cfg.data, tokenizer, cfg.seed)
    for line in provenance_warnings(cfg.get("provenance"), fingerprints):
        print(line, flush=True)

    if cfg.model.from_scratch:
        model = fresh_model(
            cfg.model, model_path, tokenizer, weights_dtype(hardware["precision"], cfg.hardware.strategy)
        )
    else:
        model = (stage.load_model or load_causal_lm)(
            cfg.model,
            weights_dtype(hardware["precision"], cfg.hardware.strategy),
            model_path,
            quantization=cfg.method.get("quantization"),
        )
    if cfg.init_from:
        model = start_from_run(model, cfg.init_from, cfg.model)
    model = apply_liger_kernels(model, cfg.train)
    reference = Reference.of(model, adapter=cfg.method.adapter) if stage.reference else None
    model = prepare_model_for_hardware(method_from_config(cfg.method)(model), cfg.hardware)
    model = compile_decoder(model, cfg.train)
    if plan.packing and is_prompt_learning(model):
        raise OnestopError("data.packing: virtual tokens of method=ptuning cannot be packed; set data.packing=false")
    hardware["strategy"] = build_strategy(cfg.hardware, model)
    # Counted now: once FSDP shards the model, each rank's parameters are only its part.
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total_params = sum(p.numel() for p in model.parameters())
    model.train()  # from_pretrained returns eval mode; LoRA dropout must be live while training
    objective = stage.objective(run_cfg, model, reference)
    module = TrainingModule(model, objective, instantiate(cfg.optim), instantiate(cfg.scheduler))

    # Created only now: a config, data or model error leaves no half-made run directory behind.
    run.create()
    # Written by the run's first process alone: a rank that starts before it (another node) must not make the
    # directory look like an earlier run to it.
    if first_process():
        run.write_config(run_cfg)
        if datamodule.prepared is not None:  # a streamed corpus is never prepared as a whole
            run.write_data_report(asdict(datamodule.report), datamodule.prepared.directory / "lengths.png")

    logger = build_logger(cfg.logger, run_dir)
    if logger:
        logger.log_hyperparams(job_config(run_cfg))
    trainer, periodic = build_trainer(cfg, run, datamodule, tokenizer, hardware, logger, plan, callbacks)
    if resume_from:
        print(f"resuming from {resume_from}", flush=True)
    started = time.perf_counter()
    try:
        trainer.fit(module, datamodule=datamodule, ckpt_path=resume_from, weights_only=True)
    except BaseException as error:
        finish_failed_run(logger)
        if isinstance(error, StoppedBySignal):
            raise OnestopError(
                f"{error}; continue with: invoke train ... resume=auto hydra.run.dir={run_dir}"
            ) from None
        if resume_from and trainer.global_step == 0 and unreadable_checkpoint(error):
            raise OnestopError(
                f"config key 'resume': {resume_from} is not a readable checkpoint of this model and method "
                f"({' '.join(str(error).split())[:160]}); use resume=auto or another .ckpt"
            ) from error
        raise
    last_validated = module.val_history[-1]["step"] if module.val_history else None
    if datamodule.val_set and last_validated != trainer.global_step:
        trainer.validate(module, datamodule=datamodule, verbose=False)
    in_sync = replicas_in_sync(trainer, model)
    per_rank = parameters_per_rank(trainer, model) if trainer.world_size > 1 else None
    with full_parameters(trainer, model):  # under FSDP every rank joins in; rank 0 receives the weights
        export_dir = export_trained(model, tokenizer, run) if trainer.is_global_zero else None
    if not trainer.is_global_zero:
        return TrainResult(run, model, tokenizer, datamodule, {})

    metrics = {
        "train_loss": module.last_train_loss,
        "val_loss": module.val_history[-1]["val_loss"] if module.val_history else None,
        "val_history": module.val_history,
        "padding": module.padding_history,
        "steps": trainer.global_step,
        "epochs": trainer.current_epoch,
        "tokens_seen": module.tokens_seen,
        "tokens_per_s": module.tokens_seen / max(module.train_seconds, 1e-9),
        "train_seconds": module.train_seconds,
        "wall_seconds": time.perf_counter() - started,
        "trainable_params": trainable,
        "total_params": total_params,
        "precision": hardware["precision"],
        "data": asdict(datamodule.report),
        "export": str(export_dir),
        "world_size": trainer.world_size,
        "replicas_in_sync": in_sync,
        "parameters_per_rank": per_rank,
        "resumed_from": str(resume_from) if resume_from else None,
        "periodic_eval": periodic.history if periodic else [],
        "train_losses": getattr(module, "train_losses", []),
    }
    run.write_metrics(metrics)

    facts = provenance(fingerprints, hardware_facts(trainer), metrics, run_dir)
    run.write_recipe(recipe_text(job_config(run_cfg), facts))
    if logger:
        finish_logger(logger)
    if module.padding_history:
        print(
            f"padding: {module.padding_history[-1]['padding_fraction']:.1%} of the token slots in the last epoch "
            f"(data.packing={str(plan.packing).lower()}, data.padding_free={str(plan.padding_free).lower()})",
            flush=True,
        )
    print(f"Run directory: {run_dir}", flush=True)
    return TrainResult(run, model, tokenizer, datamodule, metrics)


def build_trainer(
    cfg: DictConfig, run: RunDir, datamodule, tokenizer, hardware: dict, logger, plan: RunPlan, callbacks
):
    """The Lightning Trainer of a run: checkpoints in the run directory, resumable position and stop on signal,
    the progress bar, the periodic evaluation if asked; returns it and that evaluation's callback (or None)."""
    checkpoint = ModelCheckpoint(
        dirpath=run.checkpoints_dir,
        filename="step{step:07d}",
        auto_insert_metric_name=False,
        every_n_train_steps=cfg.checkpoint.every_n_steps,
        save_top_k=cfg.checkpoint.keep_last if cfg.checkpoint.every_n_steps else 0,
        monitor="step" if cfg.checkpoint.every_n_steps else None,
        mode="max",
        save_last=True,
    )
    callbacks = [TrainingPosition(datamodule), SaveOnSignal(run), checkpoint, progress_bar(), *callbacks]
    periodic = None
    if cfg.periodic_eval.every_n_steps:
        # The node names its callback (an evaluation suite runner), so training never imports evaluation.
        periodic = instantiate(cfg.periodic_eval)(
            model_cfg=cfg.model, tokenizer=tokenizer, seed=cfg.seed, run_dir=run.path
        )
        callbacks.append(periodic)
    trainer = instantiate(
        cfg.trainer,
        **hardware,
        default_root_dir=str(run.path),
        logger=logger,
        callbacks=callbacks,
        plugins=[AtomicCheckpointIO()],
        accumulate_grad_batches=plan.accumulate_grad_batches,
        use_distributed_sampler=False,  # the resumable sampler shards across ranks itself
        limit_val_batches=1.0 if datamodule.val_set else 0,
    )
    return trainer, periodic


def finish_logger(logger) -> None:
    """Close a successful run's logger, printing how to sync an offline W&B run."""
    logger.finalize("success")
    hint = wandb_sync_hint(logger)
    if hint:
        print(hint)
    if hasattr(logger, "experiment") and hasattr(logger.experiment, "finish"):
        logger.experiment.finish()


def unreadable_checkpoint(error: BaseException) -> bool:
    """Whether loading a checkpoint failed because the file is not one (garbage, cut short) or is another
    model's (its weights do not fit this one)."""
    if isinstance(error, (pickle.UnpicklingError, EOFError)):
        return True
    return isinstance(error, RuntimeError) and any(
        text in str(error) for text in ("PytorchStreamReader", "Error(s) in loading state_dict")
    )


def replicas_in_sync(trainer, model) -> bool | None:
    """With several replicas: whether every rank ends with the same trainable weights.

    None with one process, and under FSDP and ZeRO-3, where each rank holds a different shard rather than
    a replica.
    """
    if trainer.world_size < 2 or weights_sharded(trainer):
        return None
    checksum = torch.stack([p.detach().double().sum() for p in model.parameters() if p.requires_grad]).sum()
    gathered = trainer.strategy.all_gather(checksum.to(trainer.strategy.root_device))
    return bool(torch.all(gathered == gathered[0]))
