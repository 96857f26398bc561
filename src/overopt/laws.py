"""Scaling laws of reward-model overoptimization (Gao, Schulman & Hilton, arXiv 2210.10760), with numpy only.

The gold reward gain R = gold − gold_SFT is a function of d = sqrt(KL(π ‖ π_SFT)), with R(0) = 0:

* best-of-n: R_bon(d) = d(α − β·d), with KL_bon = log n − (n − 1)/n, which is an upper bound on the true
  KL(π_bon ‖ π_SFT) (Beirami et al., arXiv 2401.01879);
* RL:        R_RL(d)  = d(α − β·log d).

This module holds the unbiased best-of-n estimator from N ≥ n samples, the closed-form KL bound and a
plug-in KL on the empirical distribution, the least-squares fits of both forms, jackknife t confidence
intervals, and a forecast of the peak from the early part of a run.

It imports only numpy, overopt.stats and the standard library: the report uses it and must never import torch.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from overopt.stats import interval

FORMS = ("rl", "bon")


def log_grid(N: int) -> list[int]:
    """The best-of-n grid in half octaves, round(2^(k/2)) = 1, 2, 3, 4, 6, 8, 11, 16, ... up to N, with N itself
    appended when it is not on the grid. Half octaves rather than powers of two: the forecast fits the part of
    the curve below half its peak's d, which a power-of-two grid covers with one or two points."""
    N = _as_int(N, "log_grid: N")
    if N < 1:
        raise ValueError(f"log_grid: N must be >= 1, got {N}")
    grid, k = [], 0
    while (n := round(2 ** (k / 2))) <= N:
        if not grid or n != grid[-1]:
            grid.append(n)
        k += 1
    if grid[-1] != N:
        grid.append(N)
    return grid


def kl_bon_bound(n) -> float | np.ndarray:
    """log n − (n − 1)/n: the usual closed form of KL(π_bon,n ‖ π_SFT) (Stiennon et al.; Gao et al., arXiv
    2210.10760). It is exact for a continuous reward distribution without ties and an upper bound in general
    (Beirami et al., arXiv 2401.01879): completions with large probability mass (duplicates) make the true KL
    smaller. Vectorised: an array of n gives an array; a scalar gives a float."""
    arr = np.asarray(n, dtype=np.float64)
    if not np.all(np.isfinite(arr)) or np.any(arr < 1):
        raise ValueError(f"kl_bon_bound: n must be finite and >= 1, got {n!r}")
    out = np.log(arr) - (arr - 1.0) / arr
    return float(out) if out.ndim == 0 else out


def bon_weights(N: int, n: int) -> np.ndarray:
    """Weights w_i = C(i − 1, n − 1) / C(N, n), i = 1..N (0 for i < n), of N samples sorted ascending by score:
    the probability that sample i is the best of n drawn without replacement from the N, so that Σ w_i v_(i)
    is an unbiased estimate of the best-of-n expectation (the estimator of Gao et al., arXiv 2210.10760).

    Computed in log space from the last weight, w_N = n/N, with the ratio w_{i−1}/w_i = (i − n)/(i − 1): binomial
    coefficients of N in the thousands overflow float64, their logarithms do not."""
    N, n = _as_int(N, "bon_weights: N"), _as_int(n, "bon_weights: n")
    if not 1 <= n <= N:
        raise ValueError(f"bon_weights: need 1 <= n <= N, got n={n}, N={N}")
    w = np.zeros(N, dtype=np.float64)
    j = np.arange(n + 1, N + 1, dtype=np.float64)
    # suffix[k] = Σ_{j = n+1+k}^{N} log((j − n)/(j − 1)) = log(w_{n+k} / w_N)
    suffix = np.cumsum((np.log(j - n) - np.log(j - 1.0))[::-1])[::-1]
    log_w = math.log(n / N) + np.append(suffix, 0.0)
    w[n - 1 :] = np.exp(log_w)
    # The exact weights sum to 1 (hockey-stick identity); renormalising removes the rounding drift of the sums.
    return w / math.fsum(w)


def best_of_n(scores: np.ndarray, values: np.ndarray, ns: Iterable[int]) -> np.ndarray:
    """The unbiased best-of-n estimate (arXiv 2210.10760) of E[value of the highest-scoring sample among n drawn
    without replacement from N], averaged over prompts, for each n in `ns`.

    scores: (P, N) proxy scores of N samples for each of P prompts; values: (P, N) or (P, N, K) per-sample
    statistics (gold reward, length, ...). Returns shape (len(ns),) or (len(ns), K).

    Samples are ordered by a stable argsort of their scores. Identical completions have identical scores and
    values, so the order among them does not matter; distinct completions that tie exactly in score are ranked
    by their position. A non-finite value makes every estimate of its statistic non-finite."""
    scores = np.asarray(scores, dtype=np.float64)
    values = np.asarray(values, dtype=np.float64)
    if scores.ndim != 2 or scores.shape[1] < 1 or scores.shape[0] < 1:
        raise ValueError(f"best_of_n: scores must have shape (P, N) with P, N >= 1, got {scores.shape}")
    if values.ndim not in (2, 3) or values.shape[:2] != scores.shape:
        raise ValueError(
            f"best_of_n: values must have shape {scores.shape} or {scores.shape} + (K,), got {values.shape}"
        )
    if not np.all(np.isfinite(scores)):
        raise ValueError("best_of_n: scores must be finite (a nan or inf score has no rank)")
    P, N = scores.shape
    ns = [_as_int(n, "best_of_n: n") for n in ns]
    bad = [n for n in ns if not 1 <= n <= N]
    if bad:
        raise ValueError(f"best_of_n: every n must satisfy 1 <= n <= N = {N}, got {bad}")
    order = np.argsort(scores, axis=1, kind="stable")
    index = order if values.ndim == 2 else order[:, :, None]
    ranked = np.take_along_axis(values, index, axis=1)
    weights = np.stack([bon_weights(N, n) for n in ns]) if ns else np.zeros((0, N))
    # Average over prompts first: one (N,) or (N, K) mean of the ranked values, then one matmul per grid.
    return np.tensordot(weights, ranked.mean(axis=0), axes=([1], [0]))


def kl_bon_plugin(scores: np.ndarray, sample_ids: np.ndarray, n: int) -> float:
    """KL(π_bon,n ‖ p̂) on each prompt's empirical distribution p̂ of its N samples, averaged over the prompts.

    sample_ids (P, N): equal ids mark identical completions (merged into one outcome of p̂ with mass count/N);
    identical completions have identical scores, so the scores of one id must agree (to 1e-6 + 1e-5·|score|,
    which tolerates batch-dependent numerics; their mean is used). With F the CDF of p̂ ordered by score and F⁻
    the strict CDF, best-of-n puts π_bon(y) = F(y)^n − F⁻(y)^n on y. Distinct completions with exactly equal
    scores form one score level: the level's π_bon mass is split in proportion to p̂, so the KL is that of the
    levels, Σ_l π_l log(π_l / p̂_l).

    A plug-in estimate: it cannot exceed log(#distinct completions), so it is biased low as n approaches N;
    unlike the bound log n − (n − 1)/n (an upper bound, Beirami et al., arXiv 2401.01879) it accounts for
    outcomes with large mass, such as a completion sampled many times. n may exceed N (π_bon on p̂ is defined
    for any n), though the estimate then only says how concentrated p̂ is."""
    scores = np.asarray(scores, dtype=np.float64)
    sample_ids = np.asarray(sample_ids)
    if scores.ndim != 2 or min(scores.shape) < 1:
        raise ValueError(f"kl_bon_plugin: scores must have shape (P, N) with P, N >= 1, got {scores.shape}")
    if sample_ids.shape != scores.shape:
        raise ValueError(
            f"kl_bon_plugin: sample_ids must have shape {scores.shape} like scores, got {sample_ids.shape}"
        )
    if not np.all(np.isfinite(scores)):
        raise ValueError("kl_bon_plugin: scores must be finite (a nan or inf score has no rank)")
    n = _as_int(n, "kl_bon_plugin: n")
    if n < 1:
        raise ValueError(f"kl_bon_plugin: n must be >= 1, got {n}")
    N = scores.shape[1]
    kls = []
    for p, (row, ids) in enumerate(zip(scores, sample_ids)):
        _, inverse, counts = np.unique(ids, return_inverse=True, return_counts=True)
        inverse = inverse.reshape(-1)
        id_score = np.bincount(inverse, weights=row) / counts
        spread = np.abs(row - id_score[inverse])
        if np.any(spread > 1e-6 + 1e-5 * np.abs(id_score[inverse])):
            raise ValueError(
                f"kl_bon_plugin: prompt {p}: samples with the same id have different scores "
                f"(spread {spread.max():.3g}); ids must mark identical completions"
            )
        _, level = np.unique(id_score, return_inverse=True)
        level_count = np.bincount(level.reshape(-1), weights=counts)
        cum_count = np.cumsum(level_count)
        with np.errstate(divide="ignore"):
            # F^n − F⁻^n = F^n (1 − (1 − q/F)^n), in expm1/log1p form: the top level has F = 1, and 1 − (1 − q)^n
            # loses every digit of a small q when written as a difference. The lowest level has q/F = 1: log1p → −inf.
            pi = np.exp(n * np.log(cum_count / N)) * -np.expm1(n * np.log1p(-level_count / cum_count))
        q = level_count / N
        # π_l = 0 only by underflow (a low level at large n), and 0·log 0 = 0.
        pos = pi > 0
        kls.append(math.fsum(pi[pos] * (np.log(pi[pos]) - np.log(q[pos]))))
    return math.fsum(kls) / len(kls)


@dataclass(frozen=True)
class Fit:
    """A fitted form (arXiv 2210.10760): "rl" R = d(α − β log d) or "bon" R = d(α − β d), d = sqrt(KL).

    r2 = 1 − SS_res/SS_tot with SS_tot centred on the mean of R (the through-origin model has no intercept, so
    r2 compares it with the best constant, not with 0); None when every R is equal (SS_tot = 0). d_max is the
    largest d fitted: beyond it the form is an extrapolation."""

    form: str
    alpha: float
    beta: float
    r2: float | None
    n_points: int
    d_max: float

    @property
    def d_peak(self) -> float | None:
        """The d ≥ 0 that maximises R; None without a peak (β ≤ 0: R never turns over) or beyond float range.

        rl: d* = exp(α/β − 1). bon: d* = α/(2β), clamped at 0 when α ≤ 0 (the vertex lies at negative d, where
        no policy is: over d ≥ 0 the curve only falls, so its maximum is R(0) = 0)."""
        if not self.beta > 0:
            return None
        if self.form == "rl":
            try:
                d = math.exp(self.alpha / self.beta - 1.0)
            except OverflowError:
                return None
        else:
            d = max(self.alpha / (2.0 * self.beta), 0.0)
        return d if math.isfinite(d) else None

    @property
    def gold_peak(self) -> float | None:
        """Predicted R at d_peak: the gain in gold reward over SFT (rl: β·d*; bon: α²/(4β), or 0 when α ≤ 0)."""
        d = self.d_peak
        if d is None:
            return None
        if self.form == "rl":
            return self.beta * d
        return self.alpha**2 / (4.0 * self.beta) if self.alpha > 0 else 0.0

    @classmethod
    def from_dict(cls, fit: dict[str, Any]) -> Fit:
        """The Fit of a `fit_curves` result (as stored in summary.json)."""
        return cls(fit["form"], fit["alpha"], fit["beta"], fit["r2"], fit["n_points"], fit["d_max"])

    def predict(self, d) -> np.ndarray:
        """R at d (array-like, d ≥ 0; nan passes through); R(0) = 0 for both forms."""
        d = np.asarray(d, dtype=np.float64)
        if np.any(d < 0):
            raise ValueError(f"Fit.predict: d must be >= 0 (sqrt of a KL), got min {np.nanmin(d):.6g}")
        return self.alpha * d - self.beta * _features(d, self.form)[1]


def fit_form(d, R, form: str) -> Fit:
    """Least squares through the origin of R on d (arXiv 2210.10760): linear in (α, β) with features
    [d, −d log d] for "rl" (d log d := 0 at d = 0) or [d, −d²] for "bon".

    Points with non-finite d or R are dropped first. Raises a one-line ValueError for an unknown form, d < 0,
    fewer than 3 points, every d = 0, or a design matrix of rank < 2 (e.g. a single distinct d > 0)."""
    _check_form(form)
    d = np.asarray(d, dtype=np.float64).reshape(-1)
    R = np.asarray(R, dtype=np.float64).reshape(-1)
    if d.shape != R.shape:
        raise ValueError(f"fit {form}: d and R must have the same length, got {d.size} and {R.size}")
    keep = np.isfinite(d) & np.isfinite(R)
    d, R = d[keep], R[keep]
    if d.size < 3:
        raise ValueError(f"fit {form}: needs at least 3 points with finite d and R, got {d.size}")
    if np.any(d < 0):
        raise ValueError(f"fit {form}: d must be >= 0 (sqrt of a KL), got min {d.min():.6g}")
    if not np.any(d > 0):
        raise ValueError(f"fit {form}: every d is 0: nothing to fit")
    lin, curv = _features(d, form)
    X = np.stack([lin, -curv], axis=1)
    coef, _, rank, _ = np.linalg.lstsq(X, R, rcond=None)
    if rank < 2:
        raise ValueError(f"fit {form}: design matrix has rank {rank} < 2 (too few distinct d > 0)")
    alpha, beta = float(coef[0]), float(coef[1])
    ss_res = math.fsum((R - X @ coef) ** 2)
    ss_tot = math.fsum((R - R.mean()) ** 2)
    r2 = 1.0 - ss_res / ss_tot if ss_tot > 0 else None
    return Fit(form, alpha, beta, r2, int(d.size), float(d.max()))


def fit_curves(curves, form: str, level: float = 0.95) -> dict[str, Any]:
    """Fit `form` to one method's curves, one (d, R) pair of arrays per seed, with intervals over seeds.

    The point fit pools every seed's points (fit_form; its ValueError propagates). Each coefficient's interval
    is overopt.stats.interval's jackknife over seeds: the pooled fit refitted with one seed left out, Student t
    on S − 1 degrees of freedom (seeds, not points, are the units, because points of one run are correlated).
    An interval is None with one seed, or when a leave-one-out fit fails or (d_peak, gold_peak) has no peak.
    Deterministic.

    Returns a JSON-ready dict: form, alpha, beta, r2, d_peak, gold_peak, n_points, n_seeds,
    d_max, ci {alpha, beta, d_peak, gold_peak: [lo, hi] or None}, level, forecast (see `forecast`)."""
    _check_form(form)
    if not 0 < level < 1:
        raise ValueError(f"fit_curves: level must be in (0, 1), got {level}")
    seeds = _as_curves(curves, f"fit {form}")
    fit = fit_form(np.concatenate([d for d, _ in seeds]), np.concatenate([R for _, R in seeds]), form)

    def coefficient(name: str):
        def statistic(subset):
            try:
                return getattr(fit_form(np.concatenate([d for d, _ in subset]),
                                        np.concatenate([R for _, R in subset]), form), name)  # fmt: skip
            except ValueError:
                return None

        ci = interval(seeds, statistic=statistic, level=level)
        return None if ci["lo"] is None else [ci["lo"], ci["hi"]]

    return {
        "form": form,
        "alpha": fit.alpha,
        "beta": fit.beta,
        "r2": fit.r2,
        "d_peak": fit.d_peak,
        "gold_peak": fit.gold_peak,
        "n_points": fit.n_points,
        "d_max": fit.d_max,
        "n_seeds": len(seeds),
        "ci": {name: coefficient(name) for name in ("alpha", "beta", "d_peak", "gold_peak")},
        "level": float(level),
        "forecast": forecast(curves, form),
    }


def observed_peak(curves) -> tuple[float, float]:
    """(d, R) at the peak of the mean curve. The curves are evaluations at the same steps (or n) for every
    seed, so points are grouped by position (up to the shortest curve), d and R averaged over seeds at each
    position (non-finite values ignored), and the position with the largest mean R is returned (the first,
    on a tie). Raises ValueError for no curves, empty curves, or no position with a finite mean."""
    seeds = _as_curves(curves, "observed_peak")
    i, d_mean, R_mean = _peak_index(seeds)
    return float(d_mean[i]), float(R_mean[i])


def forecast(curves, form: str) -> dict[str, Any]:
    """What a user wants before a full run: fit `form` only on the points with d <= half the observed peak's d
    (each point of each seed on its own, pooled over seeds), then compare the predicted peak with the observed
    peak of the mean curve (observed_peak).

    Returns d_cut, n_points (points fitted), d_peak, gold_peak (predicted), observed_d_peak,
    observed_gold_peak, d_peak_error (predicted − observed), d_peak_rel_error ((predicted − observed)/observed),
    gold_peak_error, and error. Never raises for data problems: error is then a one-line reason (no observed
    peak, observed peak at d = 0, observed peak at the last point, i.e. the mean curve has not turned over so
    there is nothing to compare with, fewer than 3 points below the cut, a failed fit, no predicted peak) and
    the predicted numbers and errors are None (what was already known, such as the observed peak, is kept)."""
    _check_form(form)
    out: dict[str, Any] = dict.fromkeys(
        ("d_cut", "n_points", "d_peak", "gold_peak", "observed_d_peak", "observed_gold_peak", "d_peak_error",
         "d_peak_rel_error", "gold_peak_error", "error"),
    )  # fmt: skip
    try:
        seeds = _as_curves(curves, f"forecast {form}")
        i, d_mean, R_mean = _peak_index(seeds)
    except ValueError as err:
        out["error"] = str(err)
        return out
    obs_d, obs_R = float(d_mean[i]), float(R_mean[i])
    out["observed_d_peak"], out["observed_gold_peak"] = obs_d, obs_R
    if not obs_d > 0:
        out["error"] = f"forecast {form}: observed peak at d = {obs_d:.6g}: no points below half of it to fit"
        return out
    if i == d_mean.size - 1:
        out["error"] = f"forecast {form}: observed peak is the last point: the mean curve has not turned over"
        return out
    d_cut = obs_d / 2.0
    out["d_cut"] = d_cut
    d = np.concatenate([s[0] for s in seeds])
    R = np.concatenate([s[1] for s in seeds])
    below = np.isfinite(d) & np.isfinite(R) & (d <= d_cut)
    out["n_points"] = int(below.sum())
    if out["n_points"] < 3:
        out["error"] = (
            f"forecast {form}: {out['n_points']} points with d <= {d_cut:.6g} (half the observed peak), need >= 3"
        )
        return out
    try:
        fit = fit_form(d[below], R[below], form)
    except ValueError as err:
        out["error"] = str(err)
        return out
    if fit.d_peak is None:
        out["error"] = f"forecast {form}: no predicted peak (beta = {fit.beta:.6g} <= 0)"
        return out
    out["d_peak"], out["gold_peak"] = fit.d_peak, fit.gold_peak
    out["d_peak_error"] = fit.d_peak - obs_d
    out["d_peak_rel_error"] = (fit.d_peak - obs_d) / obs_d
    out["gold_peak_error"] = fit.gold_peak - obs_R
    return out


def _features(d: np.ndarray, form: str) -> tuple[np.ndarray, np.ndarray]:
    """(d, curvature term) with R = α·d − β·curvature: d log d (0 at d = 0, its limit) or d². nan stays nan."""
    if form == "rl":
        positive = d > 0
        curv = np.where(d == 0, 0.0, np.nan)
        curv[positive] = d[positive] * np.log(d[positive])
        return d, curv
    return d, d * d


def _check_form(form: str) -> None:
    if form not in FORMS:
        raise ValueError(f"fit: unknown form {form!r} (expected one of {', '.join(FORMS)})")


def _as_int(n, what: str) -> int:
    """n as an int; ValueError for a bool, a non-integral number, or something that is not a number."""
    try:
        value = int(n)
        integral = not isinstance(n, bool | np.bool_) and value == n
    except (TypeError, ValueError, OverflowError):
        integral = False
    if not integral:
        raise ValueError(f"{what} must be an integer, got {n!r}")
    return value


def _as_curves(curves, what: str) -> list[tuple[np.ndarray, np.ndarray]]:
    """The curves as float64 (d, R) pairs of equal length; ValueError when there are none or a pair is malformed."""
    if isinstance(curves, np.ndarray) or not isinstance(curves, Sequence) or len(curves) == 0:
        raise ValueError(f"{what}: needs a non-empty list of (d, R) curves, one per seed")
    out = []
    for k, curve in enumerate(curves):
        if len(curve) != 2:
            raise ValueError(f"{what}: curve {k} must be a (d, R) pair, got {len(curve)} items")
        d = np.asarray(curve[0], dtype=np.float64).reshape(-1)
        R = np.asarray(curve[1], dtype=np.float64).reshape(-1)
        if d.shape != R.shape:
            raise ValueError(f"{what}: curve {k} has {d.size} d values but {R.size} R values")
        out.append((d, R))
    return out


def _peak_index(seeds: list[tuple[np.ndarray, np.ndarray]]) -> tuple[int, np.ndarray, np.ndarray]:
    """(index of the largest mean R, mean d, mean R): positions up to the shortest curve, averaged over seeds
    ignoring non-finite values; the first index on a tie."""
    length = min(d.size for d, _ in seeds)
    if length == 0:
        raise ValueError("observed_peak: a curve has no points")
    d_mean = _finite_mean(np.stack([s[0][:length] for s in seeds]))
    R_mean = _finite_mean(np.stack([s[1][:length] for s in seeds]))
    ok = np.isfinite(d_mean) & np.isfinite(R_mean)
    if not np.any(ok):
        raise ValueError("observed_peak: no position has a finite mean d and R")
    return int(np.argmax(np.where(ok, R_mean, -np.inf))), d_mean, R_mean


def _finite_mean(x: np.ndarray) -> np.ndarray:
    ok = np.isfinite(x)
    count = ok.sum(axis=0)
    total = np.where(ok, x, 0.0).sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / np.maximum(count, 1), np.nan)
