"""Reward models: one score per whole sequence, from a sequence-classification head on any zoo model.

    model = load_reward_model(cfg.model)                 # the base with a fresh one-score head (stage=rm trains it)
    scorer = RewardModel.load("runs/train/RM")           # a trained stage=rm run: adapter + head, or full model
    scorer.score(texts) -> list[float]                   # texts as the model saw them (chat template applied)
    scorer.score_replies(prompts, replies) -> list[float]   # a prompt (text or messages) and the reply to score
    score("runs/train/RM", texts) -> list[float]         # the same, loading the run each call

A higher score means a more preferred answer; only differences between scores of answers to the same prompt
mean anything (the Bradley-Terry loss fixes no zero point). The score is the head's output at each text's last
token that is not padding (transformers' sequence classification), so a text is scored as training scored it:
the conversation rendered by the run's own chat template, answer included, with nothing after it.
"""

# Lazy imports: torch, transformers, peft (inside the functions that need them).

from pathlib import Path

from omegaconf import DictConfig

from onestop.core.errors import OnestopError
from onestop.core.rundir import RunDir
from onestop.models.loading import attention_kwargs, load_tokenizer, quantization_config, resolve_model_path


def load_reward_model(model_cfg: DictConfig, dtype: str = "float32", path: str | None = None, quantization=None):
    """The pretrained model with a one-score sequence-classification head (transformers'
    `AutoModelForSequenceClassification`, num_labels=1) in `dtype`; a new head starts from random weights.
    The padding token is the tokenizer's (its end-of-sequence token where it has none), which is how the head
    finds each row's last token."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    bnb = quantization_config(quantization)
    path = path or resolve_model_path(model_cfg)
    extra = {"quantization_config": bnb, "device_map": {"": torch.cuda.current_device()}} if bnb else {}
    extra |= attention_kwargs(model_cfg)
    tokenizer = AutoTokenizer.from_pretrained(
        path, revision=model_cfg.revision, trust_remote_code=model_cfg.trust_remote_code
    )
    try:
        model = AutoModelForSequenceClassification.from_pretrained(
            path,
            num_labels=1,
            revision=model_cfg.revision,
            trust_remote_code=model_cfg.trust_remote_code,
            dtype=getattr(torch, dtype),
            **extra,
        )
    except ValueError as err:  # an architecture transformers has no sequence-classification class for
        raise OnestopError(f"model={model_cfg.name}: no reward head for it ({str(err).splitlines()[0]})") from None
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    model.config.pad_token_id = pad
    model.config.use_cache = False
    return model


def sequence_scores(model, input_ids, attention_mask):
    """The model's score of each row [B] (float32)."""
    return model(input_ids=input_ids, attention_mask=attention_mask).logits.squeeze(-1).float()


class RewardModel:
    """A trained reward model (a stage=rm run) loaded once, scoring texts in batches."""

    def __init__(self, model, tokenizer, max_seq_len: int, batch_size: int = 8):
        self.model, self.tokenizer, self.max_seq_len, self.batch_size = model, tokenizer, max_seq_len, batch_size

    @classmethod
    def load(cls, run_dir: str | Path, device: str = "cpu", batch_size: int = 8) -> "RewardModel":
        """The run's base with its adapter and trained head, or its full model, in eval mode on `device`."""
        from transformers import AutoTokenizer

        run = RunDir.existing(run_dir)
        if not run.is_reward_model():
            raise OnestopError(
                f"run_dir={run.path}: stage={run.config().get('stage')} trained a language model, not a reward "
                "model; train one with invoke train stage=rm"
            )
        model = load_reward_run(run, "bfloat16" if device.startswith("cuda") else "float32").to(device).eval()
        tokenizer = AutoTokenizer.from_pretrained(run.weights().path)
        return cls(model, tokenizer, int(run.config().model.max_seq_len), batch_size)

    @classmethod
    def untrained(cls, model_cfg: DictConfig, seed: int, device: str = "cpu", batch_size: int = 8) -> "RewardModel":
        """The base model with a fresh head (random weights drawn with `seed`): what scores at chance."""
        import torch

        torch.manual_seed(seed)
        dtype = "bfloat16" if device.startswith("cuda") else "float32"
        model = load_reward_model(model_cfg, dtype).to(device).eval()
        return cls(model, load_tokenizer(model_cfg), int(model_cfg.max_seq_len), batch_size)

    def score(self, texts: list[str]) -> list[float]:
        """One score per text, each text exactly as the model reads it (its chat template already applied);
        a text longer than the model's max_seq_len is scored on its first max_seq_len tokens."""
        import torch

        scores: list[float] = []
        device = next(self.model.parameters()).device
        pad = self.model.config.pad_token_id
        for start in range(0, len(texts), self.batch_size):
            rows = [
                self.tokenizer(text, add_special_tokens=False)["input_ids"][: self.max_seq_len]
                for text in texts[start : start + self.batch_size]
            ]
            width = max(len(row) for row in rows)
            ids = torch.full((len(rows), width), pad, dtype=torch.long)
            mask = torch.zeros((len(rows), width), dtype=torch.long)
            for i, row in enumerate(rows):
                ids[i, : len(row)], mask[i, : len(row)] = torch.tensor(row, dtype=torch.long), 1
            with torch.no_grad():
                scores += sequence_scores(self.model, ids.to(device), mask.to(device)).tolist()
        return scores

    def score_replies(self, prompts: list[str | list[dict]], replies: list[str]) -> list[float]:
        """One score per reply to its prompt (a user's text, or a message list ending with the user), rendered
        with the run's chat template as training rendered its pairs."""
        texts = []
        for prompt, reply in zip(prompts, replies, strict=True):
            messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
            messages.append({"role": "assistant", "content": reply})
            texts.append(self.tokenizer.apply_chat_template(messages, tokenize=False))
        return self.score(texts)


def refuse_reward_model(run: RunDir, what: str) -> None:
    """Stop, in one line, where a run is about to be loaded as a language model (`what`: served, exported) and is
    a reward model (stage=rm)."""
    if run.is_reward_model():
        raise OnestopError(
            f"run_dir={run.path}: a reward model (stage=rm) scores answers and does not generate, so it is not {what}; "
            "score with invoke eval run_dir=RUN eval=rm, or onestop.models.reward.RewardModel.load(RUN).score(texts)"
        )


def load_reward_run(run: RunDir, dtype: str = "float32"):
    """A stage=rm run's weights: its base with a one-score head and the adapter (which carries the trained head,
    peft's modules_to_save), or its full sequence-classification model."""
    from peft import PeftModel

    weights = run.weights()
    model_cfg = run.config().model
    if weights.is_adapter:
        return PeftModel.from_pretrained(load_reward_model(model_cfg, dtype), str(weights.path))
    return load_reward_model(model_cfg, dtype, path=str(weights.path))


def score(run_dir: str | Path, texts: list[str], device: str = "cpu") -> list[float]:
    """Scores of `texts` by the reward model trained in `run_dir` (see RewardModel.score); to score many
    batches, load it once with RewardModel.load(run_dir)."""
    return RewardModel.load(run_dir, device).score(texts)
