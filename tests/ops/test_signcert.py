"""Tests for overopt.ops.signcert: per-group Python loops, and the radius checked
directly as the smallest head perturbation that flips an advantage's sign."""

from __future__ import annotations

import math

import pytest
import torch

from overopt.ops import (
    CERTIFIED_WEIGHT_MODES,
    certification_threshold,
    certified_weights,
    group_centered_features,
    grpo_advantages,
    sign_radii,
)

P, K, H = 4, 5, 6


def _inputs(gen):
    hidden = torch.randn(P, K, H, generator=gen, dtype=torch.float64) + 3.0  # a shared offset, as in real RMs
    weight = torch.randn(H, generator=gen, dtype=torch.float64)
    return hidden, weight


def _metric(gen):
    a = torch.randn(H, H, generator=gen, dtype=torch.float64)
    return a @ a.T + 0.5 * torch.eye(H, dtype=torch.float64)


def ref_centered(hidden):
    """d_i = h_i - mean_j h_j, component by component in Python floats."""
    out = []
    for group in hidden.tolist():
        means = [math.fsum(h[c] for h in group) / len(group) for c in range(len(group[0]))]
        out.append([[h[c] - means[c] for c in range(len(h))] for h in group])
    return out


def ref_radii(hidden, weight, metric=None):
    """Advantages and radii with an explicit M^-1 (the op uses a Cholesky solve)."""
    w = weight.tolist()
    inv = None if metric is None else torch.linalg.inv(metric).tolist()
    advantages, radii = [], []
    for group in ref_centered(hidden):
        adv_row, rad_row = [], []
        for d in group:
            a = math.fsum(wc * dc for wc, dc in zip(w, d))
            if inv is None:
                sq = math.fsum(dc * dc for dc in d)
            else:
                sq = math.fsum(d[r] * inv[r][c] * d[c] for r in range(len(d)) for c in range(len(d)))
            adv_row.append(a)
            rad_row.append(abs(a) / math.sqrt(sq))
        advantages.append(adv_row)
        radii.append(rad_row)
    return advantages, radii


def test_centered_features_match_loop(gen, assert_close, assert_far):
    hidden, _ = _inputs(gen)
    d = group_centered_features(hidden)
    assert_close(d, ref_centered(hidden))
    assert_close(d.sum(dim=1), torch.zeros(P, H, dtype=torch.float64))
    assert_far(d, hidden - hidden.mean(dim=(0, 1)))  # centred over the batch, not the group


@pytest.mark.parametrize("use_metric", [False, True])
def test_sign_radii_match_loop(gen, assert_close, use_metric):
    hidden, weight = _inputs(gen)
    metric = _metric(gen) if use_metric else None
    out = sign_radii(hidden, weight, metric)
    advantages, radii = ref_radii(hidden, weight, metric)
    assert_close(out.advantages, advantages)
    assert_close(out.radii, radii, rtol=1e-9)


def test_sign_radii_mutations(gen, assert_far):
    hidden, weight = _inputs(gen)
    metric = _metric(gen)
    out = sign_radii(hidden, weight)
    d = torch.tensor(ref_centered(hidden), dtype=torch.float64)
    adv = d @ weight
    assert_far(out.radii, adv.abs() / hidden.norm(dim=-1))  # uncentred features in the norm
    assert_far(out.radii, (hidden @ weight).abs() / d.norm(dim=-1))  # uncentred advantage
    assert_far(out.radii, adv.abs() * d.norm(dim=-1))  # multiplied instead of divided
    assert_far(out.radii, adv.abs() / d.norm(dim=-1) ** 2)  # squared norm
    ell = sign_radii(hidden, weight, metric).radii
    assert_far(ell, adv.abs() / torch.einsum("pki,ij,pkj->pk", d, metric, d).sqrt())  # M instead of M^-1
    assert_far(ell, out.radii)  # metric ignored


def test_advantages_sum_to_zero_and_match_dr_grpo(gen, assert_close):
    hidden, weight = _inputs(gen)
    out = sign_radii(hidden, weight)
    assert_close(out.advantages.sum(dim=1), torch.zeros(P, dtype=torch.float64))
    # They are the Dr.GRPO advantages of the linear rewards r = wᵀh + b (b cancels).
    rewards = hidden @ weight + 0.7
    assert_close(out.advantages, grpo_advantages(rewards, scale_by_std=False), rtol=1e-9, atol=1e-12)


def test_identity_metric_equals_l2(gen, assert_close):
    hidden, weight = _inputs(gen)
    eye = torch.eye(H, dtype=torch.float64)
    assert_close(sign_radii(hidden, weight, eye).radii, sign_radii(hidden, weight).radii)
    # A scalar metric c·I scales every radius by sqrt(c).
    assert_close(sign_radii(hidden, weight, 4.0 * eye).radii, 2.0 * sign_radii(hidden, weight).radii)


def _flips(weight, delta, d, advantage):
    return (weight + delta) @ d * advantage < 0


@pytest.mark.parametrize("use_metric", [False, True])
def test_radius_is_the_minimal_flipping_perturbation(gen, use_metric):
    hidden, weight = _inputs(gen)
    metric = _metric(gen) if use_metric else torch.eye(H, dtype=torch.float64)
    out = sign_radii(hidden, weight, metric if use_metric else None)
    d_all = group_centered_features(hidden)
    inv = torch.linalg.inv(metric)
    chol = torch.linalg.cholesky(metric)
    n_random = 4000
    for p in range(P):
        for i in range(K):
            d, a, radius = d_all[p, i], out.advantages[p, i].item(), out.radii[p, i].item()
            # The closed-form minimiser, a hair longer than the radius, flips the sign ...
            m_inv_d = inv @ d
            delta_star = -a * m_inv_d / (d @ m_inv_d)
            m_norm = math.sqrt(delta_star @ metric @ delta_star)
            assert abs(m_norm - radius) <= 1e-9 * radius
            assert _flips(weight, delta_star * (1 + 1e-9), d, a)
            # ... the same direction a hair shorter does not ...
            assert not _flips(weight, delta_star * (1 - 1e-6), d, a)
            # ... and neither does any random perturbation inside the ball δᵀMδ <= (0.999 r)².
            u = torch.randn(n_random, H, generator=gen, dtype=torch.float64)
            u = u / u.norm(dim=1, keepdim=True) * (0.999 * radius) * torch.rand(n_random, 1, generator=gen).double()
            u[0] = u[0] / u[0].norm() * (0.999 * radius)  # one exactly on the (shrunk) boundary
            deltas = torch.linalg.solve_triangular(chol.T, u.T, upper=True).T  # δ = L^-T u, so δᵀMδ = ‖u‖²
            assert not ((deltas + weight) @ d * a < 0).any()


def test_identical_completions_get_infinite_radius(gen):
    k = 6
    hidden = torch.randn(P, k, H, generator=gen, dtype=torch.float64)
    hidden[1] = 0.7  # every completion of prompt 1 is the same ...
    naive = hidden[1] - hidden[1].mean(dim=0)
    assert naive.abs().max() > 0  # ... and 0.7 does not round-trip through a plain mean of 6
    hidden[2, 3] = hidden[2, 4]  # two equal completions inside an otherwise normal group
    weight = torch.randn(H, generator=gen, dtype=torch.float64)
    assert torch.equal(group_centered_features(hidden)[1], torch.zeros(k, H, dtype=torch.float64))
    for metric in (None, 2.0 * torch.eye(H, dtype=torch.float64)):
        out = sign_radii(hidden, weight, metric)
        assert torch.equal(out.advantages[1], torch.zeros(k, dtype=torch.float64))
        assert torch.isinf(out.radii[1]).all() and (out.radii[1] > 0).all()
        mask = torch.ones(P, k, dtype=torch.bool)
        mask[1] = False
        assert torch.isfinite(out.radii[mask]).all()
        assert out.radii[2, 3] == out.radii[2, 4]


def ref_quantile(values, q):
    """Linear interpolation between order statistics of the finite values."""
    xs = sorted(v for v in values if math.isfinite(v))
    if not xs:
        return math.inf
    pos = q * (len(xs) - 1)
    lo, hi = math.floor(pos), math.ceil(pos)
    return xs[lo] + (pos - lo) * (xs[hi] - xs[lo])


def _radii(gen):
    radii = sign_radii(*_inputs(gen)).radii
    radii[0, 2] = math.inf  # a few zero-feature completions
    radii[3] = math.inf  # a group with no finite radius
    return radii


@pytest.mark.parametrize("q", [0.0, 0.25, 0.5, 0.9, 1.0])
def test_threshold_matches_loop(gen, assert_close, q):
    radii = _radii(gen)
    batch = certification_threshold(radii, q, "batch")
    assert batch.shape == (1, 1)
    assert_close(batch, [[ref_quantile(radii.reshape(-1).tolist(), q)]])
    group = certification_threshold(radii, q, "group")
    assert group.shape == (P, 1)
    assert group[3, 0] == math.inf
    assert_close(group[:3], [[ref_quantile(row, q)] for row in radii[:3].tolist()])


def test_threshold_mutations(gen, assert_far):
    radii = _radii(gen)
    q = 0.4
    batch = certification_threshold(radii, q, "batch")
    finite = radii[torch.isfinite(radii)]
    assert_far(batch, torch.quantile(radii.reshape(-1), q))  # inf kept in (gives inf / nan)
    assert_far(batch, torch.quantile(finite, 1 - q))  # q and 1 - q confused
    assert_far(batch, torch.quantile(finite, q, interpolation="lower"))  # no interpolation
    assert_far(certification_threshold(radii, q, "group")[:3], batch)  # scope ignored


def test_weights_match_loop_and_are_detached(gen, assert_close):
    radii = _radii(gen).requires_grad_(True)
    tau = certification_threshold(radii, 0.5, "group")
    drop = certified_weights(radii, tau, "drop")
    linear = certified_weights(radii, tau, "linear")
    expected_drop, expected_linear = [], []
    for row, t in zip(radii.tolist(), tau.reshape(-1).tolist()):
        expected_drop.append([1.0 if r >= t else 0.0 for r in row])
        expected_linear.append([1.0 if r >= t else r / t for r in row])
    assert_close(drop, expected_drop)
    assert_close(linear, expected_linear)
    assert not drop.requires_grad and not linear.requires_grad
    assert set(drop.unique().tolist()) == {0.0, 1.0}
    assert (linear <= 1.0).all() and (linear >= 0.0).all()
    assert ((linear < 1.0) == (drop == 0.0)).all()
    # A float threshold broadcasts like a (1, 1) tensor.
    assert torch.equal(
        certified_weights(radii, 0.3, "drop"),
        certified_weights(radii, torch.tensor([[0.3]], dtype=torch.float64), "drop"),
    )


@pytest.mark.parametrize("scope", ["batch", "group"])
@pytest.mark.parametrize("mode", CERTIFIED_WEIGHT_MODES)
def test_quantile_zero_certifies_everything(gen, scope, mode):
    radii = _radii(gen)
    radii[1, 1] = 0.0  # an exactly zero advantage with non-zero features
    tau = certification_threshold(radii, 0.0, scope)
    assert torch.equal(certified_weights(radii, tau, mode), torch.ones(P, K, dtype=torch.float64))


def test_quantile_one_keeps_only_the_largest(gen):
    radii = _radii(gen)
    weights = certified_weights(radii, certification_threshold(radii, 1.0, "group"), "drop")
    # Per finite group: exactly the argmax (and any +inf radius) survives.
    assert weights[:3].sum(dim=1).tolist() == [2.0, 1.0, 1.0]
    assert weights[3].sum() == K


def test_validation(gen):
    hidden, weight = _inputs(gen)
    with pytest.raises(ValueError, match=r"\(P, K, H\)"):
        sign_radii(hidden[0], weight)
    with pytest.raises(ValueError, match="K >= 2"):
        group_centered_features(hidden[:, :1])
    with pytest.raises(ValueError, match="head_weight"):
        sign_radii(hidden, weight[:-1])
    with pytest.raises(ValueError, match="metric must have shape"):
        sign_radii(hidden, weight, torch.eye(H + 1, dtype=torch.float64))
    asym = _metric(gen)
    asym[0, 1] += 1.0
    with pytest.raises(ValueError, match="symmetric"):
        sign_radii(hidden, weight, asym)
    indefinite = torch.diag(torch.tensor([1.0, 1.0, -1.0, 1.0, 1.0, 1.0], dtype=torch.float64))
    with pytest.raises(ValueError, match="positive definite"):
        sign_radii(hidden, weight, indefinite)
    radii = sign_radii(hidden, weight).radii
    for q in (-0.1, 1.1, math.nan):
        with pytest.raises(ValueError, match="quantile"):
            certification_threshold(radii, q, "batch")
    with pytest.raises(ValueError, match=r"valid choices: \['batch', 'group'\]"):
        certification_threshold(radii, 0.5, "prompt")
    with pytest.raises(ValueError, match=r"valid choices: \['drop', 'linear'\]"):
        certified_weights(radii, 0.5, "soft")
    with pytest.raises(ValueError, match="broadcast"):
        certified_weights(radii, torch.ones(P + 1, 1), "drop")
    with pytest.raises(ValueError, match="broadcast"):
        certified_weights(radii, torch.ones(1, 1, 1), "drop")


def test_worst_case_advantage_is_the_minimum_over_the_ball(gen):
    from overopt.ops import worst_case_advantages

    hidden, weight = _inputs(gen)
    out = sign_radii(hidden, weight)
    eps = 0.3
    shifted = worst_case_advantages(out.advantages, out.feature_norms, eps)
    d = group_centered_features(hidden)
    # Brute force: sign(A)·(w + δ)ᵀd over many δ with ‖δ‖ = ε never goes below sign(A)·Ã, and
    # δ* = −ε·sign(A)·d/‖d‖ attains it.
    deltas = torch.randn(4000, H, generator=gen, dtype=torch.float64)
    deltas = eps * deltas / deltas.norm(dim=1, keepdim=True)
    sign = torch.sign(out.advantages)
    perturbed = torch.einsum("pkh,nh->pkn", d, deltas) + out.advantages.unsqueeze(-1)  # (P, K, n)
    assert (sign.unsqueeze(-1) * perturbed >= (sign * shifted).unsqueeze(-1) - 1e-12).all()
    star = -eps * sign.unsqueeze(-1) * d / d.norm(dim=-1, keepdim=True)
    torch.testing.assert_close(((weight + star) * d).sum(-1), shifted, rtol=0, atol=1e-12)
    # (1 − ε/Δ)·A; ε = 0 changes nothing; ε = Δ_i zeroes completion i.
    torch.testing.assert_close(shifted, (1 - eps / out.radii) * out.advantages, rtol=1e-12, atol=1e-12)
    assert torch.equal(worst_case_advantages(out.advantages, out.feature_norms, 0.0), out.advantages)
    at_own_radius = worst_case_advantages(out.advantages, out.feature_norms, out.radii[0, 0].item())
    assert abs(at_own_radius[0, 0].item()) < 1e-12
    # An infinite threshold (no finite radius in scope) shifts nothing.
    assert torch.equal(worst_case_advantages(out.advantages, out.feature_norms, math.inf), out.advantages)


def test_clipped_worst_case_never_reverses_a_sign(gen):
    from overopt.ops import worst_case_advantages

    hidden, weight = _inputs(gen)
    out = sign_radii(hidden, weight)
    eps = torch.quantile(out.radii.flatten(), 0.5).item()  # half of the completions have Δ < ε
    clipped = worst_case_advantages(out.advantages, out.feature_norms, eps, clip=True)
    shifted = worst_case_advantages(out.advantages, out.feature_norms, eps)
    below = out.radii < eps
    assert below.any() and (~below).any()
    # Written per completion from the definition: max(0, 1 − ε/Δ)·A.
    want = [[max(0.0, 1 - eps / r) * a for r, a in zip(rr, aa)] for rr, aa in zip(out.radii.tolist(),
                                                                             out.advantages.tolist())]  # fmt: skip
    torch.testing.assert_close(clipped, torch.tensor(want, dtype=torch.float64), rtol=1e-12, atol=1e-12)
    assert torch.equal(clipped[below], torch.zeros_like(clipped[below]))
    assert torch.equal(clipped[~below], shifted[~below])  # robust completions: the same as the paper's form
    assert (shifted[below] * out.advantages[below] < 0).all()  # which reverses the non-robust ones
    assert torch.equal(worst_case_advantages(out.advantages, out.feature_norms, 0.0, clip=True), out.advantages)


def test_head_fisher_matches_loop_and_is_an_ellipsoid(gen):
    from overopt.ops import head_fisher

    f = torch.randn(20, H, generator=gen, dtype=torch.float64)
    p = torch.rand(20, generator=gen, dtype=torch.float64)
    m = head_fisher(f, p, damping=0.1)
    ref = [[math.fsum(p[n].item() * (1 - p[n].item()) * f[n, i].item() * f[n, j].item() for n in range(20)) / 20
            for j in range(H)] for i in range(H)]  # fmt: skip
    trace = math.fsum(ref[i][i] for i in range(H))
    for i in range(H):
        ref[i][i] += 0.1 * trace / H
    torch.testing.assert_close(m, torch.tensor(ref, dtype=torch.float64), rtol=1e-12, atol=1e-14)
    assert torch.linalg.eigvalsh(m).min() > 0
    # As the metric of sign_radii: radii stay positive and finite; M = c·I scales the ℓ2 radii by sqrt(c).
    hidden, weight = _inputs(gen)
    assert torch.isfinite(sign_radii(hidden, weight, metric=m).radii).all()
    c = 4.0
    l2 = sign_radii(hidden, weight).radii
    torch.testing.assert_close(sign_radii(hidden, weight, metric=c * torch.eye(H).double()).radii, l2 * math.sqrt(c))
