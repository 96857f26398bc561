"""Per-token KL estimators and the adaptive KL-coefficient controller.

The estimators are Schulman's k1/k2/k3 (http://joschu.net/blog/kl-approx.html)
of ``KL(π || π_ref)`` from tokens sampled from π. With the per-token log-ratio
``l = log π(y) - log π_ref(y)``:

* ``k1 = l``                  - unbiased, high variance, can be negative;
* ``k2 = l^2 / 2``            - biased, low variance, ``>= 0``;
* ``k3 = exp(-l) - 1 + l``    - unbiased and ``>= 0`` (``r - 1 - log r`` with
  ``r = π_ref / π``, a control-variate correction of k1).

k1 is the classic KL penalty in the reward (Ziegler et al., arXiv 1909.08593);
k3 is the KL term in the GRPO loss (Shao et al., arXiv 2402.03300).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from overopt.ops.masked import _check_same_shape

__all__ = ["kl_k1", "kl_k2", "kl_k3", "KL_ESTIMATORS", "kl_estimate", "adaptive_kl_coef"]


def kl_k1(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """Schulman's k1 estimator of ``KL(π || π_ref)``: ``k1 = l``.

    ``l = logprobs - ref_logprobs`` (log-probs of tokens sampled from π).
    Shapes: both any shape ``S`` (e.g. (B, T)); returns shape ``S``.
    Ref: http://joschu.net/blog/kl-approx.html; Ziegler et al. arXiv 1909.08593.
    """
    _check_same_shape("logprobs", logprobs, "ref_logprobs", ref_logprobs)
    return logprobs - ref_logprobs


def kl_k2(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """Schulman's k2 estimator of ``KL(π || π_ref)``: ``k2 = l^2 / 2``.

    ``l = logprobs - ref_logprobs``. Biased (its expectation under π is
    ``E[l^2]/2``, which matches KL only to second order), but non-negative.
    Shapes: both any shape ``S``; returns shape ``S``.
    Ref: http://joschu.net/blog/kl-approx.html.
    """
    _check_same_shape("logprobs", logprobs, "ref_logprobs", ref_logprobs)
    return 0.5 * (logprobs - ref_logprobs) ** 2


def kl_k3(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """Schulman's k3 estimator of ``KL(π || π_ref)``: ``k3 = exp(-l) - 1 + l``.

    ``l = logprobs - ref_logprobs``. Unbiased for tokens sampled from π and
    ``>= 0`` everywhere (``e^x >= 1 + x``).
    Shapes: both any shape ``S``; returns shape ``S``.
    Ref: http://joschu.net/blog/kl-approx.html; GRPO, Shao et al. arXiv 2402.03300.
    """
    _check_same_shape("logprobs", logprobs, "ref_logprobs", ref_logprobs)
    log_ratio = logprobs - ref_logprobs
    # expm1 keeps the result accurate (and >= 0) when l is tiny: exp(-l) - 1
    # would cancel catastrophically and leave only rounding noise of either sign.
    return torch.expm1(-log_ratio) + log_ratio


KL_ESTIMATORS: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "k1": kl_k1,
    "k2": kl_k2,
    "k3": kl_k3,
}


def kl_estimate(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, estimator: str) -> torch.Tensor:
    """Per-token KL estimate ``KL_ESTIMATORS[estimator](logprobs, ref_logprobs)``.

    ``estimator`` is one of ``"k1"``, ``"k2"``, ``"k3"`` (see the module doc).
    Shapes: both any shape ``S``; returns shape ``S``.
    Raises ValueError naming the valid choices for an unknown estimator.
    """
    try:
        fn = KL_ESTIMATORS[estimator]
    except (KeyError, TypeError):
        raise ValueError(f"unknown KL estimator {estimator!r}; valid choices: {sorted(KL_ESTIMATORS)}") from None
    return fn(logprobs, ref_logprobs)


def adaptive_kl_coef(coef: float, observed_kl: float, target: float, horizon: float, n_steps: float) -> float:
    """One update of the adaptive KL coefficient (proportional controller).

    Formula (Ziegler et al. 2019, arXiv 1909.08593, Sec. 2.2):
    ``e = clip(observed_kl / target - 1, -0.2, 0.2)``,
    ``coef' = coef * (1 + e * n_steps / horizon)``.
    The clip bounds how fast the coefficient can move on a noisy KL reading.

    ``observed_kl``: current KL(π || π_ref) (e.g. mean per-sequence KL);
    ``target``: desired KL (> 0); ``horizon``: controller time constant in
    samples/steps (> 0); ``n_steps``: samples/steps since the last update.
    Plain Python floats in and out (a 0-d tensor ``observed_kl`` is accepted).
    Raises ValueError if ``target <= 0``, ``horizon <= 0`` or ``observed_kl``
    is not finite.
    """
    if not target > 0:
        raise ValueError(f"target must be > 0, got {target}")
    if not horizon > 0:
        raise ValueError(f"horizon must be > 0, got {horizon}")
    observed_kl = float(observed_kl)
    # min/max silently propagate nan; a non-finite KL means training has
    # already diverged, so fail loudly instead of poisoning the coefficient.
    if not math.isfinite(observed_kl):
        raise ValueError(f"observed_kl must be finite, got {observed_kl}")
    error = min(max(observed_kl / target - 1.0, -0.2), 0.2)
    return float(coef * (1.0 + error * n_steps / horizon))
