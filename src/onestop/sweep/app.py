"""The Hydra application a sweep runs: one training run per job, returning the sweep objective.

    python -m onestop.sweep.app --multirun model=tiny method.r=4,8 optim.lr=1e-4,3e-4

`invoke sweep` builds this command; Hydra's sweeper (basic grid, or Optuna) and launcher (local,
joblib, submitit, ray) do the rest, each job composing conf/train.yaml like `invoke train` does.
"""

import math
import sys
import time

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from onestop.config.compose import _setup
from onestop.core.errors import OnestopError
from onestop.core.paths import CONF_DIR
from onestop.core.rundir import RunDir
from onestop.evaluation.generation import end_of_turn, in_process_lm
from onestop.evaluation.run import eval_config, evaluate, suite_config
from onestop.training.train import train

_setup()  # schemas and resolvers, before Hydra composes anything


TRAIN_OBJECTIVES = ("val_loss", "train_loss")


def check_objective(cfg: DictConfig) -> None:
    """Fail before any trial trains when the objective cannot be measured; the message names the key."""
    name = cfg.sweep.objective
    if name in TRAIN_OBJECTIVES:
        if name == "val_loss" and not cfg.data.val_path and not cfg.data.val_ratio:
            raise OnestopError(
                "sweep.objective=val_loss: the trials hold out no validation data; "
                "set data.val_ratio > 0 or data.val_path, or use sweep.objective=train_loss"
            )
        return
    suite, _, metric = name.removeprefix("eval:").partition("/")
    if not name.startswith("eval:") or not suite or not metric:
        raise OnestopError(f"sweep.objective={name}: expected val_loss, train_loss or eval:SUITE/METRIC")
    suites = sorted(p.stem for p in (CONF_DIR / "eval").glob("*.yaml"))
    if suite not in suites:
        raise OnestopError(f"sweep.objective={name}: no eval suite '{suite}'; choose one of: {', '.join(suites)}")


def objective(cfg: DictConfig, result) -> float:
    """The number a trial reports: a loss from metrics.json, or an eval suite's score on the trained model."""
    name = cfg.sweep.objective
    check_objective(cfg)
    if name in TRAIN_OBJECTIVES:
        value = result.metrics.get(name)
        if value is None:
            raise OnestopError(f"sweep.objective={name}: the run has none (validation needs data.val_ratio > 0)")
        return float(value)
    suite_name, metric = name.removeprefix("eval:").split("/", 1)
    suite = suite_config(suite_name, "sweep.objective", path=cfg.sweep.eval_path, limit=cfg.sweep.eval_limit)
    sweep_output = str(RunDir(result.run_dir).eval_dir / "sweep")
    eval_cfg = eval_config(suite, model=cfg.model, hardware=cfg.hardware, seed=cfg.seed, output_dir=sweep_output)
    model = result.model.eval()
    stops = end_of_turn(result.tokenizer) if suite.chat_template else []
    scored = evaluate(eval_cfg, lm=in_process_lm(model, result.tokenizer, suite.batch_size, stops))
    flat = scored.flat()
    key = metric if "/" in metric else f"{suite_name}/{metric}"
    if key not in flat:
        raise OnestopError(f"sweep.objective={name}: the suite reports {', '.join(sorted(flat))}")
    return float(flat[key])


@hydra.main(config_path=str(CONF_DIR), config_name="train", version_base="1.3")
def main(cfg: DictConfig) -> float:
    started = time.perf_counter()
    try:
        value = objective(cfg, train(cfg))
    except OnestopError as err:
        # One trial's bad luck (a diverged run, a value its data cannot take) must not end the whole sweep:
        # the trial is recorded as failed, and the worst possible value steers Optuna away from it (Optuna
        # 2.x rejects NaN with an exception that would stop the sweep).
        record = {"objective": cfg.sweep.objective, "value": None, "error": str(err)}
        RunDir(cfg.paths.run_dir).write_objective(record | {"seconds": time.perf_counter() - started})
        print(f"onestop sweep: trial {HydraConfig.get().job.num} failed: {err}", file=sys.stderr, flush=True)
        return math.inf if cfg.sweep.direction == "minimize" else -math.inf
    record = {"objective": cfg.sweep.objective, "value": value, "seconds": time.perf_counter() - started}
    RunDir(cfg.paths.run_dir).write_objective(record)
    return value  # the Optuna sweeper optimises it in hydra.sweeper.direction; the grid just records it


if __name__ == "__main__":
    main()
