"""Tests for overopt.ops.preference against Python-loop references."""

from __future__ import annotations

import math

import pytest
import torch

from overopt.ops import bradley_terry_loss, pairwise_accuracy

B = 9


def _pairs(gen):
    chosen = torch.randn(B, generator=gen, dtype=torch.float64) + 0.3
    rejected = 2 * torch.randn(B, generator=gen, dtype=torch.float64)
    weights = 0.1 + 2 * torch.rand(B, generator=gen, dtype=torch.float64)
    return chosen, rejected, weights


def ref_bt(chosen, rejected, weights=None):
    """(1/B) Σ w_i · -log σ(Δ_i), with -log σ(Δ) = log(1 + e^{-Δ}) by hand."""
    w = [1.0] * len(chosen) if weights is None else weights.tolist()
    terms = [wi * math.log1p(math.exp(-(c - r))) for c, r, wi in zip(chosen.tolist(), rejected.tolist(), w)]
    return math.fsum(terms) / len(terms)


@pytest.mark.parametrize("use_weights", [False, True])
def test_bt_loss_matches_loop(gen, assert_close, use_weights):
    chosen, rejected, weights = _pairs(gen)
    weights = weights if use_weights else None
    assert_close(bradley_terry_loss(chosen, rejected, weights), ref_bt(chosen, rejected, weights))


def test_bt_loss_mutations(gen, assert_far):
    chosen, rejected, weights = _pairs(gen)
    out = bradley_terry_loss(chosen, rejected, weights)
    assert_far(out, ref_bt(rejected, chosen, weights))  # chosen/rejected swapped
    assert_far(out, ref_bt(chosen, rejected))  # weights ignored
    assert_far(out, ref_bt(chosen, rejected, weights) * B / weights.sum().item())  # Σw normaliser
    assert_far(out, ref_bt(chosen, rejected, weights) * B)  # sum instead of mean


def test_bt_weights_ones_identical_to_none(gen):
    chosen, rejected, _ = _pairs(gen)
    ones = torch.ones(B, dtype=torch.float64)
    assert torch.equal(bradley_terry_loss(chosen, rejected, ones), bradley_terry_loss(chosen, rejected))


def test_bt_huge_margins_stay_finite(assert_close):
    chosen = torch.tensor([1000.0, -1000.0, 0.0], dtype=torch.float64, requires_grad=True)
    rejected = torch.zeros(3, dtype=torch.float64)
    loss = bradley_terry_loss(chosen, rejected)
    # Terms: softplus(-1000) ≈ 0, softplus(1000) = 1000, softplus(0) = log 2.
    assert_close(loss, (0.0 + 1000.0 + math.log(2)) / 3)
    loss.backward()
    assert torch.isfinite(chosen.grad).all()
    # d/dΔ of -log σ(Δ) is -σ(-Δ).
    assert_close(chosen.grad, [-0.0 / 3, -1.0 / 3, -0.5 / 3])


def test_bt_gradient_closed_form_and_gradcheck(gen, assert_close):
    chosen, rejected, weights = _pairs(gen)
    c = chosen.clone().requires_grad_(True)
    r = rejected.clone().requires_grad_(True)
    bradley_terry_loss(c, r, weights).backward()
    expected = -weights * torch.sigmoid(-(chosen - rejected)) / B
    assert_close(c.grad, expected)
    assert_close(r.grad, -expected)
    assert torch.autograd.gradcheck(
        lambda a, b: bradley_terry_loss(a, b, weights),
        (chosen.clone().requires_grad_(True), rejected.clone().requires_grad_(True)),
    )
    # Weights are detached: no graph leads back to them.
    assert not bradley_terry_loss(chosen, rejected, weights.clone().requires_grad_(True)).requires_grad


def test_bt_validation(gen):
    chosen, rejected, weights = _pairs(gen)
    with pytest.raises(ValueError, match="same shape"):
        bradley_terry_loss(chosen, rejected[:-1])
    with pytest.raises(ValueError, match="same shape"):
        bradley_terry_loss(chosen, rejected, weights[:-1])
    with pytest.raises(ValueError, match=r"\(B,\)"):
        bradley_terry_loss(chosen.unsqueeze(1), rejected.unsqueeze(1))
    with pytest.raises(ValueError, match="at least one"):
        bradley_terry_loss(chosen[:0], rejected[:0])


def test_pairwise_accuracy_matches_loop(gen, assert_close, assert_far):
    chosen, rejected, _ = _pairs(gen)
    rejected[:3] = chosen[:3]  # ties
    expected = [1.0 if c > r else 0.5 if c == r else 0.0 for c, r in zip(chosen.tolist(), rejected.tolist())]
    acc = pairwise_accuracy(chosen, rejected)
    assert acc.dtype == torch.float64 and acc.dim() == 0
    assert_close(acc, sum(expected) / B)
    # Ties counted as losses, or as wins.
    assert_far(acc, sum(e == 1.0 for e in expected) / B)
    assert_far(acc, sum(e >= 0.5 for e in expected) / B)


def test_pairwise_accuracy_closed_forms(assert_close):
    assert_close(pairwise_accuracy(torch.tensor([2.0, 1.0]).double(), torch.tensor([1.0, 2.0]).double()), 0.5)
    const = torch.zeros(4, dtype=torch.float64)
    assert_close(pairwise_accuracy(const, const), 0.5)
    ints = pairwise_accuracy(torch.tensor([3, 1, 2]), torch.tensor([1, 1, 5]))
    assert ints.dtype == torch.float32 and abs(ints.item() - 0.5) < 1e-7


def test_bt_large_negative_margin_keeps_the_log1p_term(assert_close):
    # -log σ(Δ) = -Δ + log(1 + e^Δ). Beyond Δ = -20, softplus(-Δ) returns -Δ exactly and drops
    # log(1 + e^Δ) ≈ 2e-9 (Δ = -20) ... 7.6e-10 (Δ = -21): the old formula misses these references.
    margins = [-20.5, -21.0, -22.0, -25.0]
    chosen = torch.tensor(margins, dtype=torch.float64)
    rejected = torch.zeros(4, dtype=torch.float64)
    for i, m in enumerate(margins):
        expected = -m + math.log1p(math.exp(m))
        assert_close(bradley_terry_loss(chosen[i : i + 1], rejected[i : i + 1]), expected, rtol=0, atol=1e-14)
        old = torch.nn.functional.softplus(-chosen[i : i + 1]).mean().item()
        assert abs(old - expected) > 1e-12  # the old formula would fail this test
