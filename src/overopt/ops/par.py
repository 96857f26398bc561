"""Preference As Reward (PAR) reward shaping.

Fu et al., "Reward Shaping to Mitigate Reward Hacking in RLHF", arXiv 2502.18770:
the RL reward is the reward model's (Bradley-Terry) preference of the policy's
completion over reference completions of the same prompt, a bounded sigmoid of
the centred reward, which saturates instead of growing without limit as the
policy exploits the reward model.
"""

from __future__ import annotations

import math

import torch

from overopt.ops.masked import _check_ndim

__all__ = ["par_reward", "par_saturation"]


def par_reward(rewards: torch.Tensor, reference_rewards: torch.Tensor, k: float = 1.0) -> torch.Tensor:
    """PAR shaped reward: mean sigmoid preference over M reference completions.

    Formula (arXiv 2502.18770): ``r_RL = (1/M) Σ_m σ(k · (r(x, y) - r(x, y_ref,m)))``
    with ``y_ref,m`` SFT samples of the same prompt (the paper: k = 1, M <= 10).
    For M = 1 this is ``σ(k · Δr)``; it lies in (0, 1) and increases with ``r``
    for ``k > 0``.

    Shapes: ``rewards`` (B,) rewards of the policy's completions;
    ``reference_rewards`` (B, M), M >= 1, rewards of each prompt's reference
    completions. Returns (B,). Differentiable in both inputs. Raises ValueError
    on mismatched shapes, M = 0 or a non-finite ``k``.
    """
    _check_ndim("rewards", rewards, 1, "(B,)")
    _check_ndim("reference_rewards", reference_rewards, 2, "(B, M)")
    if reference_rewards.shape[0] != rewards.shape[0] or reference_rewards.shape[1] < 1:
        raise ValueError(
            f"reference_rewards must have shape (B, M) = ({rewards.shape[0]}, M >= 1) to match rewards, "
            f"got {tuple(reference_rewards.shape)}"
        )
    if not math.isfinite(k):
        raise ValueError(f"k must be finite, got {k}")
    return torch.sigmoid(k * (rewards.unsqueeze(1) - reference_rewards)).mean(dim=1)


def par_saturation(shaped: torch.Tensor, level: float = 0.95) -> torch.Tensor:
    """PAR's effective strength: the share of shaped rewards in the sigmoid's flat top.

    Formula: ``(1/B) Σ_b 1[r_RL,b > level]`` for PAR rewards in (0, 1) (:func:`par_reward`). Above
    0.95 a completion already beats its SFT references by ~3/k in proxy score, and raising the
    proxy further earns almost nothing: the bound PAR relies on is binding. 0 when no reward
    saturates (e.g. k → 0, where PAR is a linear rescaling of the proxy).

    Shapes: ``shaped`` (B,), B >= 1. Returns a 0-d float64 tensor.
    """
    _check_ndim("shaped", shaped, 1, "(B,)")
    if shaped.numel() == 0:
        raise ValueError("shaped must be non-empty")
    return (shaped.detach() > level).double().mean()
