"""stage=grpo: Group Relative Policy Optimization (Shao et al. 2024) on rewards a program checks.

For each prompt of the batch (data=prompts), `rl.num_generations` answers are sampled from the current policy
(`model.generate`, in this process, with its KV cache), scored by the rewards `rl.rewards` names
(onestop.training.rewards), and each answer's advantage is its reward relative to its group's:

    A = (r - mean(group)) / std(group)                       (rl.scale_rewards=false: r - mean(group), Dr. GRPO)
    per token: -min(ratio A, clip(ratio, 1 - epsilon, 1 + epsilon_high) A) + beta KL(policy || reference)

(onestop.losses.grpo_loss). Each batch of samples makes one optimizer step, so the ratio to the sampling
policy is 1 in value and the clip never binds; it is there for its gradient, as in TRL with num_iterations=1.
The reference is the base with the adapter off (a frozen copy for full and freeze methods), as for DPO; its
KL is logged every step and enters the loss only with rl.beta > 0. Rollouts through a served engine (vLLM,
LMDeploy) are not wired: generation runs here, on the device that trains.
"""

import statistics
import time

import torch
import torch.nn.functional as F
from omegaconf import DictConfig

from onestop.core.errors import OnestopError
from onestop.losses import grpo_advantages, grpo_loss
from onestop.models import load_processor, resolve_model_path
from onestop.training.rewards import rewards_from_config, score
from onestop.training.stages.base import Stage, Terms
from onestop.training.stages.reference import Reference


def completion_logps(model: torch.nn.Module, sequences: torch.Tensor, mask: torch.Tensor, prompt_len: int):
    """Log-probability of each completion token (the positions after `prompt_len`) given what precedes it."""
    logits = model(input_ids=sequences, attention_mask=mask).logits[:, prompt_len - 1 : -1].float()
    targets = sequences[:, prompt_len:]
    return torch.gather(F.log_softmax(logits, dim=-1), 2, targets.unsqueeze(-1)).squeeze(-1)


class GRPOLoss:
    def __init__(self, cfg: DictConfig, model: torch.nn.Module, reference: Reference | None):
        self.rl, self.reference = cfg.rl, reference
        if self.rl.num_generations < 2:
            raise OnestopError(
                "config key 'rl.num_generations': GRPO compares answers within a group; "
                f"got {self.rl.num_generations}, need at least 2"
            )
        self.rewards = rewards_from_config(cfg.rl)  # a bad name stops here, before the first step
        self.tokenizer = load_processor(cfg.model, resolve_model_path(cfg.model))
        ends = model.generation_config.eos_token_id if hasattr(model, "generation_config") else None
        ends = [ends] if isinstance(ends, int) else list(ends or [])
        if self.tokenizer.eos_token_id is not None:
            ends.append(self.tokenizer.eos_token_id)
        self.eos = sorted(set(ends))
        self.pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.eos[0]
        self.failures: dict[str, int] = {}

    def sample(self, model: torch.nn.Module, batch: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """`rl.num_generations` answers per prompt: the prompts and answers as one sequence, its attention mask, and
        the mask of each answer's tokens (up to and including its end-of-sequence token)."""
        group = self.rl.num_generations
        prompt_ids = batch["input_ids"].repeat_interleave(group, dim=0)
        prompt_mask = batch["attention_mask"].repeat_interleave(group, dim=0)
        was_training = model.training
        model.eval()  # no dropout while sampling
        try:
            with torch.no_grad():
                sequences = model.generate(
                    input_ids=prompt_ids,
                    attention_mask=prompt_mask,
                    do_sample=True,
                    temperature=self.rl.temperature,
                    top_p=self.rl.top_p,
                    top_k=0,
                    max_new_tokens=self.rl.max_new_tokens,
                    eos_token_id=self.eos,
                    pad_token_id=self.pad,
                )
        finally:
            model.train(was_training)
        answers = sequences[:, prompt_ids.size(1) :]
        ended = torch.isin(answers, torch.tensor(self.eos, device=answers.device))
        # An answer's tokens run through its first end-of-sequence token; what generate padded after it is masked.
        first_end = torch.where(ended.any(1), ended.int().argmax(1), answers.size(1))
        answer_mask = (torch.arange(answers.size(1), device=answers.device)[None, :] <= first_end[:, None]).long()
        return sequences, torch.cat([prompt_mask, answer_mask], dim=1), answer_mask

    def __call__(self, model: torch.nn.Module, batch: dict) -> Terms:
        group, prompt_len = self.rl.num_generations, batch["input_ids"].size(1)
        started = time.perf_counter()
        sequences, mask, answer_mask = self.sample(model, batch)
        sampled = time.perf_counter()
        answers = sequences[:, prompt_len:]
        texts = self.tokenizer.batch_decode(
            answers * answer_mask + self.pad * (1 - answer_mask), skip_special_tokens=True
        )
        prompts = [p for p in batch["prompts"] for _ in range(group)]
        records = [f for f in batch["fields"] for _ in range(group)]
        per_reward, totals, failures = score(self.rewards, prompts, texts, records)
        scored = time.perf_counter()
        for name, count in failures.items():
            self.failures[name] = self.failures.get(name, 0) + count
        rewards = torch.tensor(totals, dtype=torch.float32, device=sequences.device)
        advantages = grpo_advantages(rewards, group, scale=self.rl.scale_rewards)

        logps = completion_logps(model, sequences, mask, prompt_len)
        ref_logps = None
        if self.reference is not None:
            with torch.no_grad(), self.reference.network(model) as reference:
                ref_logps = completion_logps(reference, sequences, mask, prompt_len)
        epsilon_high = self.rl.epsilon_high if self.rl.epsilon_high is not None else self.rl.epsilon
        loss_sum, count, kl, clipped = grpo_loss(
            logps,
            logps.detach(),  # the sampling policy: this same one, before this step's update
            advantages,
            answer_mask,
            self.rl.epsilon,
            epsilon_high,
            ref_logps,
            self.rl.beta,
            self.rl.loss_type,
            self.rl.max_new_tokens,
        )
        batch["token_mask"] = mask  # what this step processed: the prompts and every sampled answer
        group_std = rewards.view(-1, group).std(dim=1)
        logged = {
            "reward": rewards.mean(),
            "reward_std": group_std.mean(),
            "zero_std_fraction": (group_std < 1e-6).float().mean(),
            "kl": kl,
            "clip_fraction": clipped,
            "completion_length": answer_mask.sum(1).float().mean(),
            "generation_seconds": torch.tensor(sampled - started),
            "reward_seconds": torch.tensor(scored - sampled),
        }
        for name, values in per_reward.items():
            logged[f"reward_{name.replace(':', '.')}"] = torch.tensor(statistics.fmean(values))
        if self.failures:
            logged["reward_failures"] = torch.tensor(float(sum(self.failures.values())))
        return Terms(loss_sum, count, logged)


STAGE = Stage(name="grpo", layout="prompts", objective=GRPOLoss, reference=True, scored_whole="sampled answer")
