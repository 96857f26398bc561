"""`repetition_penalty`: r ← r − α·(number of repeated tokens), a common guard against repetition hacks.

A method part is an `overopt.methods.Part`: what it changes (here a reward transform, one of the
plug-in points of overopt.mitigations.protocols), its knobs (`args`, a pydantic model given as
`method_args.repetition_penalty.*`) and the metrics key of its effective strength.
"""

from __future__ import annotations

import torch
from pydantic import BaseModel, ConfigDict, Field

from overopt.methods import MethodContext, Part
from overopt.mitigations.protocols import Mitigations, RewardScores
from overopt.sampling import Rollout


class RepetitionPenaltyArgs(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    alpha: float = Field(0.1, ge=0, description="Reward cost per repeated token.")


def repeated_tokens(completion_ids: torch.Tensor, completion_mask: torch.Tensor, eos_id: int) -> torch.Tensor:
    """(B, T) -> (B,): tokens equal to an earlier token of the same completion (EOS and padding excluded)."""
    content = completion_mask.bool() & (completion_ids != eos_id)
    same = completion_ids.unsqueeze(2) == completion_ids.unsqueeze(1)  # (B, T, T): token t equals token s
    earlier = torch.ones_like(same[0]).tril(-1).bool()  # s < t
    seen_before = (same & earlier & content.unsqueeze(1)).any(2)
    return (seen_before & content).sum(1)


class RepetitionPenalty:
    def __init__(self, alpha: float, eos_id: int):
        self.alpha, self.eos_id = alpha, eos_id

    def __call__(self, rewards: torch.Tensor, rollout: Rollout, scores: RewardScores):
        cost = self.alpha * repeated_tokens(rollout.completion_ids, rollout.completion_mask, self.eos_id)
        cost = cost.to(rewards.dtype)
        share = cost.norm() / (cost.norm() + rewards.norm() + 1e-12)  # how much of the reward signal is ours
        return rewards - cost, {"repetition_penalty/mean": cost.mean().item(), "repetition_penalty/share": share.item()}


def _build(ctx: MethodContext, m: Mitigations) -> None:
    m.reward_transforms.append(RepetitionPenalty(ctx.args.alpha, ctx.testbed.tokenizer.eos_token_id))


repetition_penalty = Part(build=_build, args=RepetitionPenaltyArgs, strength="repetition_penalty/share")
