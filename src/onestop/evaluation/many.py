"""One suite on several models (or training runs) in one command, ranked side by side at the end.

    invoke eval model=tiny,gemma3_270m eval=classify eval.path=tests/assets/eval/classify_small.jsonl
    invoke eval run_dir=runs/train/A,runs/train/B eval=qa eval.path=FILE hydra.run.dir=runs/pick

Each candidate is evaluated as `invoke eval` would evaluate it alone, into OUT/<name> (OUT: hydra.run.dir,
by default runs/eval/TIME), one after the other; then eval.compare's table and OUT/compare.png.
"""

from pathlib import Path

from onestop.config.compose import compose
from onestop.core.errors import OnestopError
from onestop.evaluation.report import compare
from onestop.evaluation.run import EvalResult, evaluate

RUN_DIR = "hydra.run.dir="


def run_eval_many(key: str, values: list[str], overrides: list[str], rank_by: str | None = None) -> list[EvalResult]:
    """Evaluate with `key=value` (key: model or run_dir) for each of `values`, then compare the results.

    Every config is composed before the first model loads, so a misspelt option fails at once, not after
    the models before it have run.
    """
    given = [o.removeprefix(RUN_DIR) for o in overrides if o.startswith(RUN_DIR)]
    rest = [o for o in overrides if not o.startswith(RUN_DIR)]
    # without run_dir=, the default output is runs/eval/TIME rather than inside one of the runs
    out = Path(given[-1] if given else compose("eval", rest).hydra.run.dir)
    names = _names(key, values)
    candidates = [
        [*rest, f"{key}={value}", f"{RUN_DIR}{out / name}"] for value, name in zip(values, names, strict=True)
    ]
    for candidate in candidates:
        cfg = compose("eval", candidate)
        if cfg.eval.kind == "agent":
            raise OnestopError(f"{key}={','.join(values)}: eval={cfg.eval.name} runs one target per command")
    results = [evaluate(compose("eval", candidate)) for candidate in candidates]
    compare([str(r.output_dir) for r in results], str(out / "compare.png"), rank_by)
    return results


def _names(key: str, values: list[str]) -> list[str]:
    """An output folder per candidate: the model option, or the run directory's name (numbered if repeated)."""
    if len(set(values)) < len(values):
        repeated = next(v for v in values if values.count(v) > 1)
        raise OnestopError(f"{key}={','.join(values)}: {repeated} is listed twice")
    names: list[str] = []
    for value in values:
        name = Path(value).name or value
        names.append(name if name not in names else f"{name}-{len(names) + 1}")
    return names
