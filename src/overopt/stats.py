"""Numbers, intervals and rank statistics (numpy and scipy), shared by the torch side (overopt.ops), the torch-free
report and the experiments: every "[lo, hi]" the lab prints comes from :func:`interval`."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np

LEVEL = 0.95
CI = dict[str, Any]  # {"mean", "lo", "hi", "n"}: the estimate, its interval and the number of units


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


def interval(units: Iterable[Any], statistic: Callable[[Sequence[Any]], Any] | None = None,
             level: float = LEVEL) -> CI:  # fmt: skip
    """Confidence interval over a few independent units (seeds, labs): Student t on the units.

    Without ``statistic``, ``units`` are one number per unit (None and non-finite values dropped) and
    the interval is the Student t interval of their mean, ``x̄ ± t_{n−1, (1+level)/2} · s/√n`` (s with
    ddof 1), which covers at its level for normal units at any n ≥ 2: at n = 3 a percentile bootstrap
    of the mean covers about 76 % at a nominal 95 % (it ignores that s underestimates σ and that the
    resampled mean takes few values), this 95 %.

    With ``statistic`` (a function of a list of units returning a number or None: a pooled fit, an
    envelope), the estimate is ``statistic(units)`` and its standard error the jackknife's, over the
    leave-one-unit-out estimates θ₍ᵢ₎: ``SE = sqrt((n−1)/n · Σ (θ₍ᵢ₎ − θ̄₍·₎)²)`` (Efron & Stein 1981),
    with the same t quantile on n − 1 degrees of freedom. For the mean this is exactly the t interval
    above; for a smooth statistic it is its delta-method analogue. A leave-one-out estimate that is
    None makes the interval None (the statistic is not defined on every n − 1 units).

    Returns ``{"mean": estimate, "lo", "hi", "n"}``: n = 0: all None; n = 1: lo and hi None (one unit
    has no spread to measure); all units equal: lo = hi = the estimate.
    """
    if not 0 < level < 1:
        raise ValueError(f"interval: level must be in (0, 1), got {level}")
    if statistic is None:
        units = [v for v in (finite_float(x) for x in units) if v is not None]
        statistic = _mean
    else:
        units = list(units)
    n = len(units)
    estimate = finite_float(statistic(units)) if n else None
    if estimate is None:
        return {"mean": None, "lo": None, "hi": None, "n": n}
    if n < 2:
        return {"mean": estimate, "lo": None, "hi": None, "n": n}
    leave_out = [finite_float(statistic(units[:i] + units[i + 1 :])) for i in range(n)]
    if any(v is None for v in leave_out):
        return {"mean": estimate, "lo": None, "hi": None, "n": n}
    theta = np.asarray(leave_out, dtype=np.float64)
    se = math.sqrt((n - 1) / n * float(((theta - theta.mean()) ** 2).sum()))
    half = t_quantile((1 + level) / 2, n - 1) * se
    return {"mean": estimate, "lo": estimate - half, "hi": estimate + half, "n": n}


def prediction_interval(units: Iterable[Any], level: float = LEVEL) -> CI:
    """Where one new unit (a new lab) falls: ``x̄ ± t_{n−1, (1+level)/2} · s · √(1 + 1/n)`` over the n finite
    units (s with ddof 1), the normal-theory prediction interval for one more draw.

    :func:`interval` bounds the mean over labs; a user who runs one lab of their own gets one draw, whose
    spread is the between-lab sd, not its standard error: this is the interval that draw falls in at
    ``level`` (for normal units). Returns ``{"mean", "lo", "hi", "n"}`` as :func:`interval` does.
    """
    if not 0 < level < 1:
        raise ValueError(f"prediction_interval: level must be in (0, 1), got {level}")
    xs = np.asarray([v for v in (finite_float(x) for x in units) if v is not None], dtype=np.float64)
    n = len(xs)
    if n < 2:
        return {"mean": float(xs[0]) if n else None, "lo": None, "hi": None, "n": n}
    mean, sd = float(xs.mean()), float(xs.std(ddof=1))
    half = t_quantile((1 + level) / 2, n - 1) * sd * math.sqrt(1 + 1 / n)
    return {"mean": mean, "lo": mean - half, "hi": mean + half, "n": n}


def nested_interval(values: Iterable[Any], groups: Sequence[Any], level: float = LEVEL) -> CI:
    """:func:`interval` over groups (labs) of per-item values (runs), each group's finite values averaged first.

    The lab is the unit when runs are nested in labs: runs of one lab share its proxy RM, so they are not
    independent draws, and the interval is the Student t interval of the group means (n = the groups that
    have a finite value; one such group: no interval). ``groups[i]`` is the group of ``values[i]``; items
    that are units themselves (runs of one lab, when the run is the unit) each get a group of their own.
    """
    values = [finite_float(v) for v in values]
    if len(values) != len(groups):
        raise ValueError(f"nested_interval: {len(values)} values but {len(groups)} groups")
    inside: dict[Any, list[float]] = {}
    for v, g in zip(values, groups, strict=True):
        if v is not None:
            inside.setdefault(g, []).append(v)
    return interval((math.fsum(vs) / len(vs) for vs in inside.values()), level=level)


def t_quantile(p: float, df: int) -> float:
    """The p-quantile of Student's t with ``df`` degrees of freedom (scipy.stats.t)."""
    from scipy.stats import t  # imported where an interval is computed: scipy is slow to import

    return float(t.ppf(p, df))


def _mean(values: Sequence[float]) -> float | None:
    return math.fsum(values) / len(values) if values else None


def variance_components(groups: Iterable[Iterable[Any]]) -> dict[str, Any] | None:
    """Between-group and within-group variance of one-way random-effects data (labs with their RL seeds).

    With k groups of n_i values y_ij (N in all), group means ȳ_i and grand mean ȳ, the ANOVA mean squares
    MSB = Σ n_i (ȳ_i − ȳ)² / (k − 1) and MSW = Σ Σ (y_ij − ȳ_i)² / (N − k) estimate σ²_w + n₀ σ²_b and σ²_w,
    with n₀ = (N − Σ n_i² / N) / (k − 1) (= n when every group has n): σ̂²_w = MSW and
    σ̂²_b = max(0, (MSB − MSW) / n₀), the method-of-moments (ANOVA) estimator (Searle, Casella & McCulloch,
    *Variance Components*, 1992, §3.5). ICC = σ̂²_b / (σ̂²_b + σ̂²_w): the share of one run's variance that is the
    lab's. Non-finite values are dropped; None with fewer than 2 groups or no group of 2 values.

    Returns {"between_var", "within_var", "between_sd", "within_sd", "icc", "groups", "n"}.
    """
    data = [[v for v in (finite_float(x) for x in g) if v is not None] for g in groups]
    data = [g for g in data if g]
    k, n_total = len(data), sum(len(g) for g in data)
    if k < 2 or n_total <= k:
        return None
    means = [math.fsum(g) / len(g) for g in data]
    grand = math.fsum(math.fsum(g) for g in data) / n_total
    msb = math.fsum(len(g) * (m - grand) ** 2 for g, m in zip(data, means, strict=True)) / (k - 1)
    msw = math.fsum((v - m) ** 2 for g, m in zip(data, means, strict=True) for v in g) / (n_total - k)
    n0 = (n_total - math.fsum(len(g) ** 2 for g in data) / n_total) / (k - 1)
    between = max(0.0, (msb - msw) / n0)
    total = between + msw
    return {"between_var": between, "within_var": msw, "between_sd": math.sqrt(between), "within_sd": math.sqrt(msw),
            "icc": between / total if total > 0 else None, "groups": k, "n": n_total}  # fmt: skip


def labs_to_resolve(effect: float | None, between_var: float, within_var: float, seeds: int,
                    level: float = LEVEL, most: int = 100) -> int | None:  # fmt: skip
    """The fewest labs (≥ 2, each with `seeds` RL seeds) whose Student t interval of the mean over labs would
    exclude 0 for an effect of this size, if the variance components were the estimated ones: the smallest
    L with t_{(1+level)/2, L−1} · sqrt((σ²_b + σ²_w / seeds) / L) < |effect| (the variance of a lab's mean over
    its seeds is σ²_b + σ²_w / seeds). None for no effect or beyond `most` labs."""
    if effect is None or effect == 0 or seeds < 1:
        return None
    per_lab = between_var + within_var / seeds
    for labs in range(2, most + 1):
        if t_quantile((1 + level) / 2, labs - 1) * math.sqrt(per_lab / labs) < abs(effect):
            return labs
    return None
