"""PPO-style clipped policy and value losses with the common token aggregations."""

from __future__ import annotations

from typing import NamedTuple

import torch

from overopt.ops.masked import _check_ndim, _check_same_shape, _count, masked_sum

__all__ = ["AGGREGATIONS", "PolicyLoss", "clipped_surrogate", "clipped_value_loss"]

AGGREGATIONS: tuple[str, ...] = ("seq_mean", "token_mean", "token_sum_norm")


class PolicyLoss(NamedTuple):
    """Output of :func:`clipped_surrogate`; all scalar tensors.

    ``loss`` carries the gradient; ``clip_frac`` and ``approx_kl`` are detached
    diagnostics (token means over the valid tokens).
    """

    loss: torch.Tensor
    clip_frac: torch.Tensor
    approx_kl: torch.Tensor


def clipped_surrogate(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip_eps: float = 0.2,
    aggregation: str = "seq_mean",
    norm_const: float | None = None,
    weights: torch.Tensor | None = None,
) -> PolicyLoss:
    """PPO clipped surrogate loss (Schulman et al. arXiv 1707.06347).

    Per token: ``ρ = exp(logprobs - old_logprobs)`` and
    ``ℓ_t = -min(ρ A, clip(ρ, 1 - ε, 1 + ε) A)``; with per-sequence
    ``weights`` w_b, ``ℓ_{b,t} <- w_b ℓ_{b,t}`` (SignCert-PO, arXiv 2604.02986),
    or per-token w_{b,t} (the sampler's importance weights, ops.sampler_is).
    ``old_logprobs``, ``advantages`` and ``weights`` are detached (they are
    constants of the surrogate). Aggregation over valid tokens (n_b per row,
    N = Σ_b n_b, B rows):

    * ``"seq_mean"``: ``(1/B) Σ_b (1/n_b) Σ_t ℓ_{b,t}`` (GRPO, arXiv 2402.03300);
    * ``"token_mean"``: ``(1/N) Σ_{b,t} ℓ_{b,t}`` (DAPO, arXiv 2503.14476);
    * ``"token_sum_norm"``: ``(1/(B · norm_const)) Σ_{b,t} ℓ_{b,t}`` with a
      fixed ``norm_const`` such as the max completion length (Dr.GRPO,
      arXiv 2503.20783); ``norm_const`` is ignored by the other two.

    A row with no valid tokens contributes 0 to ``seq_mean`` (it still counts
    in B), and an all-padding batch gives loss 0 rather than nan.

    Diagnostics: ``clip_frac`` = fraction of valid tokens where the clipped
    branch is the active one (A > 0 and ρ > 1 + ε, or A < 0 and ρ < 1 - ε);
    ``approx_kl`` = mean over valid tokens of k3 between old and new policy,
    ``exp(-l) - 1 + l`` with ``l = logprobs - old_logprobs``. Weights do not
    enter the diagnostics.

    Shapes: ``logprobs``, ``old_logprobs``, ``mask`` (B, T); ``advantages``
    (B,) (one per sequence, broadcast over tokens) or (B, T); ``weights``
    (B,), (B, T) or None. Returns ``PolicyLoss`` of scalars.
    """
    _check_ndim("logprobs", logprobs, 2, "(B, T)")
    _check_same_shape("logprobs", logprobs, "old_logprobs", old_logprobs)
    _check_same_shape("logprobs", logprobs, "mask", mask)
    batch = logprobs.shape[0]
    if advantages.shape == (batch,):
        advantages = advantages.unsqueeze(1)
    elif advantages.shape != logprobs.shape:
        raise ValueError(
            f"advantages must have shape (B,) = ({batch},) or (B, T) = "
            f"{tuple(logprobs.shape)}, got {tuple(advantages.shape)}"
        )
    if weights is not None and weights.shape not in ((batch,), logprobs.shape):
        raise ValueError(
            f"weights must have shape (B,) = ({batch},) or (B, T) = {tuple(logprobs.shape)}, got {tuple(weights.shape)}"
        )
    if not clip_eps > 0:
        raise ValueError(f"clip_eps must be > 0, got {clip_eps}")
    if aggregation not in AGGREGATIONS:
        raise ValueError(f"unknown aggregation {aggregation!r}; valid choices: {list(AGGREGATIONS)}")
    if aggregation == "token_sum_norm" and (norm_const is None or not norm_const > 0):
        raise ValueError(f"aggregation 'token_sum_norm' needs norm_const > 0, got {norm_const}")

    # Padding is zeroed *before* any arithmetic: garbage there (nan/inf) would
    # otherwise turn the zero gradient of the masked reduction into 0 * nan.
    valid = mask.bool()
    zero = torch.zeros((), dtype=logprobs.dtype, device=logprobs.device)
    advantages = torch.where(valid, advantages.detach(), zero)
    log_ratio = torch.where(valid, logprobs - old_logprobs.detach(), zero)
    ratio = torch.exp(log_ratio)
    unclipped = ratio * advantages
    clipped = torch.clamp(ratio, 1.0 - clip_eps, 1.0 + clip_eps) * advantages
    # min(ρA, clip(ρ)A) picks the clipped branch exactly in these two cases;
    # selecting with the explicit predicate makes the gradient on clipped tokens
    # exactly 0 and shares the predicate with clip_frac.
    clip_active = ((advantages > 0) & (ratio > 1.0 + clip_eps)) | ((advantages < 0) & (ratio < 1.0 - clip_eps))
    per_token = -torch.where(clip_active, clipped, unclipped)
    if weights is not None:
        per_token = per_token * (weights.detach() if weights.dim() == 2 else weights.detach().unsqueeze(1))

    if aggregation == "seq_mean":
        per_seq = masked_sum(per_token, mask, dim=1) / _count(per_token, mask, 1).clamp_min(1)
        loss = per_seq.mean()
    elif aggregation == "token_mean":
        loss = masked_sum(per_token, mask) / _count(per_token, mask, None).clamp_min(1)
    else:  # token_sum_norm
        loss = masked_sum(per_token, mask) / (batch * norm_const)

    with torch.no_grad():
        n_tokens = _count(log_ratio, mask, None).clamp_min(1)
        clip_frac = masked_sum(clip_active.to(log_ratio.dtype), mask) / n_tokens
        # k3 with the sampling (old) policy as the reference; expm1 for accuracy
        # near l = 0, where this diagnostic usually lives.
        approx_kl = masked_sum(torch.expm1(-log_ratio) + log_ratio, mask) / n_tokens
    return PolicyLoss(loss=loss, clip_frac=clip_frac, approx_kl=approx_kl)


def clipped_value_loss(
    values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    mask: torch.Tensor,
    clip_eps: float,
) -> torch.Tensor:
    """PPO clipped value-function loss.

    Formula: ``v_clip = V_old + clip(V - V_old, -ε, ε)``,
    ``L = 0.5 · mean_{valid t} max((V - R)^2, (v_clip - R)^2)`` - the max makes
    it a pessimistic bound, so the critic gains nothing from moving more than
    ε away from its old prediction (PPO, arXiv 1707.06347; as in the
    RLHF-PPO setup of Ziegler et al. arXiv 1909.08593).

    Shapes: ``values``, ``old_values``, ``returns``, ``mask`` all (B, T).
    ``old_values`` and ``returns`` are detached (targets). Returns a scalar;
    0 when no token is valid.
    """
    _check_ndim("values", values, 2, "(B, T)")
    _check_same_shape("values", values, "old_values", old_values)
    _check_same_shape("values", values, "returns", returns)
    _check_same_shape("values", values, "mask", mask)
    if not clip_eps > 0:
        raise ValueError(f"clip_eps must be > 0, got {clip_eps}")
    # Zero the padding before the arithmetic so its garbage cannot produce a
    # 0 * nan gradient (see clipped_surrogate).
    valid = mask.bool()
    zero = torch.zeros((), dtype=values.dtype, device=values.device)
    values = torch.where(valid, values, zero)
    old_values = torch.where(valid, old_values.detach(), zero)
    returns = torch.where(valid, returns.detach(), zero)
    values_clipped = old_values + torch.clamp(values - old_values, -clip_eps, clip_eps)
    per_token = torch.maximum((values - returns) ** 2, (values_clipped - returns) ** 2)
    return 0.5 * masked_sum(per_token, mask) / _count(per_token, mask, None).clamp_min(1)
