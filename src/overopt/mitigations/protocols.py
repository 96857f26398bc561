"""The plug-in points through which mitigations enter policy optimisation.

Each mitigation is a small object implementing one of these protocols; `methods.py` builds them
from the config, and `stages/rl.py` calls them at fixed places of its loop. Nothing in the loop
checks a method's name.

  where in the RL step                 protocol            used by
  -----------------------------------  ------------------  -----------------------------------
  2. score the rollouts                RewardSource        single proxy RM, RM ensembles
  2. shape the per-sequence reward     RewardTransform     PAR, reward clipping, length penalty,
                                                           constrained RLHF
  4. transform the advantages         AdvantageTransform  SignCert-PO
  5. add to the policy loss            LossTerm            χ² regularisation
  5. turn the loss into a step         GradientStep        plain step, gradient regularization
  after the step                       ReferenceSchedule   reference resets
  (RM training, between RL rounds)     see mitigations/ocrm.py (OCRM importance weights)
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import NamedTuple, Protocol

import torch
from transformers import PreTrainedModel

from overopt.sampling import Rollout

Figures = dict[str, float]


class StepRewards(NamedTuple):
    """A process reward source's step rewards, where they end, and how they make the return (`rewards` of
    RewardScores is ops.aggregate of these)."""

    rewards: torch.Tensor  # (B, S) step rewards (0 where mask is 0)
    mask: torch.Tensor  # (B, S) 1 where a step is
    tokens: torch.Tensor  # (B, S) the completion position each step ends at
    aggregation: str  # an ops.REWARD_AGGREGATIONS name
    gamma: float  # its step discount


class RewardScores(NamedTuple):
    """What a reward source says about a batch of B rollouts."""

    rewards: torch.Tensor  # (B,) the scalar reward that is optimised
    hidden: torch.Tensor | None = None  # (B, H) final hidden state of the linear head's input
    head_weight: torch.Tensor | None = None  # (H,) w of r = wᵀh + b (SignCert-PO needs it)
    members: torch.Tensor | None = None  # (k, B) per-member rewards of an ensemble
    steps: StepRewards | None = None  # a process reward's steps (PPO turns them into per-token returns)


class RewardSource(Protocol):
    def __call__(self, rollout: Rollout) -> RewardScores: ...

    def models(self) -> list[PreTrainedModel]:
        """The reward models behind the source (for device placement and eval mode)."""
        ...


class RewardTransform(Protocol):
    def __call__(self, rewards: torch.Tensor, rollout: Rollout, scores: RewardScores) -> tuple[torch.Tensor, Figures]:
        """(B,) rewards -> (B,) shaped rewards, plus figures to log."""
        ...


class AdvantageTransform(Protocol):
    def __call__(self, advantages: torch.Tensor, scores: RewardScores, group_size: int) -> tuple[torch.Tensor, Figures]:
        """(B,) sequence advantages of the whole batch (groups of K consecutive rows) -> (B,) the
        advantages the policy loss uses, plus figures (e.g. SignCert-PO's worst-case advantages)."""
        ...


class LossTerm(Protocol):
    name: str  # figures are logged as `<name>/...`, its share of the update as `<name>/penalty_share`

    def __call__(
        self, logprobs: torch.Tensor, ref_logprobs: torch.Tensor, mask: torch.Tensor
    ) -> tuple[torch.Tensor, Figures]:
        """A scalar added to the policy loss, from (B, T) log-probs under π_θ and π_ref."""
        ...


class GradientStep(Protocol):
    def __call__(
        self,
        loss_fn: Callable[[], torch.Tensor],
        params: list[torch.nn.Parameter],
        optimizer: torch.optim.Optimizer,
        step: int,
        max_grad_norm: float,
    ) -> Figures:
        """Compute gradients of `loss_fn()` (re-evaluable on the same inputs) and take one step."""
        ...


class ReferenceSchedule(Protocol):
    def __call__(self, step: int, policy: PreTrainedModel, ref_policy: PreTrainedModel) -> Figures:
        """Called after every update; may move π_ref towards π_θ."""
        ...


def plain_step(
    loss_fn: Callable[[], torch.Tensor],
    params: list[torch.nn.Parameter],
    optimizer: torch.optim.Optimizer,
    step: int,
    max_grad_norm: float,
) -> Figures:
    """The ordinary step: backward, clip the global gradient norm, optimiser step."""
    optimizer.zero_grad(set_to_none=True)
    loss_fn().backward()
    return apply_gradients(params, optimizer, max_grad_norm)


def apply_gradients(
    params: list[torch.nn.Parameter], optimizer: torch.optim.Optimizer, max_grad_norm: float
) -> Figures:
    """Clip the global gradient norm and step, unless a gradient is NaN/Inf: then the update is not
    applied (`train/skipped_nonfinite` = 1) and the caller decides whether to stop or go on."""
    grad_norm = torch.nn.utils.clip_grad_norm_(params, max_grad_norm).item()
    if not math.isfinite(grad_norm):
        optimizer.zero_grad(set_to_none=True)
        return {"train/grad_norm": grad_norm, "train/skipped_nonfinite": 1.0}
    optimizer.step()
    return {"train/grad_norm": grad_norm, "train/skipped_nonfinite": 0.0}


@dataclass
class Mitigations:
    """Everything a method adds to plain policy optimisation (the defaults add nothing)."""

    reward_transforms: list[RewardTransform] = field(default_factory=list)
    advantage_transform: AdvantageTransform | None = None
    loss_terms: list[LossTerm] = field(default_factory=list)
    gradient_step: GradientStep = plain_step
    reference_schedule: ReferenceSchedule | None = None

    def _parts(self) -> dict[str, object]:
        parts = {f"reward_transforms/{i}": t for i, t in enumerate(self.reward_transforms)}
        parts.update({f"loss_terms/{i}": t for i, t in enumerate(self.loss_terms)})
        parts.update(advantage_transform=self.advantage_transform, gradient_step=self.gradient_step)
        parts.update(reference_schedule=self.reference_schedule)
        return parts

    def state_dict(self) -> dict:
        """The state that stateful parts carry from step to step (PAR's references, a Lagrange
        multiplier, a reset counter, GR's adapted γ), for checkpoints; parts without `state_dict` have none."""
        return {name: part.state_dict() for name, part in self._parts().items() if hasattr(part, "state_dict")}

    def load_state_dict(self, state: dict) -> None:
        for name, part in self._parts().items():
            if hasattr(part, "load_state_dict"):
                part.load_state_dict(state[name])
