"""Pairwise-preference (Bradley-Terry) reward-model loss and accuracy."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from overopt.ops.masked import _check_ndim, _check_same_shape

__all__ = ["bradley_terry_loss", "pairwise_accuracy"]


def _check_pairs(chosen_rewards: torch.Tensor, rejected_rewards: torch.Tensor) -> None:
    _check_ndim("chosen_rewards", chosen_rewards, 1, "(B,)")
    _check_same_shape("chosen_rewards", chosen_rewards, "rejected_rewards", rejected_rewards)
    if chosen_rewards.numel() == 0:
        raise ValueError("need at least one preference pair, got B = 0")


def bradley_terry_loss(
    chosen_rewards: torch.Tensor,
    rejected_rewards: torch.Tensor,
    weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """(Weighted) Bradley-Terry negative log-likelihood of the preferences.

    Formula: with ``Δ_i = r_c,i - r_r,i``,
    ``L = (1/B) Σ_i w_i · (-log σ(Δ_i)) = (1/B) Σ_i w_i · softplus(-Δ_i)``;
    the softplus form is finite for any margin (``log σ`` underflows to -inf
    for large negative Δ). ``weights=None`` means all ones; weights are
    detached (importance weights are constants of the objective, as in
    importance-weighted BT of OCRM, arXiv 2507.15507). The normaliser is B,
    not Σ w.

    Refs: Bradley & Terry 1952; Ouyang et al. arXiv 2203.02155.
    Shapes: ``chosen_rewards``, ``rejected_rewards``, ``weights`` (B,), B >= 1.
    Returns a scalar.
    """
    _check_pairs(chosen_rewards, rejected_rewards)
    per_pair = F.softplus(-(chosen_rewards - rejected_rewards))
    if weights is not None:
        _check_same_shape("chosen_rewards", chosen_rewards, "weights", weights)
        per_pair = per_pair * weights.detach()
    return per_pair.mean()


def pairwise_accuracy(chosen_rewards: torch.Tensor, rejected_rewards: torch.Tensor) -> torch.Tensor:
    """Fraction of pairs the reward model ranks correctly; ties count 1/2.

    Formula: ``acc = (1/B) Σ_i [1(r_c,i > r_r,i) + 0.5 · 1(r_c,i = r_r,i)]``
    (a tie is a coin flip, so a constant reward model scores 0.5, not 0).

    Shapes: ``chosen_rewards``, ``rejected_rewards`` (B,), B >= 1. Returns a
    0-d float tensor (the rewards' dtype if floating, else float32), no gradient.
    """
    _check_pairs(chosen_rewards, rejected_rewards)
    dtype = chosen_rewards.dtype if chosen_rewards.is_floating_point() else torch.float32
    with torch.no_grad():
        wins = (chosen_rewards > rejected_rewards).to(dtype)
        ties = (chosen_rewards == rejected_rewards).to(dtype)
        return (wins + 0.5 * ties).mean()
