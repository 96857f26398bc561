"""Recursive reward aggregation: how step rewards become a return (Tang, Zhang, Ackermann et al., arXiv 2507.08537).

A return is a recursive aggregation of a trajectory's step rewards r_1 … r_S: a state τ with an initial
value, an update τ_t = r_t ⊳ τ_{t+1} applied from the last step backwards (τ_{S+1} = init), and a post-map;
the value of the trajectory from step t on is post(τ_t). The discounted sum is one case; the paper's others:

  name            init           r ⊳ τ                              post
  sum             0              r + γ·τ                            τ
  max             −∞             max(r, γ·τ)                        τ
  min             +∞             min(r, γ·τ)                        τ    (PURE's min-form exactly, arXiv 2504.15275)
  mean            (0, 0)         (s + r, n + 1)                     s / n
  sharpe          (0, 0, 0)      Welford's (μ, M2, n) with r        μ / sqrt(max(M2 / n, 1e-8))

``returns_to_go`` gives post(τ_t) for every step (what a value target or a per-step advantage needs: the
generalised Bellman equation τ(s, a) = E[r ⊳ τ(s')], Q = post(τ)); ``aggregate`` the value of the whole
trajectory, post(τ_1). Steps where ``mask`` is 0 are skipped (τ passes through unchanged), so padding may sit
anywhere; a trajectory without any valid step is worth ``empty``. γ applies to sum, max and min (as in the
paper, for max and min it discounts the later rewards' weight in the comparison); mean and Sharpe take none.
``initial_state`` / ``update_state`` / ``post_map`` are the table's columns on (B, k) states.

Sharpe's post-map is the one of RRA's code (``Tang-Yuting/recursive-reward-aggregation``,
``recursive_function.py::sharpe_ratio``): the mean over the square root of the population variance (divisor n,
not n − 1), the variance clipped below at 1e-8. RRA's softplus is on its value network's outputs (the count and
the sum of squares it predicts), not on the variance. So a trajectory whose step rewards are all equal (one step
among them: variance 0) is worth its reward × 10⁴, as in RRA's code.

``token_returns`` carries this to PPO's tokens: a value model predicts the state of the future steps and its
targets are λ-returns in state space. That is this lab's generalisation, not RRA's: RRA's PPO applies GAE to
TD errors of post-mapped values, which for max and min is not the Monte-Carlo aggregation at λ = 1; here λ = 1
is exactly ``returns_to_go`` for every aggregation, and the sum with γ = 1 is GAE.

``softmin_weighted`` is PURE's min-form as its code computes it (a sum of softmin-weighted step rewards: a soft
minimum), next to the table's exact min.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from overopt.ops.masked import _check_ndim, _check_same_shape

__all__ = [
    "REWARD_AGGREGATIONS", "STATE_SIZES", "TokenReturns", "aggregate", "initial_state", "post_map", "returns_to_go",
    "softmin_weighted", "token_returns", "update_state",
]  # fmt: skip

REWARD_AGGREGATIONS: tuple[str, ...] = ("sum", "max", "min", "mean", "sharpe")
SHARPE_VAR_FLOOR = 1e-8  # RRA's clip(min=1e-8) of the variance


def _check(rewards: torch.Tensor, mask: torch.Tensor, name: str, gamma: float) -> None:
    if name not in REWARD_AGGREGATIONS:
        raise ValueError(f"unknown aggregation {name!r}; valid choices: {list(REWARD_AGGREGATIONS)}")
    _check_ndim("rewards", rewards, 2, "(B, S)")
    _check_same_shape("rewards", rewards, "mask", mask)
    if not (0.0 <= gamma <= 1.0 and math.isfinite(gamma)):
        raise ValueError(f"gamma must be in [0, 1], got {gamma}")
    if gamma != 1.0 and name in ("mean", "sharpe"):
        raise ValueError(f"aggregation {name!r} takes no discount; got gamma={gamma}")


STATE_SIZES: dict[str, int] = {"sum": 1, "max": 1, "min": 1, "mean": 2, "sharpe": 3}


def initial_state(name: str, batch: int, like: torch.Tensor) -> torch.Tensor:
    """τ_{S+1}, the state before any step: (B, k) with k = STATE_SIZES[name] (sum 0, max −∞, min +∞; mean
    (s, n) = 0; Sharpe (μ, M2, n) = 0)."""
    start = {"max": -math.inf, "min": math.inf}.get(name, 0.0)
    return like.new_full((batch, STATE_SIZES[name]), start)


def update_state(name: str, reward: torch.Tensor, state: torch.Tensor, gamma: float = 1.0) -> torch.Tensor:
    """r ⊳ τ: (B,) step rewards into (B, k) states (the table above; Welford's update for Sharpe)."""
    if name == "sum":
        return (reward + gamma * state[:, 0]).unsqueeze(1)
    if name in ("max", "min"):  # ±∞ (no step yet) stays ±∞, also at γ = 0: the last step takes r itself
        tau = state[:, 0]
        pick = torch.maximum if name == "max" else torch.minimum
        return pick(reward, torch.where(torch.isfinite(tau), gamma * tau, tau)).unsqueeze(1)
    if name == "mean":
        return torch.stack([state[:, 0] + reward, state[:, 1] + 1], 1)
    mean, m2, count = state.unbind(1)
    count = count + 1
    delta = reward - mean
    mean = mean + delta / count
    return torch.stack([mean, m2 + delta * (reward - mean), count], 1)


def post_map(name: str, state: torch.Tensor) -> torch.Tensor:
    """post(τ): (B, k) states -> (B,) values (a state without steps: 0 for mean and Sharpe, ±∞ for max/min)."""
    if name in ("sum", "max", "min"):
        return state[:, 0]
    count = state[:, -1].clamp_min(1)
    if name == "mean":
        return state[:, 0] / count
    return state[:, 0] / torch.sqrt((state[:, 1] / count).clamp_min(SHARPE_VAR_FLOOR))


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
    out = torch.empty_like(rewards)
    state = initial_state(name, batch, rewards)
    seen = torch.zeros(batch, dtype=torch.bool, device=rewards.device)
    for t in range(steps - 1, -1, -1):
        ok = valid[:, t]
        state = torch.where(ok.unsqueeze(1), update_state(name, rewards[:, t], state, gamma), state)
        seen = seen | ok
        out[:, t] = torch.where(seen, post_map(name, state), torch.full_like(rewards[:, t], empty))
    return out


def aggregate(rewards: torch.Tensor, mask: torch.Tensor, name: str, gamma: float = 1.0, empty: float = 0.0):
    """The trajectory's return post(τ_1) under aggregation ``name``: (B, S) step rewards and mask -> (B,)."""
    return returns_to_go(rewards, mask, name, gamma, empty)[:, 0]


def softmin_weighted(rewards: torch.Tensor, mask: torch.Tensor, temperature: float) -> torch.Tensor:
    """PURE's min-form step rewards (Cheng et al., arXiv 2504.15275): w_i · r_i with w = softmax(−r / T) over
    each row's valid steps, so that their sum is a soft minimum (T → 0: the minimum; T → ∞: the mean).

    Summed into a return (γ = 1) the first step's return is ≈ min over all steps; later steps' returns are
    partial sums of these globally weighted terms (as PURE's code computes them), not minima of the future.
    Shapes: (B, S) -> (B, S), 0 at invalid steps."""
    _check(rewards, mask, "sum", 1.0)
    if not (temperature > 0 and math.isfinite(temperature)):
        raise ValueError(f"temperature must be positive and finite, got {temperature}")
    valid = mask.bool()
    logits = torch.where(valid, -rewards / temperature, torch.full_like(rewards, -math.inf))
    weights = torch.softmax(logits, dim=1).nan_to_num(0.0)  # a row without steps: no weights
    return torch.where(valid, weights * rewards, torch.zeros_like(rewards))


class TokenReturns(NamedTuple):
    """Output of :func:`token_returns`: per-token targets of a value model that predicts aggregation states."""

    targets: torch.Tensor  # (B, T, k) G_t: the λ-return in state space (the value model's target)
    returns: torch.Tensor  # (B, T) post(G_t)
    advantages: torch.Tensor  # (B, T) post(G_t) − post(V_t); 0 where no step lies ahead
    mask: torch.Tensor  # (B, T) 1 at valid tokens with a step at or after them


def _token_slots(rewards, mask, tokens, length):
    """Steps laid out by token: (B, T, M) rewards and mask, M the most steps ending at one token, in step order."""
    valid = mask.bool()
    batch, steps = rewards.shape
    rank = torch.zeros_like(tokens)
    for j in range(steps):  # how many earlier valid steps end at the same token
        same = (tokens[:, :j] == tokens[:, j : j + 1]) & valid[:, :j]
        rank[:, j] = same.sum(1)
    slots = int(rank[valid].max().item()) + 1 if valid.any() else 1
    flat = (tokens.clamp(0, length - 1) * slots + rank).where(valid, torch.zeros_like(tokens))
    slot_rewards = rewards.new_zeros(batch, length * slots).scatter_add(1, flat, rewards * valid)
    slot_mask = flat.new_zeros(batch, length * slots).scatter_add(1, flat, valid.long()) > 0  # masked steps add 0
    return slot_rewards.view(batch, length, slots), slot_mask.view(batch, length, slots)


def token_returns(
    step_rewards: torch.Tensor,
    step_mask: torch.Tensor,
    step_tokens: torch.Tensor,
    values: torch.Tensor,
    token_mask: torch.Tensor,
    name: str,
    gamma: float = 1.0,
    lam: float = 1.0,
) -> TokenReturns:
    """Per-token λ-returns of an aggregated return, for PPO: RRA's generalised Bellman target in state space
    (this lab's generalisation of it to λ-returns; see the module docstring).

    Step j ends at token ``step_tokens[b, j]``. The value model predicts, before token t, the aggregation state
    of the steps from t on: ``values`` (B, T, k), k = STATE_SIZES[name]. Backwards over the tokens,

        X_t = (1 − λ)·V_{t+1} + λ·G_{t+1}   (init when no step lies after t: nothing to bootstrap)
        G_t = r_{j1} ⊳ (… (r_{jm} ⊳ X_t))   over the steps ending at token t (τ passes through other tokens)

    so λ = 0 is the one-step generalised Bellman target r ⊳ V(s'), λ = 1 the Monte-Carlo aggregation of the
    future steps (= ``returns_to_go``), and for the sum with γ = 1 these are GAE's λ-returns. The advantage is
    post(G_t) − post(V_t) at tokens with a step at or after them; tokens past the last step have no future
    reward and get 0. Inputs are detached (targets). Raises ValueError on bad shapes, γ or λ outside [0, 1],
    or a step at a padded token.
    """
    _check(step_rewards, step_mask, name, gamma)
    _check_same_shape("step_rewards", step_rewards, "step_tokens", step_tokens)
    _check_ndim("token_mask", token_mask, 2, "(B, T)")
    batch, length = token_mask.shape
    k = STATE_SIZES[name]
    if values.shape != (batch, length, k):
        raise ValueError(f"values must be (B, T, k) = {(batch, length, k)} for aggregation {name!r}, got "
                         f"{tuple(values.shape)}")  # fmt: skip
    if step_rewards.shape[0] != batch:
        raise ValueError(f"step_rewards has {step_rewards.shape[0]} rows, token_mask {batch}")
    if not 0.0 <= lam <= 1.0:
        raise ValueError(f"lam must be in [0, 1], got {lam}")
    valid = step_mask.bool()
    tokens = step_tokens.long()
    inside = (tokens >= 0) & (tokens < length)
    if bool((valid & ~inside).any()) or bool(
        (valid & inside & ~token_mask.bool().gather(1, tokens.clamp(0, length - 1))).any()
    ):
        raise ValueError("every valid step must end at a valid token (0 <= step_tokens < T, token_mask 1)")
    step_rewards, values = step_rewards.detach(), values.detach()
    slot_rewards, slot_mask = _token_slots(step_rewards, valid, tokens, length)
    init = initial_state(name, batch, values)
    targets = init.unsqueeze(1).repeat(1, length, 1)
    ahead = torch.zeros(batch, dtype=torch.bool, device=values.device)  # a step after the current token
    has = torch.zeros(batch, length, dtype=torch.bool, device=values.device)
    following = init
    for t in range(length - 1, -1, -1):
        if t + 1 < length and lam < 1.0:
            v = values[:, t + 1]
            mix = v if lam == 0.0 else (1 - lam) * v + lam * following
        else:
            mix = following
        state = torch.where(ahead.unsqueeze(1), mix, init)
        for m in range(slot_rewards.shape[2] - 1, -1, -1):
            here = slot_mask[:, t, m]
            state = torch.where(here.unsqueeze(1), update_state(name, slot_rewards[:, t, m], state, gamma), state)
        ahead = ahead | slot_mask[:, t].any(1)
        has[:, t] = ahead
        targets[:, t] = state
        following = state
    has = has & token_mask.bool()
    zeros = torch.zeros(batch, length, dtype=values.dtype, device=values.device)
    post = lambda states: post_map(name, states.reshape(-1, k)).view(batch, length)  # noqa: E731
    returns = torch.where(has, post(targets), zeros)
    advantages = torch.where(has, returns - post(values), zeros)
    return TokenReturns(targets, returns, advantages, has.to(values.dtype))
