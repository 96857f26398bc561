"""The mechanisms the papers claim, measured against the gold reward (docs/results/mitigations.md).

Only a lab with a known gold reward can compute these: each compares what the proxy says with what
gold says about the same completions.

* SignCert-PO (arXiv 2604.02986): hacking is flipped advantage signs -> :func:`sign_flips`, and the
  certified radius should predict the flips -> :func:`auroc` of −radius;
* OCRM (arXiv 2507.15507): the RM is worse on the current policy's samples -> :func:`order_accuracy`;
* RM ensembles (arXiv 2310.02743): member disagreement marks proxy error -> :func:`pearson`;
* GR (arXiv 2602.18037): the gradient norm tracks reward accuracy -> :func:`pearson` over evaluations.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from overopt import stats
from overopt.ops.masked import _check_groups, _check_ndim, _check_same_shape

__all__ = ["SignFlips", "auroc", "order_accuracy", "pearson", "sign_flips"]


class SignFlips(NamedTuple):
    """Output of :func:`sign_flips`."""

    rate: torch.Tensor  # 0-d: share of valid completions whose proxy and gold advantages differ in sign
    mass: torch.Tensor  # 0-d: the same, weighted by |proxy advantage|
    flipped: torch.Tensor  # (P, K) bool
    valid: torch.Tensor  # (P, K) bool: both advantages non-zero


def _centred(x: torch.Tensor) -> torch.Tensor:
    """x_i − mean_j x_j per group, computed from differences to x_0 so that equal values give exactly 0."""
    shifted = x - x[:, :1]
    return shifted - shifted.mean(dim=1, keepdim=True)


def sign_flips(proxy: torch.Tensor, gold: torch.Tensor) -> SignFlips:
    """Advantage sign flips of the proxy against gold, within each group of K completions.

    Formula: with the same baseline for both (the group mean, as in Dr.GRPO / SignCert-PO),
    ``A_i = r_i − mean_j r_j`` and ``A*_i = r*_i − mean_j r*_j``; a completion is valid when both
    are non-zero (a zero gold advantage states no preference; a zero proxy advantage moves nothing),
    flipped when valid and ``sign(A_i) ≠ sign(A*_i)``.
    ``rate = #flipped / #valid``; ``mass = Σ_flipped |A_i| / Σ_valid |A_i|`` (the share of the
    update's advantage mass that pushes the wrong way). Both 0 with no valid completion.
    proxy == gold gives 0; proxy == −gold gives 1 (every valid completion flips).

    Shapes: ``proxy``, ``gold`` (P, K), K >= 2. Returns ``SignFlips``.
    """
    _check_groups("proxy", proxy, 2, "(P, K) = (prompts, completions per prompt)")
    _check_same_shape("proxy", proxy, "gold", gold)
    with torch.no_grad():
        a, g = _centred(proxy.double()), _centred(gold.double())
        valid = (a != 0) & (g != 0)
        flipped = valid & (torch.sign(a) != torch.sign(g))
        n_valid = valid.sum()
        if n_valid == 0:
            zero = torch.zeros((), dtype=torch.float64, device=proxy.device)
            return SignFlips(zero, zero.clone(), flipped, valid)
        weight = a.abs()
        rate = flipped.sum().double() / n_valid
        mass = (weight * flipped).sum() / (weight * valid).sum()
        return SignFlips(rate, mass, flipped, valid)


def auroc(scores: torch.Tensor, labels: torch.Tensor) -> float:
    """Area under the ROC curve of ``scores`` for binary ``labels`` (Mann-Whitney U).

    Formula: ``P(s_pos > s_neg) + ½ P(s_pos = s_neg)`` over all positive-negative pairs, computed
    from average ranks: ``(Σ_{pos} rank − n₊(n₊+1)/2) / (n₊ n₋)``. 0.5 is chance, 1 a perfect
    ranking. NaN when either class is empty (undefined). The tensor face of :func:`overopt.stats.auroc`.

    Shapes: ``scores`` (N,) finite, ``labels`` (N,) bool/0-1. Returns a float.
    """
    _check_ndim("scores", scores, 1, "(N,)")
    _check_same_shape("scores", scores, "labels", labels)
    return stats.auroc(scores.detach().double().cpu().numpy(), labels.bool().cpu().numpy())


def order_accuracy(proxy_a: torch.Tensor, proxy_b: torch.Tensor, gold_a: torch.Tensor, gold_b: torch.Tensor):
    """Share of pairs (y_a, y_b) that the proxy orders as gold does, gold ties dropped.

    Formula: over pairs with ``r*(y_a) ≠ r*(y_b)``, the mean of ``1[proxy orders the pair like gold]``
    with a proxy tie counting ½ (as in ``pairwise_accuracy``). proxy == gold gives 1, proxy == −gold
    gives 0, a constant proxy 0.5. NaN when every pair is a gold tie.

    Shapes: all four (N,). Returns a float.
    """
    _check_ndim("proxy_a", proxy_a, 1, "(N,)")
    for name, x in (("proxy_b", proxy_b), ("gold_a", gold_a), ("gold_b", gold_b)):
        _check_same_shape("proxy_a", proxy_a, name, x)
    with torch.no_grad():
        gold_diff = (gold_a.double() - gold_b.double()).sign()
        keep = gold_diff != 0
        if not keep.any():
            return float("nan")
        proxy_diff = (proxy_a.double() - proxy_b.double()).sign()[keep]
        agree = (proxy_diff == gold_diff[keep]).double() + 0.5 * (proxy_diff == 0).double()
        return agree.mean().item()


def pearson(x: torch.Tensor, y: torch.Tensor) -> float:
    """Pearson correlation ``cov(x, y) / (std x · std y)`` over the N pairs, in float64.

    NaN when N < 2 or either has no spread (undefined).
    Shapes: ``x``, ``y`` (N,). Returns a float.
    """
    _check_ndim("x", x, 1, "(N,)")
    _check_same_shape("x", x, "y", y)
    if x.numel() < 2:
        return float("nan")
    a, b = x.detach().double(), y.detach().double()
    a, b = a - a.mean(), b - b.mean()
    denom = torch.sqrt((a * a).sum() * (b * b).sum())
    return ((a * b).sum() / denom).item() if denom > 0 else float("nan")
