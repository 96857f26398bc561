"""Tests for the effective-strength and mechanism ops: each against a Python-float reference in
float64, with the identities the issue asks for (off = 0, proxy == gold, proxy == −gold)."""

from __future__ import annotations

import math
import random

import pytest
import torch

from overopt.ops import (
    adapt_gr_gamma,
    advantage_mass_removed,
    auroc,
    beta_for_target_ess,
    ensemble_penalty_share,
    ess_from_log_weights,
    gr_correction,
    order_accuracy,
    order_disagreement,
    par_saturation,
    pearson,
    penalty_share,
    sign_flips,
)


def _norm(xs):
    return math.sqrt(math.fsum(x * x for x in xs))


# ---------------------------------------------------------------- strength


def test_gr_correction_matches_reference(gen):
    g1 = [torch.randn(3, 4, generator=gen).double(), None, torch.randn(5, generator=gen).double()]
    g = [t if t is None else t + 0.3 * torch.randn(t.shape, generator=gen, dtype=torch.float64) for t in g1]
    a = [x for t in g1 if t is not None for x in t.flatten().tolist()]
    b = [x for t in g if t is not None for x in t.flatten().tolist()]
    ratio = _norm([y - x for x, y in zip(a, b)]) / _norm(a)
    cos = math.fsum(x * y for x, y in zip(a, b)) / (_norm(a) * _norm(b))
    out = gr_correction(g1, g)
    assert out.ratio == pytest.approx(ratio, rel=1e-12) and out.cos == pytest.approx(cos, rel=1e-12)
    # Off (g == g1) is strength 0, direction unchanged; a zero g1 is 0 too.
    off = gr_correction(g1, g1)
    assert off.ratio == 0.0 and off.cos == pytest.approx(1.0, abs=1e-15)
    assert gr_correction([torch.zeros(3)], [torch.ones(3)]) == (0.0, 1.0)
    # g = (1 − γ/ε)g1 + (γ/ε)g2 with γ/ε = 10, g1 = e1, g2 = e1 + e2: ratio = 10‖g2 − g1‖/‖g1‖ = 10.
    e1, e2 = torch.tensor([1.0, 0.0]).double(), torch.tensor([0.0, 1.0]).double()
    assert gr_correction([e1], [-9 * e1 + 10 * (e1 + e2)]).ratio == pytest.approx(10.0)
    with pytest.raises(ValueError, match="same parameters"):
        gr_correction(g1, g[:1])


def test_adapt_gr_gamma_tracks_target():
    # A plant where ratio = 50·γ (fixed curvature): the controller converges to γ* = target / 50.
    gamma, target = 0.01, 2.0
    for _ in range(200):
        gamma = adapt_gr_gamma(gamma, 50 * gamma, target, rate=0.2)
    assert gamma == pytest.approx(target / 50, rel=1e-6)
    # Bounded steps; a zero ratio leaves γ alone; too strong → smaller γ.
    assert adapt_gr_gamma(1.0, 1e-9, 1.0, rate=1.0, max_factor=2.0) == 2.0
    assert adapt_gr_gamma(1.0, 0.0, 1.0) == 1.0
    assert adapt_gr_gamma(1.0, 4.0, 1.0, rate=0.5) == pytest.approx(0.5**0.5)
    with pytest.raises(ValueError):
        adapt_gr_gamma(0.0, 1.0, 1.0)


def test_penalty_share_matches_reference(gen):
    term = torch.randn(7, generator=gen, dtype=torch.float64)
    base = torch.randn(7, generator=gen, dtype=torch.float64)
    t, b = _norm(term.tolist()), _norm(base.tolist())
    assert penalty_share(term, base).item() == pytest.approx(t / (t + b), rel=1e-13)
    assert penalty_share(torch.zeros(7), base).item() == 0.0  # off
    assert penalty_share(base, base).item() == pytest.approx(0.5)
    assert penalty_share(torch.zeros(3), torch.zeros(3)).item() == 0.0


def test_advantage_mass_removed():
    adv = torch.tensor([2.0, -1.0, 0.5, -1.5], dtype=torch.float64)
    weights = torch.tensor([1.0, 0.0, 0.5, 1.0], dtype=torch.float64)
    expected = (0 * 2 + 1 * 1 + 0.5 * 0.5 + 0) / 5.0  # Σ(1 − ω)|A| / Σ|A|
    assert advantage_mass_removed(adv, weights * adv).item() == pytest.approx(expected)
    assert advantage_mass_removed(adv, adv).item() == 0.0  # off
    assert advantage_mass_removed(adv, -adv).item() == pytest.approx(2.0)  # every sign flipped
    assert advantage_mass_removed(torch.zeros(3), torch.zeros(3)).item() == 0.0


def test_ensemble_penalty_share():
    members = torch.tensor([[1.0, 2.0, 4.0], [3.0, 2.0, 0.0]], dtype=torch.float64)
    wco = members.amin(0)  # [1, 2, 0]; mean [2, 2, 2]; |R − mean| = [1, 0, 2]
    spread = torch.tensor([1.0, 2.0, 0.0]).double().std().item()
    assert ensemble_penalty_share(members, wco).item() == pytest.approx((3 / 3) / spread)
    assert ensemble_penalty_share(members, members.mean(0)).item() == 0.0  # mean aggregation: no penalty
    assert ensemble_penalty_share(members[:1], members[0]).item() == 0.0  # k = 1


def test_par_saturation():
    shaped = torch.tensor([0.2, 0.96, 0.99, 0.5])
    assert par_saturation(shaped).item() == 0.5
    assert par_saturation(torch.full((4,), 0.5)).item() == 0.0


def test_order_disagreement():
    a = torch.tensor([1.0, -2.0, 0.5, 0.0, 3.0])
    b = torch.tensor([2.0, 1.0, 0.1, 0.0, -1.0])
    assert order_disagreement(a, b).item() == pytest.approx(2 / 5)
    assert order_disagreement(a, a).item() == 0.0  # a refit that changed nothing
    tie_vs_order = torch.tensor([1.0, -1.0, 1.0, 1e-3, 1.0])
    assert order_disagreement(a, tie_vs_order).item() == pytest.approx(1 / 5)


def test_beta_for_target_ess_hits_target(gen):
    s = -torch.rand(500, generator=gen, dtype=torch.float64) * 40  # summed log-ratios of pairs
    for target in (0.99, 0.5, 0.1):
        beta = beta_for_target_ess(s, target)
        assert ess_from_log_weights(beta * s).item() / 500 == pytest.approx(target, rel=1e-9)
    assert beta_for_target_ess(s, 1.0) == 0.0
    # Monotone: a smaller ESS needs a larger β.
    assert beta_for_target_ess(s, 0.2) > beta_for_target_ess(s, 0.8) > 0
    # Constant S: weights stay uniform at any β.
    assert beta_for_target_ess(torch.full((10,), -3.0, dtype=torch.float64), 0.5, max_beta=1e3) == 1e3
    with pytest.raises(ValueError):
        beta_for_target_ess(s, 0.0)


# ---------------------------------------------------------------- mechanisms


def _ref_flips(proxy, gold):
    flips = valid = 0
    mass_f = mass_v = 0.0
    for p_row, g_row in zip(proxy.tolist(), gold.tolist()):
        pm, gm = math.fsum(p_row) / len(p_row), math.fsum(g_row) / len(g_row)
        for p, g in zip(p_row, g_row):
            a, b = p - pm, g - gm
            if abs(a) < 1e-12 or abs(b) < 1e-12:
                continue
            valid += 1
            mass_v += abs(a)
            if (a > 0) != (b > 0):
                flips += 1
                mass_f += abs(a)
    return flips / valid, mass_f / mass_v


def test_sign_flips_matches_reference(gen):
    proxy = torch.randn(6, 4, generator=gen, dtype=torch.float64)
    gold = torch.randint(0, 3, (6, 4), generator=gen).double()  # discrete: ties and equal groups occur
    gold[0] = 1.0  # a group with no gold preference: no valid completion
    out = sign_flips(proxy, gold)
    rate, mass = _ref_flips(proxy, gold)
    assert out.rate.item() == pytest.approx(rate, rel=1e-12) and out.mass.item() == pytest.approx(mass, rel=1e-12)
    assert not out.valid[0].any()


def test_sign_flips_identities(gen):
    gold = torch.randn(5, 4, generator=gen, dtype=torch.float64)
    same, opposite = sign_flips(gold, gold), sign_flips(-gold, gold)
    assert same.rate.item() == 0.0 and same.mass.item() == 0.0
    assert opposite.rate.item() == 1.0 and opposite.mass.item() == 1.0
    # A proxy that adds a per-group constant has the same advantages: no flips.
    assert sign_flips(gold + torch.arange(5.0).double().unsqueeze(1), gold).rate.item() == 0.0


def _ref_auroc(scores, labels):
    pos = [s for s, y in zip(scores, labels) if y]
    neg = [s for s, y in zip(scores, labels) if not y]
    wins = math.fsum(1.0 if p > n else 0.5 if p == n else 0.0 for p in pos for n in neg)
    return wins / (len(pos) * len(neg))


def test_auroc_matches_pairwise_count():
    rng = random.Random(0)
    scores = [rng.choice([0.0, 0.5, 1.0, 1.5, 2.0]) for _ in range(60)]  # many ties
    labels = [rng.random() < 0.4 for _ in range(60)]
    assert auroc(torch.tensor(scores), torch.tensor(labels)) == pytest.approx(_ref_auroc(scores, labels), rel=1e-12)
    assert auroc(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([False, True, True])) == 1.0
    assert auroc(torch.tensor([3.0, 2.0, 1.0]), torch.tensor([False, True, True])) == 0.0
    assert auroc(torch.ones(4), torch.tensor([0, 1, 0, 1])) == 0.5
    assert math.isnan(auroc(torch.ones(3), torch.zeros(3)))


def test_order_accuracy():
    gold_a, gold_b = torch.tensor([1.0, 0.0, 2.0, 1.0]), torch.tensor([0.0, 1.0, 2.0, 3.0])
    assert order_accuracy(gold_a, gold_b, gold_a, gold_b) == 1.0  # proxy == gold
    assert order_accuracy(-gold_a, -gold_b, gold_a, gold_b) == 0.0  # proxy == −gold
    assert order_accuracy(torch.zeros(4), torch.zeros(4), gold_a, gold_b) == 0.5  # constant proxy
    # Pair 3 is a gold tie (dropped); of the other three the proxy gets pair 1 right, 2 wrong, 4 tied.
    proxy_a, proxy_b = torch.tensor([5.0, 3.0, 9.0, 1.0]), torch.tensor([4.0, 2.0, 0.0, 1.0])
    assert order_accuracy(proxy_a, proxy_b, gold_a, gold_b) == pytest.approx((1 + 0 + 0.5) / 3)
    assert math.isnan(order_accuracy(proxy_a, proxy_b, gold_a, gold_a))


def test_pearson_matches_reference(gen):
    x = torch.randn(30, generator=gen, dtype=torch.float64)
    y = 0.5 * x + torch.randn(30, generator=gen, dtype=torch.float64)
    xs, ys = x.tolist(), y.tolist()
    mx, my = math.fsum(xs) / 30, math.fsum(ys) / 30
    cov = math.fsum((a - mx) * (b - my) for a, b in zip(xs, ys))
    ref = cov / math.sqrt(math.fsum((a - mx) ** 2 for a in xs) * math.fsum((b - my) ** 2 for b in ys))
    assert pearson(x, y) == pytest.approx(ref, rel=1e-12)
    assert pearson(x, -x) == pytest.approx(-1.0)
    assert math.isnan(pearson(x, torch.ones(30)))
