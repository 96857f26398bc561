"""Importance weights of Off-Policy Corrected Reward Modeling (OCRM).

Ackermann, Ishida, Sugiyama, arXiv 2507.15507. After RL round k the policy π_k
has drifted from π_SFT, which sampled the stored preference pairs; OCRM
re-trains the reward model on the same pairs with an importance-weighted
Bradley-Terry loss (``overopt.ops.bradley_terry_loss(..., weights=w)``) whose
weights move the training distribution towards π_k:

* ``log ρ_α(y) = log π_k(y) - logsumexp(log α + log π_k(y), log(1-α) + log π_SFT(y))``
  (the relative density ratio ``π_k / (α π_k + (1-α) π_SFT)``; α = 0 is the
  plain ratio, α > 0 bounds it by ``1/α``);
* ``w_pair = exp(β_w · [log ρ_α(y_c) + log ρ_α(y_r)])``;
* optional normalisation (none / per batch / per dataset) and the Kish
  effective sample size ``(Σw)² / Σw²`` as a diagnostic.

Everything is computed in log space: sequence log-likelihoods are sums over
tokens (easily below -700, where ``exp`` underflows to 0 in float64 and far
earlier in float32), so ``exp`` is applied only to quantities that are already
shifted into a safe range.
"""

from __future__ import annotations

import math

import torch

from overopt.ops.masked import _check_ndim, _check_same_shape

__all__ = [
    "WEIGHT_NORMALIZATIONS",
    "relative_log_density_ratio",
    "ocrm_log_weights",
    "normalize_weights",
    "effective_sample_size",
    "ess_from_log_weights",
    "beta_for_target_ess",
]

WEIGHT_NORMALIZATIONS: tuple[str, ...] = ("none", "batch", "dataset")


def _check_alpha(alpha: float) -> None:
    if not 0.0 <= alpha < 1.0:
        raise ValueError(f"alpha must be in [0, 1), got {alpha}")


def _check_vector(name: str, x: torch.Tensor) -> None:
    _check_ndim(name, x, 1, "(N,)")
    if x.numel() == 0:
        raise ValueError(f"{name} must be non-empty, got shape {tuple(x.shape)}")


def relative_log_density_ratio(logp_policy: torch.Tensor, logp_sft: torch.Tensor, alpha: float) -> torch.Tensor:
    """Log of the α-relative density ratio ``π_k / (α π_k + (1 - α) π_SFT)``.

    Formula (OCRM, arXiv 2507.15507):
    ``log ρ_α = log π_k - logsumexp(log α + log π_k, log(1 - α) + log π_SFT)``,
    evaluated with ``torch.logaddexp`` so sequence log-likelihoods of any size
    (e.g. -2000) give finite, exact results - never ``exp`` then ``log``.
    ``alpha = 0`` returns exactly ``log π_k - log π_SFT`` (the plain ratio;
    special-cased because ``log 0 = -inf``). For ``alpha > 0`` the result is
    ``<= -log α``, and it is 0 wherever ``log π_k == log π_SFT``.

    Shapes: ``logp_policy`` (log π_k(y|x)) and ``logp_sft`` (log π_SFT(y|x)),
    both (N,) sequence log-likelihoods (temperature 1, summed up to and
    including the first EOS). Returns (N,). Differentiable (not detached).
    Raises ValueError for ``alpha`` outside [0, 1) or mismatched shapes.
    """
    _check_alpha(alpha)
    _check_vector("logp_policy", logp_policy)
    _check_same_shape("logp_policy", logp_policy, "logp_sft", logp_sft)
    if alpha == 0.0:
        return logp_policy - logp_sft
    log_mixture = torch.logaddexp(math.log(alpha) + logp_policy, math.log1p(-alpha) + logp_sft)
    return logp_policy - log_mixture


def ocrm_log_weights(
    logp_policy_chosen: torch.Tensor,
    logp_sft_chosen: torch.Tensor,
    logp_policy_rejected: torch.Tensor,
    logp_sft_rejected: torch.Tensor,
    alpha: float,
    beta_w: float,
) -> torch.Tensor:
    """Log importance weight of each preference pair.

    Formula (OCRM, arXiv 2507.15507):
    ``log w = β_w · [log ρ_α(y_c|x) + log ρ_α(y_r|x)]`` with ``log ρ_α`` from
    :func:`relative_log_density_ratio`. ``beta_w = 0`` gives exactly 0 (all
    weights exactly 1, so the weighted BT loss is the plain one), even where a
    log-ratio is infinite. Published scripts use α = 0.1, β_w = 0.001.

    Shapes: all four inputs (N,) sequence log-likelihoods (π_k and π_SFT of the
    chosen and of the rejected completion). Returns (N,). Feed the result to
    :func:`normalize_weights` to get the weights themselves.
    """
    if not math.isfinite(beta_w):
        raise ValueError(f"beta_w must be finite, got {beta_w}")
    chosen = relative_log_density_ratio(logp_policy_chosen, logp_sft_chosen, alpha)
    rejected = relative_log_density_ratio(logp_policy_rejected, logp_sft_rejected, alpha)
    _check_same_shape("logp_policy_chosen", logp_policy_chosen, "logp_policy_rejected", logp_policy_rejected)
    if beta_w == 0.0:
        return torch.zeros_like(chosen)
    return beta_w * (chosen + rejected)


def normalize_weights(log_weights: torch.Tensor, mode: str) -> torch.Tensor:
    """Importance weights from log-weights, with OCRM's normalisation modes.

    Formula, with ``w_i = exp(l_i)`` and N = ``len(log_weights)``:

    * ``"none"``:    ``w_i = exp(l_i)`` (OCRM's default);
    * ``"batch"``:   ``w_i / Σ_j w_j = softmax(l)_i`` - sums to 1; call it on
      each mini-batch's log-weights;
    * ``"dataset"``: ``w_i / mean_j w_j = N · softmax(l)_i`` - mean 1; call it
      once on the log-weights of the whole dataset.

    The normalised modes are computed as ``exp(l_i - logsumexp(l))`` (plus
    ``log N``), so they are exact even when every ``exp(l_i)`` would underflow
    or overflow. They are invariant to adding a constant to ``l``. A tensor
    whose log-weights are all ``-inf`` gives nan in the normalised modes.

    Shapes: ``log_weights`` (N,), N >= 1. Returns (N,). Raises ValueError for
    an unknown ``mode`` (naming the choices in ``WEIGHT_NORMALIZATIONS``).
    """
    if mode not in WEIGHT_NORMALIZATIONS:
        raise ValueError(f"unknown weight normalisation {mode!r}; valid choices: {list(WEIGHT_NORMALIZATIONS)}")
    _check_vector("log_weights", log_weights)
    if mode == "none":
        return log_weights.exp()
    log_normalised = log_weights - torch.logsumexp(log_weights, dim=0)
    if mode == "dataset":
        log_normalised = log_normalised + math.log(log_weights.numel())
    return log_normalised.exp()


def effective_sample_size(weights: torch.Tensor) -> torch.Tensor:
    """Kish effective sample size of non-negative weights.

    Formula: ``ESS = (Σ_i w_i)^2 / Σ_i w_i^2`` - between 1 (one weight carries
    everything) and N (uniform weights); invariant to rescaling the weights.
    Computed on ``w / max|w|`` so neither sum overflows. All-zero weights give
    nan (ESS undefined).

    Shapes: ``weights`` (N,), N >= 1. Returns a 0-d tensor.
    For weights held as log-weights use :func:`ess_from_log_weights`.
    """
    _check_vector("weights", weights)
    scaled = weights / weights.abs().max()
    return scaled.sum() ** 2 / (scaled**2).sum()


def ess_from_log_weights(log_weights: torch.Tensor) -> torch.Tensor:
    """Kish effective sample size of ``w = exp(log_weights)``, computed in log space.

    Formula: ``ESS = (Σ w)^2 / Σ w^2 = exp(2 · logsumexp(l) - logsumexp(2 l))``;
    finite and exact even when every ``exp(l_i)`` under- or overflows.
    Invariant to adding a constant to ``l`` (i.e. to the normalisation mode).

    Shapes: ``log_weights`` (N,), N >= 1. Returns a 0-d tensor.
    """
    _check_vector("log_weights", log_weights)
    return (2.0 * torch.logsumexp(log_weights, dim=0) - torch.logsumexp(2.0 * log_weights, dim=0)).exp()


def beta_for_target_ess(pair_log_ratios: torch.Tensor, target_frac: float, max_beta: float = 1e12) -> float:
    """The β_w whose OCRM weights have a given effective sample size: a strength that transfers.

    Formula: with ``S_i = log ρ_α(y_c,i) + log ρ_α(y_r,i)`` (:func:`ocrm_log_weights` at β_w = 1),
    ``log w_i = β_w S_i`` and ``f(β) = ESS(β S) / N`` (:func:`ess_from_log_weights`). f(0) = 1 and
    f decreases with β (d log ESS/dβ = 2 E_β[S] − 2 E_2β[S] <= 0: the tilted mean of S grows with
    the tilt), so the β with ``f(β) = target`` is found by bisection: the bracket [0, hi] doubles
    until ``f(hi) <= target``, then 200 halvings. β_w multiplies sequence log-likelihoods, which
    grow with completion length, so the published β_w = 0.001 (53-106-token completions) is close
    to uniform weights on short ones; a target ESS/N means the same re-weighting at any length.

    Returns 0.0 for ``target_frac >= 1``; ``max_beta`` when even that leaves ``f > target`` (S
    constant: weights stay uniform at any β). Raises ValueError unless ``0 < target_frac``.
    Shapes: ``pair_log_ratios`` (N,), N >= 1.
    """
    _check_vector("pair_log_ratios", pair_log_ratios)
    if not target_frac > 0:
        raise ValueError(f"target_frac must be > 0, got {target_frac}")
    if target_frac >= 1.0:
        return 0.0
    s = pair_log_ratios.detach().double()
    n = s.numel()

    def frac(beta: float) -> float:
        return ess_from_log_weights(beta * s).item() / n

    lo, hi = 0.0, 1.0
    while frac(hi) > target_frac:
        if hi >= max_beta:
            return max_beta
        lo, hi = hi, min(2.0 * hi, max_beta)
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if mid in (lo, hi):
            break
        lo, hi = (mid, hi) if frac(mid) > target_frac else (lo, mid)
    return hi
