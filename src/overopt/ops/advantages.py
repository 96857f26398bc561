"""Advantage estimators: group baselines (RLOO, GRPO, Dr.GRPO) and GAE."""

from __future__ import annotations

from typing import NamedTuple

import torch

from overopt.ops.masked import _check_groups, _check_ndim, _check_same_shape

__all__ = ["rloo_advantages", "grpo_advantages", "GAE", "gae"]


def _check_group_rewards(rewards: torch.Tensor) -> None:
    _check_groups("rewards", rewards, 2, "(P, K) = (prompts, completions per prompt)")


def rloo_advantages(rewards: torch.Tensor) -> torch.Tensor:
    """REINFORCE leave-one-out advantages.

    Formula: ``A_i = r_i - (1 / (K - 1)) Σ_{j != i} r_j`` within each prompt's
    group of K completions - the baseline for sample i uses only the other
    samples, so it is independent of ``r_i`` and the estimator stays unbiased.
    (Kool et al. 2019, "Buy 4 REINFORCE samples, get a baseline for free!";
    Ahmadian et al. arXiv 2402.14740.)

    Shapes: ``rewards`` (P, K) with K >= 2. Returns (P, K).
    """
    _check_group_rewards(rewards)
    k = rewards.shape[1]
    loo_mean = (rewards.sum(dim=1, keepdim=True) - rewards) / (k - 1)
    return rewards - loo_mean


def grpo_advantages(rewards: torch.Tensor, scale_by_std: bool = True, eps: float = 1e-4) -> torch.Tensor:
    """Group-normalised advantages of GRPO, or Dr.GRPO's unscaled variant.

    Formula: ``A_i = (r_i - mean_j r_j) / (std_j r_j + eps)`` within each
    prompt's group, where ``std`` is the *unbiased* sample standard deviation
    (ddof = 1, divisor K - 1), as in the GRPO reference implementations
    (``torch.std`` default). Shao et al. arXiv 2402.03300.

    With ``scale_by_std=False``: ``A_i = r_i - mean_j r_j`` (Dr.GRPO, Liu et al.
    arXiv 2503.20783, which drops the std division because it up-weights
    prompts that are nearly always solved or always failed). ``eps`` is then
    unused.

    Shapes: ``rewards`` (P, K) with K >= 2. Returns (P, K). A group with equal
    rewards gets advantages 0 either way.
    """
    _check_group_rewards(rewards)
    centred = rewards - rewards.mean(dim=1, keepdim=True)
    if not scale_by_std:
        return centred
    return centred / (rewards.std(dim=1, correction=1, keepdim=True) + eps)


class GAE(NamedTuple):
    """Output of :func:`gae`: both (B, T), zero where the mask is 0."""

    advantages: torch.Tensor
    returns: torch.Tensor


def gae(
    token_rewards: torch.Tensor,
    values: torch.Tensor,
    mask: torch.Tensor,
    gamma: float,
    lam: float,
) -> GAE:
    """Generalised Advantage Estimation over the completion tokens.

    Formula (Schulman et al. arXiv 1506.02438), for valid positions t of a row
    whose last valid position is L:
    ``δ_t = r_t + γ V_{t+1} - V_t`` with ``V_{L+1} = 0`` (the episode ends after
    the last valid token, so nothing is bootstrapped), and
    ``A_t = Σ_{k=t}^{L} (γλ)^{k-t} δ_k`` computed by the recursion
    ``A_t = δ_t + γλ A_{t+1}``. Returns ``R_t = A_t + V_t`` (the λ-return,
    the value-function target).

    Shapes: ``token_rewards``, ``values``, ``mask`` all (B, T); ``mask`` is
    0/1 or bool with each row's valid positions contiguous (normally right
    padding: 1s then 0s). Returns ``GAE(advantages, returns)``, both (B, T),
    exactly 0 where ``mask`` is 0 (padding garbage is ignored).

    Inputs are detached: advantages and returns are targets, so no gradient
    may flow back into the critic through them. Raises ValueError on shape
    mismatch or a row whose valid positions are not contiguous.
    """
    _check_ndim("token_rewards", token_rewards, 2, "(B, T)")
    _check_same_shape("token_rewards", token_rewards, "values", values)
    _check_same_shape("token_rewards", token_rewards, "mask", mask)
    valid = mask.bool()
    # A gap inside a row would silently be treated as an episode end, so
    # refuse it: count 0 -> 1 transitions (plus a row starting valid).
    starts = valid[:, :1].sum(dim=1) + (valid[:, 1:] & ~valid[:, :-1]).sum(dim=1)
    if bool((starts > 1).any()):
        raise ValueError("mask rows must be contiguous (e.g. right-padded: 1s then 0s)")

    rewards = token_rewards.detach()
    values = values.detach()
    zero = torch.zeros((), dtype=values.dtype, device=values.device)
    batch, length = rewards.shape
    advantages = torch.zeros_like(values)
    next_value = torch.zeros(batch, dtype=values.dtype, device=values.device)
    next_advantage = torch.zeros_like(next_value)
    # Reverse recursion over time, vectorised over the batch. At a padded
    # position both carries are reset to 0, so the last valid token sees
    # V_{L+1} = 0 and A_{L+1} = 0 regardless of what the padding holds.
    for t in reversed(range(length)):
        m = valid[:, t]
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        next_advantage = torch.where(m, delta + gamma * lam * next_advantage, zero)
        next_value = torch.where(m, values[:, t], zero)
        advantages[:, t] = next_advantage
    returns = torch.where(valid, advantages + values, zero)
    return GAE(advantages=advantages, returns=returns)
