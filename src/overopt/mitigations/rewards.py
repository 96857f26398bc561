"""Reward sources (one proxy RM, an ensemble of them) and per-sequence reward transforms."""

from __future__ import annotations

import torch
from transformers import PreTrainedModel

from overopt.mitigations.protocols import RewardScores
from overopt.models.reward import reward_forward, score_head
from overopt.sampling import Rollout


class ProxyRewardModel:
    """r_φ(x, y) of one learned reward model (the lab's proxy)."""

    def __init__(self, model: PreTrainedModel):
        self.model = model.eval()

    @torch.no_grad()
    def __call__(self, rollout: Rollout) -> RewardScores:
        out = reward_forward(self.model, rollout.input_ids, rollout.attention_mask)
        return RewardScores(out.rewards.float(), out.hidden.float(), score_head(self.model).weight[0].float())

    def models(self) -> list[PreTrainedModel]:
        return [self.model]
