"""Losses of a causal LM over a batch's labelled tokens, shared by training and evaluation (no Lightning here).

Labels equal to IGNORE_INDEX (prompts, padding, the first token of each packed example) carry no loss.
"""

# Lazy imports: liger_kernel, cut_cross_entropy (optional GPU kernels, inside the functions that need them).

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from onestop.data.packing import model_inputs
from onestop.data.tokenize import IGNORE_INDEX
from onestop.methods.prompt import is_prompt_learning
from onestop.models.heads import is_plain_head

# A head loss: (hidden states of the labelled positions [N, H], the output head, their targets [N]) -> the
# summed cross-entropy, computed without ever holding the [N, vocabulary] logits whole.
HeadLoss = Callable[[torch.Tensor, torch.nn.Module, torch.Tensor], torch.Tensor]


def token_loss_sum(
    model, batch: dict[str, torch.Tensor], head_loss: HeadLoss | None = None
) -> tuple[torch.Tensor, int]:
    """Summed next-token cross-entropy over the labelled tokens of a batch, and how many there were.

    `head_loss` (ChunkedHeadLoss, LigerHeadLoss, CutCrossEntropyHeadLoss) computes the output head and the loss
    together; it applies to models where `has_plain_head` holds.
    """
    targets = batch["labels"][:, 1:]
    keep = targets != IGNORE_INDEX
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    if is_prompt_learning(model):
        # The adapter prepends virtual tokens inside forward(); the last positions are the real ones.
        logits = model(**model_inputs(batch)).logits
        logits = logits[:, -batch["input_ids"].size(1) : -1]
        logits, flat_targets = logits.reshape(-1, logits.size(-1)), targets.reshape(-1)
    elif has_plain_head(model):
        hidden = base.get_decoder()(**model_inputs(batch)).last_hidden_state[:, :-1][keep]
        flat_targets = targets[keep]
        if head_loss is not None:
            return head_loss(hidden, base.get_output_embeddings(), flat_targets), int(keep.sum())
        logits = base.get_output_embeddings()(hidden)
    else:
        logits = model(**model_inputs(batch)).logits[:, :-1]
        logits, flat_targets = logits.reshape(-1, logits.size(-1)), targets.reshape(-1)
    loss = F.cross_entropy(logits.float(), flat_targets, ignore_index=IGNORE_INDEX, reduction="sum")
    return loss, int(keep.sum())


def has_plain_head(model) -> bool:
    """Whether the model's logits are exactly `lm_head(last_hidden_state)`, with no virtual tokens in front."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return not is_prompt_learning(model) and is_plain_head(base.config)


class ChunkedHeadLoss:
    """The head and cross-entropy `chunk_size` positions at a time; the same loss and gradients as all at once.

    A plain linear head gets its gradients in the forward pass, chunk by chunk (the logits are needed once,
    as in the unchunked backward, so no step gets slower); any other head (an adapter on it, a sharded
    weight) is recomputed chunk by chunk in the backward pass instead (torch.utils.checkpoint).
    """

    def __init__(self, chunk_size: int):
        self.chunk_size = chunk_size

    def __call__(self, hidden: torch.Tensor, head: torch.nn.Module, targets: torch.Tensor) -> torch.Tensor:
        weight = getattr(head, "weight", None)
        plain = type(head) is torch.nn.Linear and head.bias is None
        if plain and weight.shape == (head.out_features, head.in_features):
            if torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad):
                return _ChunkedLinearCrossEntropy.apply(hidden, weight, targets, self.chunk_size)
            return sum(_chunk_loss(h, weight, t) for h, t in _chunks(hidden, targets, self.chunk_size))
        return sum(
            checkpoint(_module_chunk_loss, h, head, t, use_reentrant=False)
            for h, t in _chunks(hidden, targets, self.chunk_size)
        )


def _chunks(hidden: torch.Tensor, targets: torch.Tensor, size: int):
    if hidden.size(0) == 0:  # a batch with no labelled token still returns a loss that backpropagates
        yield hidden, targets
    for start in range(0, hidden.size(0), size):
        yield hidden[start : start + size], targets[start : start + size]


def _chunk_loss(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(F.linear(hidden, weight).float(), targets, reduction="sum")


def _module_chunk_loss(hidden: torch.Tensor, head: torch.nn.Module, targets: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(head(hidden).float(), targets, reduction="sum")


class _ChunkedLinearCrossEntropy(torch.autograd.Function):
    """sum(cross_entropy(hidden @ weight.T, targets)), the gradients computed in the forward pass per chunk.

    Only the [chunk, vocabulary] logits of one chunk exist at a time; what the backward pass keeps is the
    gradient of the hidden states ([N, H]) and, when the head trains, of its weight.
    """

    @staticmethod
    def forward(ctx, hidden, weight, targets, chunk_size):
        grad_hidden = torch.empty_like(hidden) if ctx.needs_input_grad[0] else None
        grad_weight = torch.zeros_like(weight, dtype=torch.float32) if ctx.needs_input_grad[1] else None
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        for start in range(0, hidden.size(0), chunk_size):
            h, t = hidden[start : start + chunk_size], targets[start : start + chunk_size]
            logits = F.linear(h, weight).float()  # under autocast the matmul runs in bf16, as unchunked
            log_norm = torch.logsumexp(logits, dim=-1)
            total += (log_norm - logits.gather(1, t[:, None]).squeeze(1)).sum()
            # d(loss)/d(logits) = softmax - one_hot(target), written into the logits' own memory.
            grad_logits = logits.sub_(log_norm[:, None]).exp_()
            grad_logits[torch.arange(t.size(0), device=t.device), t] -= 1
            # In the weight's dtype, as the unchunked backward multiplies (bf16 weights: bf16 matmuls); casting
            # the [vocabulary, hidden] weight instead would copy it once per chunk.
            grad_logits = grad_logits.to(weight.dtype)
            if grad_hidden is not None:
                grad_hidden[start : start + chunk_size] = grad_logits @ weight
            if grad_weight is not None:
                grad_weight += grad_logits.t() @ h.to(weight.dtype)
        ctx.save_for_backward(grad_hidden, grad_weight)
        ctx.weight_dtype = weight.dtype
        return total

    @staticmethod
    def backward(ctx, grad_total):
        grad_hidden, grad_weight = ctx.saved_tensors
        return (
            None if grad_hidden is None else grad_hidden * grad_total.to(grad_hidden.dtype),
            None if grad_weight is None else (grad_weight * grad_total).to(ctx.weight_dtype),
            None,
            None,
        )


class LigerHeadLoss:
    """Liger's fused linear cross-entropy (a Triton kernel, CUDA): the logits in blocks, never whole."""

    def __call__(self, hidden: torch.Tensor, head: torch.nn.Module, targets: torch.Tensor) -> torch.Tensor:
        from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss

        return LigerFusedLinearCrossEntropyLoss(reduction="sum")(head.weight, hidden, targets)


class CutCrossEntropyHeadLoss:
    """cut-cross-entropy's kernel (CUDA): the logits never leave on-chip memory. Its default filter skips
    gradient entries below bf16 resolution, so gradients match the plain path to bf16 precision, not bit for bit."""

    def __call__(self, hidden: torch.Tensor, head: torch.nn.Module, targets: torch.Tensor) -> torch.Tensor:
        from cut_cross_entropy import linear_cross_entropy

        return linear_cross_entropy(hidden, head.weight, targets, reduction="sum")


def sequence_logps(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Summed log-probability of each row's labelled tokens."""
    return sequence_logps_and_lengths(model, batch)[0]


def sequence_logps_and_lengths(model, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed log-probability of each row's labelled tokens, and how many labelled tokens each row has."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1].float()
    targets = batch["labels"][:, 1:]
    keep = targets != IGNORE_INDEX
    token_logps = torch.gather(F.log_softmax(logits, dim=-1), 2, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return (token_logps * keep).sum(-1), keep.sum(-1)


# Preference losses, per pair (or per example for KTO), from the papers' formulas. Inputs are log-probabilities
# of whole answers: `chosen`/`rejected` of the policy, `ref_*` of the frozen reference.
DPO_LOSS_TYPES = ("sigmoid", "ipo", "hinge")


def dpo_loss(
    chosen: torch.Tensor,
    rejected: torch.Tensor,
    ref_chosen: torch.Tensor,
    ref_rejected: torch.Tensor,
    beta: float,
    loss_type: str = "sigmoid",
    label_smoothing: float = 0.0,
) -> torch.Tensor:
    """DPO and its variants on h = (chosen - ref_chosen) - (rejected - ref_rejected):

    - sigmoid (Rafailov et al. 2023): -log sigmoid(beta h), with label smoothing eps (cDPO):
      -(1 - eps) log sigmoid(beta h) - eps log sigmoid(-beta h);
    - ipo (Azar et al. 2023): (h - 1 / (2 beta))^2, on per-token mean log-probabilities (the caller's choice);
    - hinge (SLiC, Zhao et al. 2023): max(0, 1 - beta h).
    """
    h = (chosen - ref_chosen) - (rejected - ref_rejected)
    if loss_type == "sigmoid":
        return -(1 - label_smoothing) * F.logsigmoid(beta * h) - label_smoothing * F.logsigmoid(-beta * h)
    if loss_type == "ipo":
        return (h - 1 / (2 * beta)) ** 2
    if loss_type == "hinge":
        return torch.relu(1 - beta * h)
    raise ValueError(f"dpo.loss_type={loss_type!r}: expected one of {', '.join(DPO_LOSS_TYPES)}")


def simpo_loss(chosen_mean: torch.Tensor, rejected_mean: torch.Tensor, beta: float, gamma: float) -> torch.Tensor:
    """SimPO (Meng et al. 2024), reference-free: -log sigmoid(beta (chosen_mean - rejected_mean) - gamma), on
    per-token mean log-probabilities, with the target reward margin `gamma`."""
    return -F.logsigmoid(beta * (chosen_mean - rejected_mean) - gamma)


def orpo_odds_loss(chosen_mean: torch.Tensor, rejected_mean: torch.Tensor, beta: float) -> torch.Tensor:
    """ORPO's odds-ratio term (Hong et al. 2024), reference-free, on per-token mean log-probabilities p:
    -beta log sigmoid(log odds(chosen) - log odds(rejected)), where log odds(p) = p - log(1 - exp(p)).
    The full ORPO loss adds the chosen answers' token cross-entropy."""
    log_odds = (chosen_mean - rejected_mean) - (
        torch.log1p(-torch.exp(chosen_mean)) - torch.log1p(-torch.exp(rejected_mean))
    )
    return -beta * F.logsigmoid(log_odds)


def kto_loss(
    logps: torch.Tensor,
    ref_logps: torch.Tensor,
    desirable: torch.Tensor,
    kl: torch.Tensor,
    beta: float,
    desirable_weight: float = 1.0,
    undesirable_weight: float = 1.0,
) -> torch.Tensor:
    """KTO (Ethayarajh et al. 2024) per example, on r = logps - ref_logps and the reference point `kl` (z_ref):
    desirable: w_d (1 - sigmoid(beta (r - kl))); undesirable: w_u (1 - sigmoid(beta (kl - r)))."""
    r = logps - ref_logps
    good = desirable_weight * (1 - torch.sigmoid(beta * (r - kl)))
    bad = undesirable_weight * (1 - torch.sigmoid(beta * (kl - r)))
    return torch.where(desirable.bool(), good, bad)


def pairwise_reward_loss(chosen: torch.Tensor, rejected: torch.Tensor, margin: float = 0.0) -> torch.Tensor:
    """A reward model's Bradley-Terry loss per pair (Ouyang et al. 2022; the margin as in Llama 2):
    -log sigmoid(r_chosen - r_rejected - margin), on the scalar scores r the model gives each whole sequence."""
    return -F.logsigmoid(chosen - rejected - margin)


# GRPO (Shao et al. 2024, DeepSeekMath): rewards of a group of answers sampled for one prompt, turned into
# advantages relative to the group, and a PPO-style clipped objective per answer token.
GRPO_LOSS_TYPES = ("grpo", "dapo", "dr_grpo")


def grpo_advantages(rewards: torch.Tensor, group_size: int, scale: bool = True) -> torch.Tensor:
    """Each reward minus its group's mean, divided by the group's standard deviation (unbiased, + 1e-4) when
    `scale` (Dr. GRPO leaves it out). `rewards`: one per answer, the `group_size` answers of a prompt adjacent."""
    groups = rewards.view(-1, group_size)
    advantages = groups - groups.mean(dim=1, keepdim=True)
    if scale:
        advantages = advantages / (groups.std(dim=1, keepdim=True) + 1e-4)
    return advantages.reshape(-1)


def grpo_loss(
    logps: torch.Tensor,
    old_logps: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    epsilon_low: float,
    epsilon_high: float,
    ref_logps: torch.Tensor | None = None,
    beta: float = 0.0,
    loss_type: str = "grpo",
    max_new_tokens: int | None = None,
) -> tuple[torch.Tensor, int, torch.Tensor, torch.Tensor]:
    """The clipped policy-gradient loss over answer tokens, with an optional KL to the reference:

        ratio = exp(logp - old_logp)    per token: -min(ratio A, clip(ratio, 1 - eps_low, 1 + eps_high) A) + beta kl
        kl = exp(ref - logp) - (ref - logp) - 1          (the k3 estimator, Schulman 2020; >= 0)

    `logps`, `old_logps`, `ref_logps`, `mask`: (answers, tokens); `advantages`: one per answer. Returns the loss
    summed over what `loss_type` averages over, that count, the mean KL per token and the share of tokens clipped:
    grpo averages tokens within each answer, then answers (count: answers); dapo averages every token of the batch
    (count: tokens); dr_grpo divides each answer's token sum by `max_new_tokens` (count: answers)."""
    mask = mask.to(logps.dtype)
    ratio = torch.exp(logps - old_logps)
    advantage = advantages.unsqueeze(1)
    unclipped, clipped = ratio * advantage, torch.clamp(ratio, 1 - epsilon_low, 1 + epsilon_high) * advantage
    per_token = -torch.min(unclipped, clipped)
    tokens = mask.sum().clamp(min=1)
    kl = torch.zeros((), dtype=logps.dtype, device=logps.device)
    if ref_logps is not None:
        delta = ref_logps - logps
        per_token_kl = torch.exp(delta) - delta - 1
        kl = (per_token_kl * mask).sum().detach() / tokens
        if beta:
            per_token = per_token + beta * per_token_kl
    clip_fraction = ((clipped < unclipped).to(logps.dtype) * mask).sum().detach() / tokens
    if loss_type == "grpo":
        loss_sum, count = ((per_token * mask).sum(-1) / mask.sum(-1).clamp(min=1)).sum(), logps.size(0)
    elif loss_type == "dapo":
        loss_sum, count = (per_token * mask).sum(), int(mask.sum())
    elif loss_type == "dr_grpo":
        if not max_new_tokens:
            raise ValueError("grpo_loss: loss_type='dr_grpo' needs max_new_tokens")
        loss_sum, count = (per_token * mask).sum() / max_new_tokens, logps.size(0)
    else:
        raise ValueError(f"grpo_loss: loss_type must be one of {', '.join(GRPO_LOSS_TYPES)}, got {loss_type!r}")
    return loss_sum, count, kl, clip_fraction
