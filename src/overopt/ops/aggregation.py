"""Recursive reward aggregation: how step rewards become a return (Tang, Zhang, Ackermann et al., arXiv 2507.08537).

A return is a recursive aggregation of a trajectory's step rewards r_1 … r_S: a state τ with an initial
value, an update τ_t = r_t ⊳ τ_{t+1} applied from the last step backwards (τ_{S+1} = init), and a post-map;
the value of the trajectory from step t on is post(τ_t). The discounted sum is one case; the paper's others:

  name            init           r ⊳ τ                              post
  sum             0              r + γ·τ                            τ
  max             −∞             max(r, γ·τ)                        τ
  min             +∞             min(r, γ·τ)                        τ          (PURE's min-form, arXiv 2504.15275)
  mean            (0, 0)         (s + r, n + 1)                     s / n
  sharpe          (0, 0, 0)      Welford's (μ, M2, n) with r        μ / sqrt(softplus(M2 / n) + 1e-8)

``returns_to_go`` gives post(τ_t) for every step (what a value target or a per-step advantage needs: the
generalised Bellman equation τ(s, a) = E[r ⊳ τ(s')], Q = post(τ)); ``aggregate`` the value of the whole
trajectory, post(τ_1). Steps where ``mask`` is 0 are skipped (τ passes through unchanged), so padding may sit
anywhere; a trajectory without any valid step is worth ``empty``. γ applies to sum, max and min (as in the
paper, for max and min it discounts the later rewards' weight in the comparison); mean and Sharpe take none.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from overopt.ops.masked import _check_ndim, _check_same_shape

__all__ = ["REWARD_AGGREGATIONS", "aggregate", "returns_to_go"]

REWARD_AGGREGATIONS: tuple[str, ...] = ("sum", "max", "min", "mean", "sharpe")
SHARPE_EPS = 1e-8


def _check(rewards: torch.Tensor, mask: torch.Tensor, name: str, gamma: float) -> None:
    if name not in REWARD_AGGREGATIONS:
        raise ValueError(f"unknown aggregation {name!r}; valid choices: {list(REWARD_AGGREGATIONS)}")
    _check_ndim("rewards", rewards, 2, "(B, S)")
    _check_same_shape("rewards", rewards, "mask", mask)
    if not (0.0 <= gamma <= 1.0 and math.isfinite(gamma)):
        raise ValueError(f"gamma must be in [0, 1], got {gamma}")
    if gamma != 1.0 and name in ("mean", "sharpe"):
        raise ValueError(f"aggregation {name!r} takes no discount; got gamma={gamma}")


def returns_to_go(
    rewards: torch.Tensor, mask: torch.Tensor, name: str, gamma: float = 1.0, empty: float = 0.0
) -> torch.Tensor:
    """post(τ_t) for every step t: the aggregated value of the steps t … S (valid ones only).

    Shapes: ``rewards``, ``mask`` (B, S); returns (B, S) in the rewards' dtype. At an invalid step the value
    is that of the next valid step on (the state passed through), or ``empty`` if there is none. Raises
    ValueError for an unknown aggregation, γ outside [0, 1], or a discount with mean / Sharpe.
    """
    _check(rewards, mask, name, gamma)
    valid = mask.bool()
    batch, steps = rewards.shape
    zeros = rewards.new_zeros(batch)
    out = torch.empty_like(rewards)
    seen = torch.zeros(batch, dtype=torch.bool, device=rewards.device)
    if name in ("sum", "max", "min"):
        start = {"sum": 0.0, "max": -math.inf, "min": math.inf}[name]
        tau = torch.full_like(zeros, start)
        for t in range(steps - 1, -1, -1):
            r, ok = rewards[:, t], valid[:, t]
            if name == "sum":
                new = r + gamma * tau
            else:  # ±∞ (no valid step yet) stays ±∞, also at γ = 0: the last valid step takes r itself
                pick = torch.maximum if name == "max" else torch.minimum
                new = pick(r, torch.where(torch.isfinite(tau), gamma * tau, tau))
            tau = torch.where(ok, new, tau)
            seen = seen | ok
            out[:, t] = torch.where(seen, tau, torch.full_like(tau, empty))
        return out
    # mean: (s, n); sharpe: Welford (μ, M2, n) - order-free, so the backward pass is the forward one reversed.
    total, count, mean, m2 = zeros.clone(), zeros.clone(), zeros.clone(), zeros.clone()
    for t in range(steps - 1, -1, -1):
        r, ok = rewards[:, t], valid[:, t]
        count = count + ok.to(rewards.dtype)
        if name == "mean":
            total = total + torch.where(ok, r, zeros)
            value = total / count.clamp_min(1)
        else:
            delta = torch.where(ok, r - mean, zeros)
            mean = mean + delta / count.clamp_min(1)
            m2 = m2 + delta * torch.where(ok, r - mean, zeros)
            variance = m2 / count.clamp_min(1)
            value = mean / torch.sqrt(F.softplus(variance) + SHARPE_EPS)
        seen = seen | ok
        out[:, t] = torch.where(seen, value, torch.full_like(value, empty))
    return out


def aggregate(rewards: torch.Tensor, mask: torch.Tensor, name: str, gamma: float = 1.0, empty: float = 0.0):
    """The trajectory's return post(τ_1) under aggregation ``name``: (B, S) step rewards and mask -> (B,)."""
    return returns_to_go(rewards, mask, name, gamma, empty)[:, 0]
