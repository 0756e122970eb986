"""onestop's command line. Start with `invoke demo`, then e.g.:

    invoke train model=qwen method=lora trainer.max_steps=5

Bare KEY=VALUE words after a task are Hydra overrides (see src/onestop/cli.py). Tasks only forward to
src/onestop/; nothing heavy is imported until a task runs.
"""

from invoke import task

from onestop import cli

cli.accept_hydra_overrides()


@task(iterable=[cli.OVERRIDES_ARG], help=cli.ARG_HELP)
@cli.with_config_help()
def train(c, overrides=None, cfg=None):
    """Fine-tune a model: invoke train model=qwen method=lora [KEY=VALUE ...]"""
    cli.run_stage("train", overrides, cfg)


@task(iterable=[cli.OVERRIDES_ARG], help=cli.ARG_HELP)
@cli.with_config_help()
def demo(c, overrides=None, cfg=None):
    """Offline demo: LoRA-tune Gemma-3-270M on CPU, show held-out loss and answers before vs after."""
    cli.run_stage("demo", overrides, cfg)
