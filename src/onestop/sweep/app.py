"""The Hydra application a sweep runs: one training run per job, returning the sweep objective.

    python -m onestop.sweep.app --multirun model=tiny method.r=4,8 optim.lr=1e-4,3e-4

`invoke sweep` builds this command; Hydra's sweeper (basic grid, or Optuna) and launcher (local,
joblib, submitit, ray) do the rest, each job composing conf/train.yaml like `invoke train` does.
"""

import hydra
from omegaconf import DictConfig

from onestop.config.compose import _setup
from onestop.paths import CONF_DIR

_setup()  # schemas and resolvers, before Hydra composes anything


def objective(cfg: DictConfig, result) -> float:
    """The number a trial reports: a loss from metrics.json, or an eval suite's score on the trained model."""
    from onestop.errors import OnestopError

    name = cfg.sweep.objective
    if name in {"val_loss", "train_loss"}:
        value = result.metrics.get(name)
        if value is None:
            raise OnestopError(f"sweep.objective={name}: the run has none (validation needs data.val_ratio > 0)")
        return float(value)
    if not name.startswith("eval:") or "/" not in name:
        raise OnestopError(f"sweep.objective={name}: expected val_loss, train_loss or eval:SUITE/METRIC")
    from lm_eval.models.huggingface import HFLM

    from onestop.evaluation.run import eval_config, evaluate, suite_config

    suite_name, metric = name.removeprefix("eval:").split("/", 1)
    suite = suite_config(suite_name, path=cfg.sweep.eval_path, limit=cfg.sweep.eval_limit)
    sweep_output = str(result.run_dir / "eval" / "sweep")
    eval_cfg = eval_config(suite, model=cfg.model, hardware=cfg.hardware, seed=cfg.seed, output_dir=sweep_output)
    model = result.model.eval()
    scored = evaluate(eval_cfg, lm=HFLM(pretrained=model, tokenizer=result.tokenizer, batch_size=suite.batch_size))
    flat = scored.flat()
    key = metric if "/" in metric else f"{suite_name}/{metric}"
    if key not in flat:
        raise OnestopError(f"sweep.objective={name}: the suite reports {', '.join(sorted(flat))}")
    return float(flat[key])


@hydra.main(config_path=str(CONF_DIR), config_name="train", version_base="1.3")
def main(cfg: DictConfig) -> float:
    from onestop.training.export import write_json
    from onestop.training.train import train

    result = train(cfg)
    value = objective(cfg, result)
    write_json(result.run_dir / "objective.json", {"objective": cfg.sweep.objective, "value": value})
    return value  # the Optuna sweeper optimises it in hydra.sweeper.direction; the grid just records it


if __name__ == "__main__":
    main()
