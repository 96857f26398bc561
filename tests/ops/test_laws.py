"""Tests for overopt.laws (Gao et al., arXiv 2210.10760) against brute force, exact arithmetic and closed forms."""

from __future__ import annotations

import itertools
import json
import math
import subprocess
import sys
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from overopt.laws import (
    FORMS,
    Fit,
    best_of_n,
    bon_weights,
    fit_curves,
    fit_form,
    forecast,
    kl_bon_bound,
    kl_bon_plugin,
    log_grid,
    observed_peak,
)

ALPHA, BETA = 1.0, 0.5


def _rl(d):
    d = np.asarray(d, dtype=np.float64)
    return np.where(d > 0, d * (ALPHA - BETA * np.log(np.where(d > 0, d, 1.0))), 0.0)


def _bon(d):
    d = np.asarray(d, dtype=np.float64)
    return d * (ALPHA - BETA * d)


TRUTH = {"rl": _rl, "bon": _bon}


def test_laws_imports_no_torch():
    code = "import sys, overopt.laws; assert 'torch' not in sys.modules, 'overopt.laws imported torch'"
    subprocess.run([sys.executable, "-c", code], check=True)


# ----- grid and KL bound -----


def test_log_grid():
    assert log_grid(1) == [1]
    assert log_grid(2) == [1, 2]
    assert log_grid(8) == [1, 2, 3, 4, 6, 8]
    assert log_grid(100) == [1, 2, 3, 4, 6, 8, 11, 16, 23, 32, 45, 64, 91, 100]
    assert log_grid(256)[-3:] == [128, 181, 256]
    with pytest.raises(ValueError, match="N must be >= 1"):
        log_grid(0)


def test_kl_bon_bound():
    assert kl_bon_bound(1) == 0.0
    assert kl_bon_bound(2) == pytest.approx(math.log(2) - 0.5, abs=1e-15)
    assert isinstance(kl_bon_bound(4), float)
    ns = np.array([1, 2, 16, 1024])
    out = kl_bon_bound(ns)
    assert isinstance(out, np.ndarray) and out.shape == (4,)
    np.testing.assert_allclose(out, [math.log(n) - (n - 1) / n for n in ns.tolist()], rtol=0, atol=1e-14)
    with pytest.raises(ValueError, match=">= 1"):
        kl_bon_bound(0)
    with pytest.raises(ValueError, match=">= 1"):
        kl_bon_bound(np.array([1, 0.5]))


# ----- best-of-n weights and estimator -----


def _exact_weights(N, n):
    return [Fraction(math.comb(i - 1, n - 1), math.comb(N, n)) if i >= n else Fraction(0) for i in range(1, N + 1)]


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 40).flatmap(lambda N: st.tuples(st.just(N), st.integers(1, N))))
def test_bon_weights_match_math_comb(Nn):
    N, n = Nn
    w = bon_weights(N, n)
    exact = _exact_weights(N, n)
    assert w.dtype == np.float64 and w.shape == (N,)
    for got, want in zip(w.tolist(), exact):
        assert got == pytest.approx(float(want), rel=1e-13, abs=0.0)
    assert math.fsum(w) == pytest.approx(1.0, abs=1e-15)
    assert w[-1] == pytest.approx(n / N, rel=1e-14)


@pytest.mark.parametrize("n", [1, 2, 7, 64, 1000, 4095, 4096])
def test_bon_weights_stable_for_large_N(n):
    N = 4096
    w = bon_weights(N, n)
    assert np.all(np.isfinite(w)) and np.all(w >= 0)
    assert math.fsum(w) == pytest.approx(1.0, abs=1e-13)
    assert w[-1] == pytest.approx(n / N, rel=1e-11)
    assert np.all(w[: n - 1] == 0)
    assert np.all(np.diff(w[n - 1 :]) >= 0)  # a higher-ranked sample is never less likely to be the best


def test_bon_weights_rejects_bad_n():
    for N, n in [(5, 0), (5, 6), (0, 1)]:
        with pytest.raises(ValueError, match="1 <= n <= N"):
            bon_weights(N, n)


def _brute_best_of_n(scores, values, n):
    """Mean over prompts of the mean, over every n-subset, of the value of the subset's top-scoring sample."""
    per_prompt = []
    for s, v in zip(scores.tolist(), values):
        subsets = list(itertools.combinations(range(len(s)), n))
        best = [max(sub, key=lambda i: s[i]) for sub in subsets]
        per_prompt.append(np.mean([v[i] for i in best], axis=0))
    return np.mean(per_prompt, axis=0)


def test_best_of_n_matches_brute_force():
    rng = np.random.default_rng(7)
    P, N, K = 4, 7, 3
    scores = rng.permuted(np.tile(np.arange(N, dtype=np.float64), (P, 1)), axis=1) + rng.normal(0, 0.1, (P, 1))
    values = rng.normal(size=(P, N, K))
    ns = list(range(1, N + 1))
    out = best_of_n(scores, values, ns)
    assert out.shape == (N, K) and out.dtype == np.float64
    for row, n in zip(out, ns):
        np.testing.assert_allclose(row, _brute_best_of_n(scores, values, n), rtol=0, atol=1e-12)
    np.testing.assert_allclose(out[0], values.mean(axis=(0, 1)), rtol=0, atol=1e-12)
    top = values[np.arange(P), scores.argmax(axis=1)]
    np.testing.assert_allclose(out[-1], top.mean(axis=0), rtol=0, atol=1e-12)
    # (P, N) values give a (len(ns),) result, the same as the first column of the vector case
    flat = best_of_n(scores, values[:, :, 0], [1, 3, N])
    assert flat.shape == (3,)
    np.testing.assert_allclose(flat, out[[0, 2, N - 1], 0], rtol=0, atol=1e-12)
    # a mutation: sorting descending instead of ascending changes the answer by far more than the tolerance
    assert np.abs(best_of_n(-scores, values, [N])[0] - out[-1]).max() > 1e-3


def test_best_of_n_identical_completions_tie_harmlessly():
    """Tied samples that are identical completions (equal score and value): the order among them is irrelevant."""
    rng = np.random.default_rng(3)
    base_scores = rng.normal(size=(3, 4))
    base_values = rng.normal(size=(3, 4))
    dup = [0, 1, 1, 2, 3, 3, 3]  # each prompt's 7 samples: completions 1 and 3 sampled several times
    scores, values = base_scores[:, dup], base_values[:, dup]
    out = best_of_n(scores, values, range(1, 8))
    for k, n in enumerate(range(1, 8)):
        assert out[k] == pytest.approx(_brute_best_of_n(scores, values, n), abs=1e-12)
    perm = rng.permutation(7)
    np.testing.assert_allclose(best_of_n(scores[:, perm], values[:, perm], range(1, 8)), out, rtol=0, atol=1e-12)


def test_best_of_n_errors():
    scores, values = np.zeros((2, 5)), np.zeros((2, 5))
    with pytest.raises(ValueError, match="values must have shape"):
        best_of_n(scores, np.zeros((2, 4)), [1])
    with pytest.raises(ValueError, match="scores must have shape"):
        best_of_n(np.zeros(5), np.zeros(5), [1])
    bad = scores.copy()
    bad[1, 2] = np.nan
    with pytest.raises(ValueError, match="finite"):
        best_of_n(bad, values, [1])
    with pytest.raises(ValueError, match="1 <= n <= N"):
        best_of_n(scores, values, [1, 6])
    with pytest.raises(ValueError, match="1 <= n <= N"):
        best_of_n(scores, values, [0])


# ----- plug-in KL -----


def _ref_plugin(scores, ids, n):
    """Python-loop reference: merge ids, sort levels by score, π = F^n − F⁻^n, KL summed over completions."""
    kls = []
    for s, i in zip(scores.tolist(), ids.tolist()):
        N = len(s)
        mass, score = {}, {}
        for sc, k in zip(s, i):
            mass[k] = mass.get(k, 0) + 1
            score[k] = sc
        levels = sorted(set(score.values()))
        kl, below = 0.0, 0
        for lev in levels:
            members = [k for k in mass if score[k] == lev]
            q = sum(mass[k] for k in members)
            pi = ((below + q) / N) ** n - (below / N) ** n
            for k in members:  # the level's π split in proportion to p̂
                p, pk = mass[k] / N, pi * mass[k] / q
                kl += pk * math.log(pk / p) if pk > 0 else 0.0
            below += q
        kls.append(kl)
    return sum(kls) / len(kls)


def test_kl_bon_plugin_trivial_cases():
    rng = np.random.default_rng(0)
    scores = rng.normal(size=(3, 50))
    distinct = np.tile(np.arange(50), (3, 1))
    assert kl_bon_plugin(scores, distinct, 1) == pytest.approx(0.0, abs=1e-15)
    same = np.zeros((3, 50), dtype=np.int64)
    flat = np.full((3, 50), 0.3)
    for n in (1, 4, 1000):
        assert kl_bon_plugin(flat, same, n) == pytest.approx(0.0, abs=1e-15)


@pytest.mark.parametrize("n", [1, 2, 3, 8, 50])
def test_kl_bon_plugin_binary_closed_form(n):
    # two distinct outcomes of mass 1/2: π_bon puts (1/2)^n on the lower, 1 − (1/2)^n on the upper
    scores = np.array([[0.0, 1.0, 0.0, 1.0]])
    ids = np.array([[5, 9, 5, 9]])
    lo = 0.5**n
    hi = 1.0 - lo
    want = lo * math.log(lo / 0.5) + hi * math.log(hi / 0.5)
    assert kl_bon_plugin(scores, ids, n) == pytest.approx(want, rel=1e-13, abs=1e-15)


def test_kl_bon_plugin_matches_loop_with_duplicates_and_level_ties():
    rng = np.random.default_rng(11)
    P, N = 4, 40
    ids = rng.integers(0, 12, size=(P, N))
    table = rng.normal(size=12)
    table[3] = table[7]  # two distinct completions with equal scores: one level
    scores = table[ids]
    for n in (1, 2, 5, 16, 40, 200):
        assert kl_bon_plugin(scores, ids, n) == pytest.approx(_ref_plugin(scores, ids, n), rel=1e-11, abs=1e-14)


def test_kl_bon_plugin_close_to_bound_when_all_distinct():
    rng = np.random.default_rng(1)
    N, n = 2000, 4
    scores = rng.normal(size=(2, N))
    ids = np.tile(np.arange(N), (2, 1))
    plugin, bound = kl_bon_plugin(scores, ids, n), kl_bon_bound(n)
    assert plugin <= bound + 1e-12
    assert bound - plugin < 0.05
    assert plugin == pytest.approx(_ref_plugin(scores, ids, n), rel=1e-10)


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 2**32 - 1), st.integers(1, 64))
def test_kl_bon_plugin_never_exceeds_bound(seed, n):
    """KL(π_bon ‖ p) <= log n − (n−1)/n for every p (Beirami et al., arXiv 2401.01879); the plug-in is such a KL."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, rng.integers(1, 30), size=(2, 30))
    scores = rng.normal(size=40)[ids]
    plugin = kl_bon_plugin(scores, ids, n)
    assert -1e-15 <= plugin <= kl_bon_bound(n) + 1e-12
    assert plugin <= math.log(30) + 1e-12


def test_kl_bon_plugin_errors():
    scores = np.array([[0.0, 1.0, 2.0]])
    with pytest.raises(ValueError, match="same id have different scores"):
        kl_bon_plugin(scores, np.array([[0, 0, 1]]), 2)
    with pytest.raises(ValueError, match="sample_ids must have shape"):
        kl_bon_plugin(scores, np.array([0, 1, 2]), 2)
    with pytest.raises(ValueError, match="n must be >= 1"):
        kl_bon_plugin(scores, np.array([[0, 1, 2]]), 0)


# ----- fits -----


@pytest.mark.parametrize("form", FORMS)
def test_fit_form_exact_on_noiseless_data(form):
    d = np.linspace(0.0, 5.0, 30)
    fit = fit_form(d, TRUTH[form](d), form)
    assert fit.alpha == pytest.approx(ALPHA, abs=1e-10)
    assert fit.beta == pytest.approx(BETA, abs=1e-10)
    assert fit.r2 == pytest.approx(1.0, abs=1e-12)
    assert (fit.form, fit.n_points, fit.d_max) == (form, 30, 5.0)
    np.testing.assert_allclose(fit.predict(d), TRUTH[form](d), rtol=0, atol=1e-10)
    assert fit.predict(0.0) == 0.0


@pytest.mark.parametrize("form", FORMS)
def test_fit_form_recovers_parameters_from_noisy_data(form):
    rng = np.random.default_rng(5)
    d = np.sort(rng.uniform(0.0, 5.0, 50))
    R = TRUTH[form](d) + rng.normal(0.0, 0.01, d.size)
    fit = fit_form(d, R, form)
    assert abs(fit.alpha - ALPHA) < 0.05 and abs(fit.beta - BETA) < 0.05
    assert fit.r2 > 0.99
    # non-finite points are dropped before fitting
    fit_nan = fit_form(np.append(d, [np.nan, 1.0]), np.append(R, [1.0, np.inf]), form)
    assert (fit_nan.alpha, fit_nan.beta, fit_nan.n_points) == (fit.alpha, fit.beta, 50)


@pytest.mark.parametrize(
    ("form", "alpha", "beta"), [("rl", 1.0, 0.5), ("rl", 0.3, 0.8), ("bon", 1.0, 0.5), ("bon", 2.0, 0.3)]
)
def test_peak_formulas_match_dense_argmax(form, alpha, beta):
    fit = Fit(form, alpha, beta, None, 10, 1.0)
    d = np.linspace(0.0, 3 * fit.d_peak, 300_001)
    R = fit.predict(d)
    i = int(np.argmax(R))
    assert fit.d_peak == pytest.approx(d[i], abs=2 * (d[1] - d[0]))
    assert fit.gold_peak == pytest.approx(R[i], rel=1e-9)
    assert fit.gold_peak == pytest.approx(float(fit.predict(fit.d_peak)), rel=1e-12)


@pytest.mark.parametrize("form", FORMS)
def test_no_peak_without_positive_beta(form):
    for beta in (0.0, -0.2):
        fit = Fit(form, 1.0, beta, 0.9, 10, 3.0)
        assert fit.d_peak is None and fit.gold_peak is None
    d = np.linspace(0.0, 4.0, 20)
    fit = fit_form(d, 0.7 * d + 0.1 * d**2, form)  # convex: β < 0
    assert fit.beta < 0 and fit.d_peak is None


def test_bon_peak_is_at_zero_when_alpha_not_positive():
    fit = Fit("bon", -0.5, 0.5, None, 10, 3.0)
    assert fit.d_peak == 0.0 and fit.gold_peak == 0.0


def test_rl_peak_beyond_float_range_is_none():
    assert Fit("rl", 1000.0, 1.0, None, 10, 3.0).d_peak is None


def test_fit_form_r2_none_when_R_constant():
    assert fit_form([0.0, 1.0, 2.0, 3.0], [0.0, 0.0, 0.0, 0.0], "bon").r2 is None


@pytest.mark.parametrize(
    ("d", "R", "form", "match"),
    [
        ([0.0, 1.0], [0.0, 1.0], "rl", r"^fit rl: needs at least 3 points with finite d and R, got 2$"),
        ([0.0, 1.0, np.nan], [0.0, 1.0, 2.0], "bon", r"^fit bon: needs at least 3 points with finite d and R, got 2$"),
        ([0.0, 0.0, 0.0], [0.0, 0.1, -0.1], "bon", r"^fit bon: every d is 0: nothing to fit$"),
        ([0.0, -1.0, 2.0], [0.0, 1.0, 2.0], "rl", r"^fit rl: d must be >= 0"),
        ([0.0, 1.0, 2.0], [0.0, 1.0, 2.0], "quadratic", r"^fit: unknown form 'quadratic'"),
        ([0.0, 1.0, 1.0], [0.0, 1.0, 2.0], "rl", r"^fit rl: design matrix has rank 1 < 2"),
        ([0.0, 2.0, 2.0, 2.0], [0.0, 1.0, 2.0, 3.0], "bon", r"^fit bon: design matrix has rank 1 < 2"),
    ],
)
def test_fit_form_errors(d, R, form, match):
    with pytest.raises(ValueError, match=match) as info:
        fit_form(d, R, form)
    assert "\n" not in str(info.value)


def test_predict_rejects_negative_d():
    with pytest.raises(ValueError, match="d must be >= 0"):
        Fit("rl", 1.0, 0.5, None, 3, 1.0).predict([-0.1, 1.0])


# ----- multi-seed fits, jackknife intervals, forecast -----


def _curves(form, n_seeds, sigma, seed, d_max=6.0, points=61, alpha_sd=0.0):
    rng = np.random.default_rng(seed)
    d = np.linspace(0.0, d_max, points)
    curves = []
    for _ in range(n_seeds):
        a = ALPHA + alpha_sd * rng.normal()
        R = d * (a - BETA * (np.log(np.where(d > 0, d, 1.0)) if form == "rl" else d))
        curves.append((d.tolist(), (R + rng.normal(0.0, sigma, d.size)).tolist()))
    return curves


@pytest.mark.parametrize("form", FORMS)
def test_fit_curves_ci_contains_truth_and_is_deterministic(form):
    curves = _curves(form, n_seeds=8, sigma=0.02, seed=0, alpha_sd=0.03)
    out = fit_curves(curves, form)
    assert out == fit_curves(curves, form)
    json.dumps(out, allow_nan=False)
    assert out["form"] == form and out["n_seeds"] == 8 and out["n_points"] == 8 * 61
    lo, hi = out["ci"]["alpha"]
    assert lo <= ALPHA <= hi and lo < out["alpha"] < hi
    lo, hi = out["ci"]["beta"]
    assert lo <= BETA <= hi
    for key in ("d_peak", "gold_peak"):
        lo, hi = out["ci"][key]
        assert lo <= out[key] <= hi
    assert out["level"] == 0.95 and out["forecast"] == forecast(curves, form)


def test_fit_curves_ci_is_the_jackknife_over_seeds():
    # The interval written out by hand: leave-one-seed-out pooled fits, jackknife SE, t on S − 1 df.
    curves = _curves("rl", n_seeds=4, sigma=0.02, seed=3, alpha_sd=0.03)
    out = fit_curves(curves, "rl")
    loo = [fit_form(np.concatenate([np.asarray(c[0]) for j, c in enumerate(curves) if j != i]),
                    np.concatenate([np.asarray(c[1]) for j, c in enumerate(curves) if j != i]), "rl").alpha
           for i in range(4)]  # fmt: skip
    se = math.sqrt(3 / 4 * sum((a - sum(loo) / 4) ** 2 for a in loo))
    half = 3.182446305284263 * se  # t_{3, 0.975}
    assert out["ci"]["alpha"] == pytest.approx([out["alpha"] - half, out["alpha"] + half], rel=1e-10)


def test_fit_curves_ci_coverage():
    """Over 40 synthetic data sets of 5 seeds each, the 95% interval of alpha covers the truth about as often as
    it should (at least 36; a percentile bootstrap over so few seeds under-covers)."""
    covered = 0
    for k in range(40):
        out = fit_curves(_curves("rl", n_seeds=5, sigma=0.02, seed=100 + k, alpha_sd=0.03), "rl")
        lo, hi = out["ci"]["alpha"]
        covered += lo <= ALPHA <= hi
    assert covered >= 36


def test_fit_curves_one_seed_has_no_ci():
    out = fit_curves(_curves("rl", n_seeds=1, sigma=0.01, seed=0), "rl")
    assert out["ci"] == {"alpha": None, "beta": None, "d_peak": None, "gold_peak": None}
    assert out["n_seeds"] == 1
    assert out["alpha"] == pytest.approx(ALPHA, abs=0.05)


def test_fit_curves_without_a_leave_one_out_fit_has_no_ci():
    # one seed has every d = 0: the fit that leaves the other out cannot be made
    good = ([0.0, 1.0, 2.0, 3.0], [0.0, 0.5, 0.0, -1.5])
    bad = ([0.0, 0.0, 0.0], [0.0, 0.1, 0.2])
    out = fit_curves([good, bad], "bon")
    assert out["alpha"] is not None and out["ci"]["alpha"] is None


def test_fit_curves_raises_when_point_fit_fails():
    with pytest.raises(ValueError, match="needs a non-empty list"):
        fit_curves([], "rl")
    with pytest.raises(ValueError, match="every d is 0"):
        fit_curves([([0.0, 0.0, 0.0], [0.0, 1.0, 2.0])], "rl")


def test_observed_peak_uses_mean_curve_and_shortest_length():
    curves = [([0.0, 1.0, 2.0, 3.0], [0.0, 1.0, 3.0, 9.0]), ([0.0, 1.2, 2.2], [0.0, 1.0, 2.0])]
    assert observed_peak(curves) == pytest.approx((2.1, 2.5))
    with pytest.raises(ValueError, match="no points"):
        observed_peak([([], [])])


@pytest.mark.parametrize("form", FORMS)
def test_forecast_predicts_interior_peak(form):
    d_max = 6.0 if form == "rl" else 2.0  # true peaks: e ≈ 2.72 (rl), 1.0 (bon)
    curves = _curves(form, n_seeds=3, sigma=0.003, seed=4, d_max=d_max)
    out = forecast(curves, form)
    assert out["error"] is None, out["error"]
    assert out["d_cut"] == pytest.approx(out["observed_d_peak"] / 2)
    assert out["n_points"] >= 3 * 10
    assert abs(out["d_peak_rel_error"]) < 0.1
    assert abs(out["gold_peak_error"]) < 0.05 * out["observed_gold_peak"]
    assert out["d_peak_error"] == pytest.approx(out["d_peak"] - out["observed_d_peak"])
    json.dumps(out, allow_nan=False)


@pytest.mark.parametrize(
    ("curves", "match"),
    [
        ([], "needs a non-empty list"),
        ([([0.0, 1.0, 2.0, 3.0], [0.0, -1.0, -2.0, -3.0])], "observed peak at d = 0"),
        ([([0.0, 1.0, 2.0, 3.0], [0.0, 1.0, 2.0, 3.0])], "observed peak is the last point"),
        ([([0.0, 1.0, 2.0, 3.0], [0.0, 1.0, 2.0, 1.0])], "2 points with d <= 1 (half the observed peak), need >= 3"),
        ([([0.0, 0.1, 0.2, 0.3, 2.0, 4.0], [0.0, 0.1, 0.2, 0.3, 1.0, 0.5])], "no predicted peak"),
    ],
)
def test_forecast_reports_reasons_instead_of_raising(curves, match):
    out = forecast(curves, "rl")
    assert out["error"] is not None and match in out["error"] and "\n" not in out["error"]
    assert out["d_peak"] is None and out["gold_peak"] is None and out["d_peak_error"] is None
    json.dumps(out, allow_nan=False)
