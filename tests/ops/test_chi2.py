"""Tests for overopt.ops.chi2: a piecewise Python reference, the C¹ join of the
linear extrapolation at ±clamp, symmetry, extreme log-ratios and gradcheck."""

from __future__ import annotations

import math

import pytest
import torch

from overopt.ops import chi2_estimate

T = 7
# Target sequence log-ratios: inside [-10, 10] and beyond it on both sides.
TARGETS = [-14.0, -3.0, -0.2, 0.0, 0.6, 4.0, 12.5]
B = len(TARGETS)


def _inputs(gen, right_padded_mask, targets=TARGETS):
    mask = right_padded_mask(len(targets), T, gen)
    ref = -3 * torch.rand(len(targets), T, generator=gen, dtype=torch.float64)
    noise = 0.3 * torch.randn(len(targets), T, generator=gen, dtype=torch.float64)
    # Put the rest of each row's target log-ratio (over its valid tokens) on its first token.
    noise[:, 0] += torch.tensor(targets, dtype=torch.float64) - (noise * mask).sum(dim=1)
    return ref + noise, ref, mask


def ref_f(s, c):
    """exp(s) inside [-c, c]; the tangent line of exp at the nearer boundary outside."""
    if abs(s) <= c:
        return math.exp(s)
    edge = math.copysign(c, s)
    return math.exp(edge) * (1.0 + (s - edge))


def ref_log_ratios(logprobs, ref, mask):
    return [
        math.fsum(a - b for a, b, m in zip(ra, rb, rm) if m)
        for ra, rb, rm in zip(logprobs.tolist(), ref.tolist(), mask.tolist())
    ]


def ref_chi2(logprobs, ref, mask, c=10.0, f=ref_f):
    terms = [(f(s, c) - 1.0) + (f(-s, c) - 1.0) for s in ref_log_ratios(logprobs, ref, mask)]
    est = math.fsum(terms) / len(terms)
    return est, math.sqrt(max(est, 1e-4))


@pytest.mark.parametrize("clamp", [10.0, 3.5])
def test_chi2_matches_loop(gen, right_padded_mask, with_garbage, assert_close, clamp):
    logprobs, ref, mask = _inputs(gen, right_padded_mask)
    est, pen = ref_chi2(logprobs, ref, mask, clamp)
    out = chi2_estimate(with_garbage(logprobs, mask), with_garbage(ref, mask), mask, clamp)
    assert out.estimate.dim() == 0 and out.penalty.dim() == 0
    assert_close(out.estimate, est)
    assert_close(out.penalty, pen)


def test_chi2_mutations(gen, right_padded_mask, assert_far):
    logprobs, ref, mask = _inputs(gen, right_padded_mask)
    out = chi2_estimate(logprobs, ref, mask).estimate
    exact = lambda s, c: math.exp(s)
    assert_far(out, ref_chi2(logprobs, ref, mask, f=exact)[0])  # no extrapolation
    clamped = lambda s, c: math.exp(max(-c, min(c, s)))
    assert_far(out, ref_chi2(logprobs, ref, mask, f=clamped)[0])  # clamped instead of extrapolated
    one_sided = [ref_f(s, 10.0) - 1.0 for s in ref_log_ratios(logprobs, ref, mask)]
    assert_far(out, math.fsum(one_sided) / B)  # (ρ - 1) only
    assert_far(out, ref_chi2(logprobs, ref, torch.ones_like(mask))[0])  # mask ignored
    sq = [(ref_f(s, 10.0) - 1.0) ** 2 for s in ref_log_ratios(logprobs, ref, mask)]
    assert_far(out, math.fsum(sq) / B)  # Pearson χ² form (ρ - 1)²


def test_policy_equal_ref_gives_zero_and_floor(gen, right_padded_mask, assert_close):
    _, ref, mask = _inputs(gen, right_padded_mask)
    out = chi2_estimate(ref.clone(), ref, mask)
    assert out.estimate.item() == 0.0
    assert_close(out.penalty, 0.01)
    assert_close(chi2_estimate(ref.clone(), ref, mask, floor=0.25).penalty, 0.5)


def test_symmetric_in_log_ratio(gen, right_padded_mask, assert_close):
    logprobs, ref, mask = _inputs(gen, right_padded_mask)
    forward, backward = chi2_estimate(logprobs, ref, mask), chi2_estimate(ref, logprobs, mask)
    assert_close(forward.estimate, backward.estimate)
    assert_close(forward.penalty, backward.penalty)


def _single(s: float, clamp: float = 10.0):
    """χ̂² of one one-token sequence with log-ratio s, and its derivative in s."""
    x = torch.tensor([[s]], dtype=torch.float64, requires_grad=True)
    est = chi2_estimate(x, torch.zeros(1, 1, dtype=torch.float64), torch.ones(1, 1), clamp).estimate
    (grad,) = torch.autograd.grad(est, x)
    return est.item(), grad.item()


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_extrapolation_is_c1_at_the_clamp(sign):
    c, h = 10.0, 1e-7
    at_value = 2 * math.cosh(c) - 2
    slope = sign * 2 * math.sinh(c)
    below, d_below = _single(sign * (c - h))
    above, d_above = _single(sign * (c + h))
    # Continuity: both sides within h·|slope| of the value at the join (plus rounding).
    assert abs(below - at_value) <= 1.01 * h * abs(slope) + 1e-12 * at_value
    assert abs(above - at_value) <= 1.01 * h * abs(slope) + 1e-12 * at_value
    assert abs((above - below) - sign * 2 * h * slope) <= 1e-6 * abs(2 * h * slope)
    # Matching first derivative (the second derivative jumps, so they differ by O(h)).
    assert abs(d_below - slope) <= 1e-6 * abs(slope)
    assert abs(d_above - slope) <= 1e-6 * abs(slope)
    # Beyond the join the function is exactly the tangent line.
    for s in (20.0, 300.0):
        value, grad = _single(sign * s)
        assert math.isclose(value, at_value + (s - c) * abs(slope), rel_tol=1e-12)
        assert math.isclose(grad, slope, rel_tol=1e-12)


@pytest.mark.parametrize("s", [1000.0, -1000.0, 1e6])
def test_finite_for_extreme_log_ratios(s):
    value, grad = _single(s)
    assert math.isfinite(value) and math.isfinite(grad)
    c = 10.0
    assert math.isclose(value, 2 * math.cosh(c) - 2 + (abs(s) - c) * 2 * math.sinh(c), rel_tol=1e-12)
    # Also through the full op with a batch and a penalty.
    x = torch.full((2, 3), s / 3, dtype=torch.float64, requires_grad=True)
    out = chi2_estimate(x, torch.zeros(2, 3, dtype=torch.float64), torch.ones(2, 3))
    out.penalty.backward()
    assert torch.isfinite(out.penalty) and torch.isfinite(x.grad).all()


def test_small_log_ratio_is_accurate():
    """χ̂² ≈ s² for tiny s (4 sinh²(s/2)); the naive e^s + e^-s - 2 would be pure rounding noise."""
    for s in (1e-9, -3e-6, 1e-4):
        value, _ = _single(s)
        expected = 4 * math.sinh(s / 2) ** 2
        assert math.isclose(value, expected, rel_tol=1e-12)


def test_gradcheck(gen, right_padded_mask):
    logprobs, ref, mask = _inputs(gen, right_padded_mask)
    lp = logprobs.clone().requires_grad_(True)
    rp = ref.clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda a, b: chi2_estimate(a, b, mask).estimate, (lp, rp))
    assert torch.autograd.gradcheck(lambda a, b: chi2_estimate(a, b, mask).penalty, (lp, rp))
    # Gradient of the estimate in closed form: per valid token, (f'(s) - f'(-s)) / B.
    lp.grad = None
    chi2_estimate(lp, ref, mask).estimate.backward()

    def fprime(s, c=10.0):
        return math.exp(max(-c, min(c, s)))

    per_row = [(fprime(s) - fprime(-s)) / B for s in ref_log_ratios(logprobs, ref, mask)]
    expected = torch.tensor(per_row, dtype=torch.float64).unsqueeze(1) * mask
    torch.testing.assert_close(lp.grad, expected, rtol=1e-10, atol=1e-12)


def test_penalty_floor_has_zero_gradient(gen, right_padded_mask):
    logprobs, ref, mask = _inputs(gen, right_padded_mask, targets=[1e-4] * 3)
    lp = logprobs.clone().requires_grad_(True)
    out = chi2_estimate(lp, ref, mask)
    assert out.estimate.item() < 1e-4
    out.penalty.backward()
    assert torch.equal(lp.grad, torch.zeros_like(lp))


def test_empty_rows_contribute_zero(gen, right_padded_mask, assert_close):
    logprobs, ref, mask = _inputs(gen, right_padded_mask)
    est, _ = ref_chi2(logprobs, ref, mask)
    padded = torch.cat([mask, torch.zeros(1, T, dtype=torch.float64)])
    out = chi2_estimate(torch.cat([logprobs, ref[:1] + 5]), torch.cat([ref, ref[:1]]), padded)
    assert_close(out.estimate, est * B / (B + 1))


def test_validation(gen, right_padded_mask):
    logprobs, ref, mask = _inputs(gen, right_padded_mask)
    with pytest.raises(ValueError, match=r"\(B, T\)"):
        chi2_estimate(logprobs[0], ref[0], mask[0])
    with pytest.raises(ValueError, match="same shape"):
        chi2_estimate(logprobs, ref[:, :-1], mask)
    with pytest.raises(ValueError, match="same shape"):
        chi2_estimate(logprobs, ref, mask[:-1])
    with pytest.raises(ValueError, match="B = 0"):
        chi2_estimate(logprobs[:0], ref[:0], mask[:0])
    with pytest.raises(ValueError, match="clamp"):
        chi2_estimate(logprobs, ref, mask, clamp=-1.0)
    with pytest.raises(ValueError, match="floor"):
        chi2_estimate(logprobs, ref, mask, floor=0.0)
