"""Tests for overopt.ops.kl: element-wise references, exact expectations on a
small categorical distribution, and the adaptive controller in closed form."""

from __future__ import annotations

import math

import pytest
import torch

from overopt.ops import KL_ESTIMATORS, adaptive_kl_coef, kl_estimate, kl_k1, kl_k2, kl_k3

SUPPORT = 6


def _pair(gen, shape=(4, 9)):
    logprobs = -3 * torch.rand(shape, generator=gen, dtype=torch.float64)
    ref = logprobs + 0.8 * torch.randn(shape, generator=gen, dtype=torch.float64)
    return logprobs, ref


def _elementwise(fn, a, b):
    return [[fn(x - y) for x, y in zip(ra, rb)] for ra, rb in zip(a.tolist(), b.tolist())]


REFS = {
    "k1": lambda l: l,
    "k2": lambda l: 0.5 * l * l,
    "k3": lambda l: math.exp(-l) - 1.0 + l,
}


@pytest.mark.parametrize("name", ["k1", "k2", "k3"])
def test_estimators_match_elementwise_reference(gen, assert_close, name):
    logprobs, ref = _pair(gen)
    expected = _elementwise(REFS[name], logprobs, ref)
    assert_close(KL_ESTIMATORS[name](logprobs, ref), expected)
    assert_close(kl_estimate(logprobs, ref, name), expected)
    assert KL_ESTIMATORS[name] is {"k1": kl_k1, "k2": kl_k2, "k3": kl_k3}[name]


def test_estimator_mutations(gen, assert_far):
    logprobs, ref = _pair(gen)
    # Swapped arguments (sign of l flipped) for each estimator that is not even in l.
    assert_far(kl_k1(logprobs, ref), kl_k1(ref, logprobs))
    assert_far(kl_k3(logprobs, ref), kl_k3(ref, logprobs))
    # k3 written with exp(+l) (estimator of the other KL direction).
    assert_far(kl_k3(logprobs, ref), torch.exp(logprobs - ref) - 1 - (logprobs - ref))
    # k2 without the 1/2.
    assert_far(kl_k2(logprobs, ref), (logprobs - ref) ** 2)


def _categoricals(gen):
    """Random, non-symmetric p and q on a small support, as float64 log-probs."""
    log_p = torch.log_softmax(2 * torch.randn(SUPPORT, generator=gen, dtype=torch.float64), 0)
    log_q = torch.log_softmax(2 * torch.randn(SUPPORT, generator=gen, dtype=torch.float64), 0)
    return log_p, log_q


def _kl_exact(log_p, log_q):
    """KL(p || q) = Σ_y p(y) log(p(y)/q(y)), by a Python loop over the support."""
    return math.fsum(math.exp(a) * (a - b) for a, b in zip(log_p.tolist(), log_q.tolist()))


def _expect_under_p(values, log_p):
    """Exact expectation E_{y~p}[f(y)] - a p-weighted sum over the support, no sampling."""
    return math.fsum(math.exp(a) * v for a, v in zip(log_p.tolist(), values.tolist()))


@pytest.mark.parametrize("trial", range(5))
def test_k1_k3_unbiased_k2_biased_exact_expectation(gen, assert_close, assert_far, trial):
    for _ in range(trial + 1):  # a different (p, q) pair per trial from one seed
        log_p, log_q = _categoricals(gen)
    kl = _kl_exact(log_p, log_q)
    e_k1 = _expect_under_p(kl_k1(log_p, log_q), log_p)
    e_k2 = _expect_under_p(kl_k2(log_p, log_q), log_p)
    e_k3 = _expect_under_p(kl_k3(log_p, log_q), log_p)
    assert_close(e_k1, kl)
    assert_close(e_k3, kl)
    half_sq = 0.5 * math.fsum(math.exp(a) * (a - b) ** 2 for a, b in zip(log_p.tolist(), log_q.tolist()))
    assert_close(e_k2, half_sq)
    assert_far(e_k2, kl)  # k2 is biased
    # Mutation: k3 with the arguments swapped estimates something else under p.
    assert_far(_expect_under_p(kl_k3(log_q, log_p), log_p), kl)
    # ... and neither is an estimator of the reverse KL(q || p).
    assert_far(e_k3, _kl_exact(log_q, log_p))


def test_k3_nonnegative_everywhere(assert_close):
    l = torch.cat(
        [
            torch.linspace(-30, 30, 2001, dtype=torch.float64),
            torch.tensor([-1e-12, -1e-9, 0.0, 1e-9, 1e-12], dtype=torch.float64),
        ]
    )
    k3 = kl_k3(l, torch.zeros_like(l))
    assert bool((k3 >= 0).all())
    # Near l = 0, k3 = l^2/2 - l^3/6 + ...; the expm1 form keeps this accurate.
    tiny = torch.tensor([1e-6, -1e-6, 1e-4], dtype=torch.float64)
    assert_close(kl_k3(tiny, torch.zeros_like(tiny)), tiny**2 / 2 - tiny**3 / 6 + tiny**4 / 24, rtol=1e-8)
    k2 = kl_k2(l, torch.zeros_like(l))
    assert bool((k2 >= 0).all())


def test_kl_estimate_unknown_name_lists_choices(gen):
    logprobs, ref = _pair(gen)
    with pytest.raises(ValueError, match=r"'k1', 'k2', 'k3'"):
        kl_estimate(logprobs, ref, "k4")


@pytest.mark.parametrize("fn", [kl_k1, kl_k2, kl_k3])
def test_shape_mismatch_raises(fn):
    with pytest.raises(ValueError, match="same shape"):
        fn(torch.zeros(2, 3), torch.zeros(2, 4))


@pytest.mark.parametrize(
    ("observed", "error"),
    [(6.3, 6.3 / 6.0 - 1.0), (5.0, 5.0 / 6.0 - 1.0), (60.0, 0.2), (0.0, -0.2), (6.0, 0.0)],
)
def test_adaptive_kl_coef_closed_form(assert_close, observed, error):
    coef, target, horizon, n_steps = 0.05, 6.0, 10000.0, 256.0
    expected = coef * (1.0 + error * n_steps / horizon)
    out = adaptive_kl_coef(coef, observed, target, horizon, n_steps)
    assert isinstance(out, float)
    assert_close(out, expected)


def test_adaptive_kl_coef_mutations(assert_far):
    coef, target, horizon, n_steps = 0.5, 1.0, 100.0, 50.0
    # Error clipping: a huge KL must move the coefficient by at most 20% * n/horizon.
    out = adaptive_kl_coef(coef, 10.0, target, horizon, n_steps)
    assert_far(out, coef * (1.0 + (10.0 - 1.0) * n_steps / horizon))
    # Direction: KL above target must raise the coefficient, below must lower it.
    assert adaptive_kl_coef(coef, 1.1, target, horizon, n_steps) > coef
    assert adaptive_kl_coef(coef, 0.9, target, horizon, n_steps) < coef
    # n_steps / horizon, not horizon / n_steps.
    assert_far(out, coef * (1.0 + 0.2 * horizon / n_steps))


def test_adaptive_kl_coef_validation():
    with pytest.raises(ValueError, match="target"):
        adaptive_kl_coef(0.1, 1.0, 0.0, 10.0, 1.0)
    with pytest.raises(ValueError, match="horizon"):
        adaptive_kl_coef(0.1, 1.0, 1.0, -1.0, 1.0)
    with pytest.raises(ValueError, match="observed_kl"):
        adaptive_kl_coef(0.1, float("nan"), 1.0, 10.0, 1.0)
    # A 0-d tensor reading is accepted.
    assert adaptive_kl_coef(0.1, torch.tensor(1.0), 1.0, 10.0, 1.0) == pytest.approx(0.1)
