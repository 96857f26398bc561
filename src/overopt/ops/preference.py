"""Pairwise-preference (Bradley-Terry) reward-model loss and accuracy."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from overopt.ops.masked import _check_ndim, _check_same_shape

__all__ = ["bradley_terry_loss", "order_disagreement", "pairwise_accuracy"]


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
    ``L = (1/B) Σ_i w_i · (-log σ(Δ_i))``, computed as ``-logsigmoid(Δ)``,
    which is finite and accurate for any margin. (``softplus(-Δ)`` is the same
    function on paper, but torch's softplus returns its input unchanged beyond
    its threshold of 20, so for Δ < -20 it drops the ``log(1 + e^Δ)`` term: an
    error of up to 2e-9 that float64 references, TRL and verl do not have.)
    ``weights=None`` means all ones; weights are
    detached (importance weights are constants of the objective, as in
    importance-weighted BT of OCRM, arXiv 2507.15507). The normaliser is B,
    not Σ w.

    Refs: Bradley & Terry 1952; Ouyang et al. arXiv 2203.02155.
    Shapes: ``chosen_rewards``, ``rejected_rewards``, ``weights`` (B,), B >= 1.
    Returns a scalar.
    """
    _check_pairs(chosen_rewards, rejected_rewards)
    per_pair = -F.logsigmoid(chosen_rewards - rejected_rewards)
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


def order_disagreement(margins_a: torch.Tensor, margins_b: torch.Tensor) -> torch.Tensor:
    """Share of pairs that two reward models order differently (OCRM's refit strength).

    Formula: ``(1/N) Σ_i 1[sign(m_a,i) ≠ sign(m_b,i)]`` with margins ``m = r(x, y_1) − r(x, y_2)``
    of each model on the same pairs; a tie (margin 0) is its own sign, so a tie against a strict
    order counts as a disagreement. 0 when the models agree on every pair (a refit that changed
    nothing); the same model twice gives exactly 0.

    Shapes: ``margins_a``, ``margins_b`` (N,), N >= 1. Returns a 0-d float64 tensor, no gradient.
    """
    _check_pairs(margins_a, margins_b)
    with torch.no_grad():
        return (torch.sign(margins_a) != torch.sign(margins_b)).double().mean()
