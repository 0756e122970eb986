"""stage=rm: a reward model. A one-score head on the model (transformers' sequence classification) learns to
score each pair's chosen answer above its rejected one, with the Bradley-Terry loss (Ouyang et al. 2022):

    loss = -log sigmoid(r(chosen) - r(rejected) - margin)      r: the score of the whole conversation

`rm.margin` asks for a gap (Llama 2 uses one per pair from annotators' confidence; here one for all pairs).
With method=lora the head trains whole beside the adapter (peft's modules_to_save) and both are saved in
RUN/adapter; full methods save RUN/model. The run's config says stage: rm, which evaluation and deployment read
(onestop.core.rundir.RunDir.is_reward_model): `invoke eval run_dir=RUN eval=rm` scores it, and
onestop.models.reward.RewardModel loads it to score texts.
"""

import torch
from omegaconf import DictConfig

from onestop.core.errors import OnestopError
from onestop.losses import pairwise_reward_loss
from onestop.models.reward import load_reward_model, sequence_scores
from onestop.training.stages.base import Stage, Terms


class PairwiseRewardLoss:
    def __init__(self, cfg: DictConfig, model: torch.nn.Module, reference: None = None):
        if cfg.model.from_scratch:
            raise OnestopError("model.from_scratch: stage=rm puts a score head on a pretrained model; set it false")
        if cfg.periodic_eval.every_n_steps:
            raise OnestopError(
                "periodic_eval.every_n_steps: a reward model does not generate; set it to 0 and score the run "
                "afterwards with invoke eval run_dir=RUN eval=rm eval.path=PAIRS"
            )
        if not any(p.requires_grad for name, p in model.named_parameters() if "score" in name.split(".")):
            raise OnestopError(
                f"method={cfg.method.name}: stage=rm's score head is new and must train, and this method leaves it "
                "frozen; use method=lora or method=full (method=freeze: add score to method.trainable_modules)"
            )
        self.margin = cfg.rm.margin

    def __call__(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> Terms:
        scores = sequence_scores(model, batch["input_ids"], batch["attention_mask"])
        n = scores.size(0) // 2  # the N chosen answers, then the N rejected ones (onestop.data.batching)
        chosen, rejected = scores[:n], scores[n:]
        losses = pairwise_reward_loss(chosen, rejected, self.margin)
        margin = (chosen - rejected).detach()
        return Terms(
            losses.sum(),
            n,
            {
                "chosen_score": chosen.detach().mean(),
                "rejected_score": rejected.detach().mean(),
                "margin": margin.mean(),
                "accuracy": (margin > 0).float().mean(),
            },
        )


STAGE = Stage(
    name="rm",
    layout="pairs",
    objective=PairwiseRewardLoss,
    scored_whole="preference pair",
    load_model=load_reward_model,
)
