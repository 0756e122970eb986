"""onestop's command line. Start with `invoke demo`, then e.g.:

    invoke train model=qwen method=lora trainer.max_steps=5

Bare KEY=VALUE words after a task are Hydra overrides (see src/onestop/cli.py). Tasks only forward to
src/onestop/; nothing heavy is imported until a task runs.
"""

from invoke import Collection, task

from onestop import cli
from onestop.core.quiet import quiet_third_party

cli.accept_hydra_overrides()
quiet_third_party()


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


@task(iterable=[cli.OVERRIDES_ARG], help=cli.ARG_HELP)
def export(c, overrides=None, cfg=None):
    """Merge a run's adapter into its base (or copy it): invoke export run_dir=DIR [format=adapter]"""
    cli.run_stage("export", overrides, cfg)


@task(name="eval", iterable=[cli.OVERRIDES_ARG], help=cli.ARG_HELP)
@cli.with_config_help("eval")
def evaluate(c, overrides=None, cfg=None):
    """Evaluate a model, a run or an endpoint: invoke eval run_dir=DIR eval=qa eval.path=FILE"""
    cli.run_stage("eval", overrides, cfg)


@task(
    name="compare",
    iterable=[cli.PATHS_ARG],
    help={
        cli.PATHS_ARG: "results.json, an eval output dir, or a run dir (bare words)",
        "output": "PNG path",
        "rank_by": "TASK/METRIC (or a METRIC one task has) to order the results by, best first; default: the first",
    },
)
def eval_compare(c, paths=None, output=None, rank_by=None):
    """Side-by-side table and PNG of evaluations, best first: invoke eval.compare DIR_A DIR_B --rank-by qa/token_f1"""
    cli.run("eval.compare", paths, output, rank_by)


@task(name="deploy", iterable=[cli.OVERRIDES_ARG], help=cli.ARG_HELP)
@cli.with_config_help("deploy")
def deploy(c, overrides=None, cfg=None):
    """Serve a run or model behind an OpenAI API: invoke deploy run_dir=DIR [deploy=lmdeploy] [port=8000]"""
    cli.run_stage("deploy", overrides, cfg)


@task(name="stop", iterable=[cli.OVERRIDES_ARG], help=cli.ARG_HELP)
def deploy_stop(c, overrides=None, cfg=None):
    """Stop deployments: invoke deploy.stop [name=NAME]"""
    cli.run_stage("deploy.stop", overrides, cfg)


@task(name="status", iterable=[cli.OVERRIDES_ARG], help=cli.ARG_HELP)
def deploy_status(c, overrides=None, cfg=None):
    """List deployments with their URL and health: invoke deploy.status"""
    cli.run_stage("deploy.status", overrides, cfg)


@task(name="setup", iterable=[cli.OVERRIDES_ARG], help=cli.ARG_HELP)
def deploy_setup(c, overrides=None, cfg=None):
    """Create (once) a backend's isolated environment: invoke deploy.setup [deploy=vllm] (default lmdeploy)"""
    cli.run_stage("deploy.setup", overrides, cfg)


@task(iterable=[cli.OVERRIDES_ARG], help=cli.ARG_HELP)
def chat(c, overrides=None, cfg=None):
    """Chat with a deployment in the terminal: invoke chat [prompt="one question"] [name=NAME]"""
    cli.run_stage("chat", overrides, cfg)


@task(iterable=[cli.OVERRIDES_ARG], help=cli.ARG_HELP)
@cli.with_config_help("agent")
def agent(c, overrides=None, cfg=None):
    """An agent that calls tools through a served model: invoke agent task="What is 17 * 23?" [run_dir=RUN]"""
    cli.run_stage("agent", overrides, cfg)


@task(iterable=[cli.OVERRIDES_ARG], help={cli.OVERRIDES_ARG: cli.ARG_HELP[cli.OVERRIDES_ARG]})
@cli.with_config_help()
def sweep(c, overrides=None):
    """Hyperparameter sweep: invoke sweep model=tiny method.r=4,8 optim.lr=1e-4,3e-4 [sweeper=optuna]"""
    cli.run("sweep", overrides)


@task(name="diff", iterable=[cli.PATHS_ARG], help={cli.PATHS_ARG: "two recipe names, files or run directories"})
def recipe_diff(c, paths=None):
    """What differs between two recipes or runs: invoke recipe.diff RUN_A RUN_B"""
    cli.run("recipe.diff", *(paths or []))


@task(name="prepare", iterable=[cli.OVERRIDES_ARG], help=cli.ARG_HELP)
@cli.with_config_help()
def data_prepare(c, overrides=None, cfg=None):
    """Validate, tokenize and cache a dataset, with a report: invoke data.prepare data=alpaca data.path=FILE"""
    cli.run_stage("data.prepare", overrides, cfg)


@task(name="qa", iterable=[cli.OVERRIDES_ARG], help=cli.ARG_HELP)
def data_qa(c, overrides=None, cfg=None):
    """Question-answer pairs from your documents: invoke data.qa source='docs/*.md' endpoint.model=NAME"""
    cli.run_stage("data.qa", overrides, cfg)


@task(
    name="train",
    iterable=[cli.OVERRIDES_ARG],
    help={
        cli.OVERRIDES_ARG: cli.ARG_HELP[cli.OVERRIDES_ARG],
        "steps": "optimizer steps per run",
        "precisions": "comma-separated Lightning precisions to compare",
        "variants": "semicolon-separated sets of overrides to compare, e.g. 'data.packing=false;data.packing=true'",
        "alpaca-like": "train on N generated records with Alpaca's spread of lengths (0: the config's data)",
        "output": "results folder (default runs/bench/train/TIME)",
    },
)
def bench_train(c, overrides=None, steps=10, precisions="32-true,bf16-mixed", variants="", alpaca_like=0, output=None):
    """Benchmark training throughput and memory: invoke bench.train model=gemma3_270m data.batch_size=8"""
    cli.run("bench.train", overrides, steps, precisions, variants, alpaca_like, output)


@task(
    name="trainers",
    iterable=[cli.OVERRIDES_ARG],
    help={**cli.ARG_HELP, "variants": 'more onestop rows, ";"-separated overrides: "data.padding_free=false"'},
)
@cli.with_config_help()
def bench_trainers(c, overrides=None, cfg=None, variants=""):
    """Same recipe trained by onestop and by transformers' Trainer, scored alike: invoke bench.trainers"""
    cli.run_trainers_benchmark(overrides, variants, cfg)


@task(name="agents", iterable=[cli.OVERRIDES_ARG], help=cli.ARG_HELP)
@cli.with_config_help("agent")
def bench_agents(c, overrides=None, cfg=None):
    """Agent libraries on the same tasks, tools and served model: invoke bench.agents run_dir=RUN"""
    cli.run_stage("bench.agents", overrides, cfg)


@task(help={"json": "print the rows as JSON"})
def models(c, json=False):
    """The model zoo: parameters, layers, vocabulary, context, template, tool format, licence, offline?"""
    cli.run("models", json)


@task(
    iterable=[cli.OVERRIDES_ARG],
    help={
        cli.OVERRIDES_ARG: cli.ARG_HELP[cli.OVERRIDES_ARG],
        "json": "print the estimates as JSON",
        "devices": "comma-separated GPUs to estimate for (e.g. a100,h100); default all common ones",
    },
)
@cli.with_config_help()
def estimate(c, overrides=None, json=False, devices=None):
    """Peak memory and time of a training run before it starts: invoke estimate model=qwen7b method=lora"""
    cli.run_stage("estimate", overrides, None, json, devices)


@task(
    name="estimate",
    help={
        "models": "comma-separated: tiny, gemma3_270m",
        "steps": "optimizer steps per row",
        "output": "results folder (default runs/bench/estimate/TIME)",
    },
)
def bench_estimate(c, models="tiny,gemma3_270m", steps=4, output=None):
    """Estimated vs measured peak memory and step time over a grid of methods, lengths, checkpointing"""
    cli.run("bench.estimate", models, steps, output)


@task(
    name="load",
    iterable=[cli.OVERRIDES_ARG],
    help={
        cli.OVERRIDES_ARG: "what to deploy, as for invoke deploy: run_dir=RUN or model=NAME, deploy.* settings",
        "requests": "chat requests in all",
        "concurrency": "clients sending at once",
        "output": "results folder (default runs/bench/load/TIME)",
    },
)
def bench_load(c, overrides=None, requests=1000, concurrency=32, output=None):
    """Load and abuse test of a fresh deployment: invoke bench.load run_dir=RUN (one in ten requests malformed)"""
    cli.run("bench.load", overrides, requests, concurrency, output)


@task(
    name="serve",
    iterable=[cli.OVERRIDES_ARG],
    help={
        cli.OVERRIDES_ARG: "what to serve, as for invoke deploy: model=NAME (default tiny) or run_dir=RUN, deploy.*",
        "concurrency": "comma-separated numbers of clients sending at once",
        "requests": "streamed requests per concurrency (at least the concurrency) and sequential prompts",
        "max_tokens": "tokens each answer may have (greedy)",
        "output": "results folder (default runs/bench/serve/TIME)",
    },
)
def bench_serve(c, overrides=None, concurrency="1,8,32", requests=32, max_tokens=32, output=None):
    """Deployment vs its backend vs sequential generate: tok/s, TTFT p50/p99: invoke bench.serve model=gemma3_270m"""
    cli.run("bench.serve", overrides, concurrency, requests, max_tokens, output)


@task(
    name="startup",
    help={
        "runs": "fresh processes per command (the median is reported)",
        "models": "comma-separated models whose first training step is timed",
        "output": "results folder (default runs/bench/startup/TIME)",
    },
)
def bench_startup(c, runs=5, models="tiny,gemma3_270m", output=None):
    """Time of invoke --list, --cfg job and a first training step, median of fresh runs: invoke bench.startup"""
    cli.run("bench.startup", runs, models, output)


@task(
    name="data",
    help={
        "sizes": "comma-separated numbers of generated alpaca rows",
        "model": "model option whose tokenizer prepares the data",
        "output": "results folder (default runs/bench/data/TIME)",
    },
)
def bench_data(c, sizes="10000,100000,1000000", model="gemma3_270m", output=None):
    """data.prepare time and peak memory as rows grow: invoke bench.data --sizes 10000,100000"""
    cli.run("bench.data", sizes, model, output)


@task(
    name="ui",
    iterable=["runs"],
    help={
        "host": "address to bind; anything but loopback needs a token",
        "port": "port to serve on",
        "runs": "a folder of runs to show (repeatable; default runs/)",
        "token": "token requests must carry (default $ONESTOP_UI_TOKEN)",
    },
)
def ui_serve(c, host="127.0.0.1", port=8765, runs=None, token=None):
    """Web UI: runs, a run's curves, compare, new run, data preview: invoke ui [--runs DIR] (prints its URL)"""
    cli.run("ui", host, port, runs, token)


@task(name="screenshots", help={"output": "folder for the ui-*.png files"})
def ui_screenshots(c, output="docs/images"):
    """A screenshot of each UI page, from a tiny run trained for it (needs /usr/bin/chromium): invoke ui.screenshots"""
    cli.run("ui.screenshots", output)


@task(name="runs", iterable=["runs"], help={"runs": "a folder of runs (repeatable; default runs/)", "json": "as JSON"})
def list_runs(c, runs=None, json=False):
    """Every run: model, method, data, status, steps, losses, eval scores, wall time: invoke runs [--json]"""
    cli.run("runs", runs, json)


@task(
    name="gpu",
    help={
        "smoke": "the same code path at the smallest size, on CPU (the tiny architecture; CUDA-only parts skipped)",
        "output": "results folder (default runs/bench/gpu/TIME); gpu.json and gpu.md also go to $OUT when set",
        "budget": "seconds for all parts together (default 480; 4x with --smoke); a part gets at most what is left",
        "parts": "comma-separated parts to run (setup always runs): lora_fast,hf_lora,lora,full_fast,full,qlora,"
        "fsdp,deepspeed_zero2,lmdeploy,pytest_gpu",
        "batch": "sequences per step (default 2 x 2048 tokens; 2 x 128 with --smoke)",
        "steps": "optimizer steps per training part (default 16, the first 4 not timed)",
    },
)
def bench_gpu(c, smoke=False, output=None, budget=None, parts=None, batch=None, steps=None):
    """Every GPU path in one run (tokens/s, MFU, peak memory, HF Trainer ratio, QLoRA, FSDP, DeepSpeed, LMDeploy,
    pytest -m gpu): invoke bench.gpu [--smoke]"""
    cli.run("bench.gpu", smoke, output, budget, parts, batch, steps)


@task(
    name="report",
    iterable=[cli.PATHS_ARG],
    help={cli.PATHS_ARG: "the gpu.json of a GPU run (or its folder)", "docs": "default docs/benchmarks.md"},
)
def bench_gpu_report(c, paths=None, docs=None):
    """Put a GPU run's figures into docs/benchmarks.md's bench.gpu table: invoke bench.gpu.report runs/bench/gpu/TIME"""
    cli.run("bench.gpu.report", paths[0] if len(paths or []) == 1 else "", docs)  # none or several: a one-line error


@task(
    name="wheels",
    help={
        "dest": "folder to fill (default .gpu-wheels/, ignored by git)",
        "python": "the GPU machine's Python version",
        "cuda": "torch's CUDA version there, without the dot (bitsandbytes keeps only that build)",
    },
)
def bench_gpu_wheels(c, dest=None, python="3.12", cuda="130"):
    """Download the wheels a GPU machine without internet needs for invoke bench.gpu: invoke bench.gpu.wheels"""
    cli.run("bench.gpu.wheels", dest, python, cuda)


@task(
    name="eval",
    help={
        "models": "comma-separated model options",
        "rows": "held-out questions per evaluation (0: all 81)",
        "workers": "comma-separated eval.workers to time",
        "concurrency": "comma-separated eval.concurrency to time against a tiny deployment (empty: skip)",
        "output": "results folder (default runs/bench/eval/TIME)",
    },
)
def bench_eval(c, models="tiny,gemma3_270m", rows=0, workers="1,2", concurrency="1,4,8", output=None):
    """Evaluation speed: stop-aware generation vs lm-eval's, eval.workers, eval.concurrency: invoke bench.eval"""
    cli.run("bench.eval", models, rows, workers, concurrency, output)


evaluation = Collection("eval")
evaluation.add_task(evaluate, default=True)
evaluation.add_task(eval_compare)
serve = Collection("deploy")
serve.add_task(deploy, default=True)
for subtask in (deploy_stop, deploy_status, deploy_setup):
    serve.add_task(subtask)
data = Collection("data", data_prepare, data_qa)
bench = Collection("bench", bench_train, bench_trainers, bench_agents, bench_estimate, bench_load, bench_eval)
for subtask in (bench_serve, bench_startup, bench_data):
    bench.add_task(subtask)
gpu = Collection("gpu")
gpu.add_task(bench_gpu, default=True)
gpu.add_task(bench_gpu_report)
gpu.add_task(bench_gpu_wheels)
bench.add_collection(gpu)
ns = Collection(train, demo, export, evaluation, serve, chat, agent, sweep, data, bench, models, estimate)
ns.add_collection(Collection("recipe", recipe_diff))
ui = Collection("ui")
ui.add_task(ui_serve, default=True)
ui.add_task(ui_screenshots)
ns.add_collection(ui)
ns.add_task(list_runs)
