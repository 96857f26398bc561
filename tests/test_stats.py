"""overopt.stats.interval: the lab's one confidence interval, checked by simulating its coverage."""

from __future__ import annotations

import math

import numpy as np
import pytest

from overopt.stats import interval, nested_interval, prediction_interval, t_quantile

REPS = 4000


def _percentile_bootstrap(xs, rng, n_boot=1000, level=0.95):
    """What the lab printed before: the percentile bootstrap of the mean (written here, to show it fails)."""
    means = xs[rng.integers(0, len(xs), size=(n_boot, len(xs)))].mean(axis=1)
    lo, hi = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    return {"lo": lo, "hi": hi}


def _coverage(make_interval, n, seed):
    rng = np.random.default_rng(seed)
    hits = 0
    for _ in range(REPS):
        xs = rng.normal(0.3, 2.0, size=n)
        ci = make_interval(xs, rng)
        hits += ci["lo"] <= 0.3 <= ci["hi"]
    return hits / REPS


@pytest.mark.parametrize("n", [3, 5])
def test_t_interval_covers_at_small_n_and_the_percentile_bootstrap_does_not(n):
    # 4000 normal samples of n units each, fixed generator: the t interval covers 95 % (± 0.7 % of Monte-Carlo
    # error); the percentile bootstrap covers about 76 % (n = 3) and 83 % (n = 5).
    covered = _coverage(lambda xs, rng: interval(xs.tolist()), n, seed=n)
    assert covered >= 0.93
    bootstrap = _coverage(lambda xs, rng: _percentile_bootstrap(xs, rng), n, seed=n)
    assert bootstrap < 0.88


def test_interval_of_a_mean_is_the_student_t_interval():
    xs = [0.52, 0.61, 0.47, 0.58]
    mean = sum(xs) / 4
    s = math.sqrt(sum((x - mean) ** 2 for x in xs) / 3)
    half = 3.182446305284263 * s / 2  # t_{3, 0.975}
    ci = interval(xs)
    assert ci["n"] == 4 and ci["mean"] == pytest.approx(mean, abs=1e-15)
    assert ci["lo"] == pytest.approx(mean - half, rel=1e-12) and ci["hi"] == pytest.approx(mean + half, rel=1e-12)
    assert t_quantile(0.975, 3) == pytest.approx(3.182446305284263, rel=1e-12)
    # The jackknife of the mean is the same interval.
    jack = interval(xs, statistic=lambda u: sum(u) / len(u))
    assert jack["lo"] == pytest.approx(ci["lo"], rel=1e-12) and jack["hi"] == pytest.approx(ci["hi"], rel=1e-12)


def test_jackknife_interval_of_a_pooled_fit_covers():
    # A statistic that is not a mean: the least-squares slope through the origin pooled over 5 units, each
    # unit its own slope (the unit-to-unit spread the interval must carry) and noisy points.
    rng = np.random.default_rng(7)
    x = np.linspace(0.5, 3.0, 8)
    slope = lambda units: float(sum((x * y).sum() for y in units) / (len(units) * (x * x).sum()))
    hits = 0
    for _ in range(1000):
        units = [(1.0 + rng.normal(0, 0.3)) * x + rng.normal(0, 0.2, size=x.size) for _ in range(5)]
        ci = interval(units, statistic=slope)
        hits += ci["lo"] <= 1.0 <= ci["hi"]
    assert hits / 1000 >= 0.93


def test_edge_cases():
    assert interval([]) == {"mean": None, "lo": None, "hi": None, "n": 0}
    assert interval([None, float("nan"), 2.5]) == {"mean": 2.5, "lo": None, "hi": None, "n": 1}
    assert interval([0.1] * 4) == {"mean": 0.1, "lo": 0.1, "hi": 0.1, "n": 4}
    assert interval([1.0, 2.0], statistic=lambda u: None if len(u) < 2 else 0.0)["lo"] is None
    narrow, wide = interval([1.0, 2.0, 4.0], level=0.5), interval([1.0, 2.0, 4.0], level=0.99)
    assert wide["lo"] < narrow["lo"] < narrow["hi"] < wide["hi"]
    with pytest.raises(ValueError, match="level"):
        interval([1.0, 2.0], level=1.0)


def test_nested_interval_is_the_t_interval_of_group_means():
    values = [0.1, 0.3, np.nan, 0.5, 0.4, 0.9, 1.1, 1.0]
    groups = ["a", "a", "a", "b", "b", "c", "c", "c"]
    means = np.array([0.2, 0.45, 1.0], dtype=np.float64)  # NaN dropped inside its group, by hand
    half = t_quantile(0.975, 2) * means.std(ddof=1) / math.sqrt(3)
    got = nested_interval(values, groups)
    assert got["n"] == 3 and math.isclose(got["mean"], means.mean(), rel_tol=1e-12)
    assert math.isclose(got["lo"], means.mean() - half, rel_tol=1e-12)
    assert math.isclose(got["hi"], means.mean() + half, rel_tol=1e-12)
    # pooling the runs instead would give 8 - 1 units and a narrower interval: not what this returns
    assert got["hi"] - got["lo"] > interval(values)["hi"] - interval(values)["lo"]
    # one group with a value: its mean, no interval; each item its own group: the interval over items
    assert nested_interval([1.0, 2.0, 4.0, np.nan], [0, 0, 0, 1]) == {"mean": 7 / 3, "lo": None, "hi": None, "n": 1}
    assert nested_interval([1.0, 2.0, 4.0], [0, 1, 2]) == interval([1.0, 2.0, 4.0])
    with pytest.raises(ValueError):
        nested_interval([1.0, 2.0], [0])


def test_prediction_interval_by_hand_and_against_scipy():
    xs = [-0.323, -0.356, 0.178, -0.116, -0.312]  # the README's five labs of `none`
    mean = sum(xs) / 5
    s = math.sqrt(sum((x - mean) ** 2 for x in xs) / 4)
    half = 2.7764451051977987 * s * math.sqrt(1 + 1 / 5)  # t_{4, 0.975}
    pi = prediction_interval(xs)
    assert pi["mean"] == pytest.approx(mean, abs=1e-15) and pi["n"] == 5
    assert (pi["lo"], pi["hi"]) == pytest.approx((mean - half, mean + half), abs=1e-12)
    from scipy import stats as scipy_stats

    lo, hi = scipy_stats.t.interval(0.95, 4, loc=mean, scale=s * math.sqrt(1 + 1 / 5))
    assert (pi["lo"], pi["hi"]) == pytest.approx((lo, hi), abs=1e-12)
    assert prediction_interval([0.4]) == {"mean": 0.4, "lo": None, "hi": None, "n": 1}
    assert prediction_interval([]) == {"mean": None, "lo": None, "hi": None, "n": 0}
    with pytest.raises(ValueError, match="level"):
        prediction_interval(xs, level=1.0)


def test_prediction_interval_covers_one_new_draw_and_the_mean_interval_does_not():
    # 4000 sets of 3 normal labs and one new lab each: the prediction interval holds the new lab 95 % of the
    # time (± 0.7 % Monte-Carlo error); the interval for the mean holds it less often: 83.6 % at n = 3
    # (P(|t_2| ≤ t_{2, 0.975} / 2), exactly).
    rng = np.random.default_rng(0)
    hits_pi = hits_ci = 0
    for _ in range(REPS):
        labs, new = rng.normal(0.3, 2.0, size=3), rng.normal(0.3, 2.0)
        pi, ci = prediction_interval(labs.tolist()), interval(labs.tolist())
        hits_pi += pi["lo"] <= new <= pi["hi"]
        hits_ci += ci["lo"] <= new <= ci["hi"]
    assert 0.93 <= hits_pi / REPS <= 0.97
    assert 0.81 <= hits_ci / REPS <= 0.86
