"""Numbers and rank statistics with numpy only, shared by the torch side (overopt.ops) and the torch-free report."""

from __future__ import annotations

import math
from typing import Any

import numpy as np


def finite_float(x: Any) -> float | None:
    """``x`` as a finite float (numpy scalars included), else None (missing, non-numeric, bool, NaN, inf)."""
    if isinstance(x, np.generic):
        x = x.item()
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return None
    x = float(x)
    return x if math.isfinite(x) else None


def auroc(scores, labels) -> float:
    """Area under the ROC curve of ``scores`` for binary ``labels`` (Mann-Whitney U).

    Formula: ``P(s_pos > s_neg) + ½ P(s_pos = s_neg)`` over all positive-negative pairs, computed
    from average ranks: ``(Σ_{pos} rank − n₊(n₊+1)/2) / (n₊ n₋)``. 0.5 is chance, 1 a perfect
    ranking. NaN when either class is empty (undefined).

    Shapes: ``scores`` (N,) finite, ``labels`` (N,) bool/0-1 (array-likes). Returns a float.
    """
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(labels).astype(bool)
    if s.ndim != 1 or s.shape != y.shape:
        raise ValueError(f"auroc: scores and labels must both be (N,), got {s.shape} and {y.shape}")
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(s, kind="stable")
    # Average ranks over ties: every member of a tie block gets the block's mean rank.
    _, inverse, counts = np.unique(s[order], return_inverse=True, return_counts=True)
    mean_rank = np.cumsum(counts) - (counts - 1) / 2
    ranks = np.empty_like(s)
    ranks[order] = mean_rank[inverse]
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))
