"""χ² occupancy-measure regularisation, the LLM form of "Correlated Proxies".

Laidlaw, Singhal, Dragan, "Correlated Proxies: A New Definition and Improved
Mitigation for Reward Hacking", arXiv 2403.03185: regularising the χ² divergence
between the policy's and the reference's occupancy measures bounds how far the
true reward can fall while the proxy rises. For an LLM (one episode = one
completion) the occupancy ratio is the sequence likelihood ratio
``ρ = exp Σ_t (log π_θ - log π_ref)``, and the symmetric estimate on the
policy's samples is ``χ̂² = mean[(ρ - 1) + (1/ρ - 1)]``; the loss adds
``c · sqrt(max(χ̂², 1e-4))``.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from overopt.ops.masked import _check_ndim, _check_same_shape, masked_sum

__all__ = ["Chi2", "chi2_estimate"]


class Chi2(NamedTuple):
    """Output of :func:`chi2_estimate`: both 0-d tensors carrying the gradient."""

    estimate: torch.Tensor
    penalty: torch.Tensor


def _extrapolated_exp(s: torch.Tensor, clamp: float) -> torch.Tensor:
    """``exp(s)`` on [-c, c], continued linearly (first-order Taylor at ±c) outside.

    ``exp(s_c) · (1 + (s - s_c))`` with ``s_c = clamp(s, -c, c)``: for
    ``|s| <= c`` the second factor is exactly 1; outside it is the tangent line
    at ``±c``. ``exp`` only ever sees ``[-c, c]``, so neither the value nor the
    gradient overflows (a ``torch.where`` over ``exp(s)`` would leak
    ``0 · inf = nan`` into the backward pass).
    """
    s_c = s.clamp(-clamp, clamp)
    return s_c.exp() * (1.0 + (s - s_c))


def chi2_estimate(
    logprobs: torch.Tensor,
    ref_logprobs: torch.Tensor,
    mask: torch.Tensor,
    clamp: float = 10.0,
    floor: float = 1e-4,
) -> Chi2:
    """Symmetric χ² estimate between π_θ and π_ref, and its square-root penalty.

    Formula (Laidlaw et al., arXiv 2403.03185, LLM form), per sequence b:
    ``s_b = Σ_t m_{b,t} (log π_θ - log π_ref)``, ``ρ_b = f(s_b)``,
    ``1/ρ_b = f(-s_b)`` and

    ``χ̂² = (1/B) Σ_b [(ρ_b - 1) + (1/ρ_b - 1)]``,
    ``penalty = sqrt(max(χ̂², floor))`` (floor 1e-4, so the penalty is
    ``>= 0.01`` and its gradient never divides by 0); add
    ``c · penalty`` to the loss.

    ``f`` is RECONSTRUCTED from the line "log-ratio linearly extrapolated
    beyond ±10" (docs/methods/chi2.md): ``f(s) = exp(s)`` for ``|s| <= c`` and, for
    ``|s| > c``, the first-order Taylor expansion of ``exp`` at the boundary,
    ``f(s) = exp(±c) · (1 + (s ∓ c))`` (c = ``clamp``). So f is continuous
    with a continuous first derivative at ±c, and ``χ̂²`` is symmetric in
    ``s -> -s``, ``>= 0``, and finite with a finite gradient for any ``s``
    (the sequence ratio of long completions overflows otherwise). Note ``f``
    itself is negative for ``s < -c - 1``, but each term
    ``f(s) + f(-s) - 2 >= 2 cosh(c) - 2`` there. Inside ``[-c, c]`` each term is
    evaluated as ``4 sinh²(s/2)`` (equal to ``e^s + e^-s - 2`` but without the
    cancellation for small ``s``).

    Shapes: ``logprobs``, ``ref_logprobs``, ``mask`` all (B, T) (token
    log-probs of the policy's own completions; mask 0/1 or bool, padding
    garbage ignored). A row with no valid tokens has ``s = 0`` and contributes
    0 (it still counts in B). Returns ``Chi2(estimate, penalty)``, 0-d tensors
    differentiable in both log-prob inputs (detach ``ref_logprobs`` yourself if
    it is not meant to be trained). Raises ValueError on bad shapes, B = 0,
    ``clamp < 0`` or ``floor <= 0``.
    """
    _check_ndim("logprobs", logprobs, 2, "(B, T)")
    _check_same_shape("logprobs", logprobs, "ref_logprobs", ref_logprobs)
    _check_same_shape("logprobs", logprobs, "mask", mask)
    if logprobs.shape[0] == 0:
        raise ValueError("need at least one sequence, got B = 0")
    if not clamp >= 0.0:
        raise ValueError(f"clamp must be >= 0, got {clamp}")
    if not (floor > 0.0 and math.isfinite(floor)):
        raise ValueError(f"floor must be > 0 and finite, got {floor}")
    s = masked_sum(logprobs - ref_logprobs, mask, dim=1)
    inside = s.abs() <= clamp
    s_c = s.clamp(-clamp, clamp)
    exact = 4.0 * torch.sinh(0.5 * s_c) ** 2
    extrapolated = (_extrapolated_exp(s, clamp) - 1.0) + (_extrapolated_exp(-s, clamp) - 1.0)
    terms = torch.where(inside, exact, extrapolated)
    estimate = terms.mean()
    return Chi2(estimate=estimate, penalty=estimate.clamp_min(floor).sqrt())
