"""Tests for overopt.ops.ocrm against Python-float (math.log / math.exp) references."""

from __future__ import annotations

import math

import pytest
import torch

from overopt.ops import (
    WEIGHT_NORMALIZATIONS,
    bradley_terry_loss,
    effective_sample_size,
    ess_from_log_weights,
    normalize_weights,
    ocrm_log_weights,
    relative_log_density_ratio,
)

N = 11
ALPHAS = [0.0, 0.1, 0.5, 0.9]


def _logps(gen, n=N, offset=0.0):
    """Moderate sequence log-likelihoods of a policy and of the SFT model (float64)."""
    policy = -0.5 - 4 * torch.rand(n, generator=gen, dtype=torch.float64) + offset
    sft = -0.5 - 4 * torch.rand(n, generator=gen, dtype=torch.float64) + offset
    return policy, sft


def ref_log_ratio(lp: float, ls: float, alpha: float) -> float:
    """log[π_k / (α π_k + (1 - α) π_SFT)] straight from the probabilities."""
    pk, ps = math.exp(lp), math.exp(ls)
    return math.log(pk / (alpha * pk + (1 - alpha) * ps))


def ref_log_ratio_shifted(lp: float, ls: float, alpha: float) -> float:
    """The same, with both log-probs shifted by their max before exponentiating."""
    m = max(lp, ls)
    return (lp - m) - math.log(alpha * math.exp(lp - m) + (1 - alpha) * math.exp(ls - m))


def _loop(fn, *tensors, **kw):
    return [fn(*vals, **kw) for vals in zip(*(t.tolist() for t in tensors))]


@pytest.mark.parametrize("alpha", ALPHAS)
def test_relative_log_ratio_matches_loop(gen, assert_close, alpha):
    policy, sft = _logps(gen)
    assert_close(relative_log_density_ratio(policy, sft, alpha), _loop(ref_log_ratio, policy, sft, alpha=alpha))


def test_relative_log_ratio_mutations(gen, assert_far):
    policy, sft = _logps(gen)
    alpha = 0.1
    out = relative_log_density_ratio(policy, sft, alpha)
    assert_far(out, policy - sft)  # α ignored (plain ratio)
    assert_far(out, _loop(ref_log_ratio, policy, sft, alpha=1 - alpha))  # α and 1-α swapped
    assert_far(out, _loop(lambda a, b: ref_log_ratio(b, a, alpha), policy, sft))  # π_SFT / mixture
    assert_far(out, [-v for v in _loop(ref_log_ratio, policy, sft, alpha=alpha)])  # inverse ratio


def test_alpha_zero_is_plain_ratio_exactly(gen):
    policy, sft = _logps(gen)
    assert torch.equal(relative_log_density_ratio(policy, sft, 0.0), policy - sft)
    # Even with -inf (probability 0) entries, no nan appears.
    policy[0], sft[1] = -math.inf, -math.inf
    out = relative_log_density_ratio(policy, sft, 0.0)
    assert out[0] == -math.inf and out[1] == math.inf and torch.isfinite(out[2:]).all()


@pytest.mark.parametrize("alpha", ALPHAS)
def test_policy_equal_sft_gives_zero(gen, assert_close, alpha):
    policy, _ = _logps(gen)
    assert_close(relative_log_density_ratio(policy, policy.clone(), alpha), torch.zeros(N, dtype=torch.float64))


@pytest.mark.parametrize("alpha", [0.1, 0.5])
def test_relative_ratio_bounded_by_inverse_alpha(gen, alpha):
    policy, sft = _logps(gen)
    policy[:3] = sft[:3] + 50.0  # π_k >> π_SFT: the ratio saturates at 1/α
    out = relative_log_density_ratio(policy, sft, alpha)
    assert (out <= -math.log(alpha) + 1e-12).all()
    torch.testing.assert_close(out[:3], torch.full((3,), -math.log(alpha), dtype=torch.float64))


@pytest.mark.parametrize("alpha", ALPHAS)
def test_relative_ratio_stable_for_long_sequences(gen, assert_close, alpha):
    """Around -2000 every exp underflows to 0; the log-space op must not care."""
    policy, sft = _logps(gen, offset=-2000.0)
    assert math.exp(policy[0].item()) == 0.0  # a naive exp-then-log would give log(0/0)
    expected = _loop(ref_log_ratio_shifted, policy, sft, alpha=alpha)
    out = relative_log_density_ratio(policy, sft, alpha)
    assert torch.isfinite(out).all()
    # Inputs ~2000 carry absolute rounding ~2000 · 2^-52 ≈ 5e-13.
    assert_close(out, expected, rtol=1e-9, atol=1e-9)
    # float32 (as models often return): still finite and right to float32 resolution at 2000.
    out32 = relative_log_density_ratio(policy.float(), sft.float(), alpha)
    assert torch.isfinite(out32).all()
    torch.testing.assert_close(out32.double(), torch.tensor(expected, dtype=torch.float64), rtol=0, atol=2e-3)


def _four(gen, offset=0.0):
    pc, sc = _logps(gen, offset=offset)
    pr, sr = _logps(gen, offset=offset)
    return pc, sc, pr, sr


def ref_log_weights(pc, sc, pr, sr, alpha, beta_w):
    return [
        beta_w * (ref_log_ratio_shifted(a, b, alpha) + ref_log_ratio_shifted(c, d, alpha))
        for a, b, c, d in zip(pc.tolist(), sc.tolist(), pr.tolist(), sr.tolist())
    ]


@pytest.mark.parametrize("alpha", [0.0, 0.1])
def test_ocrm_log_weights_matches_loop(gen, assert_close, assert_far, alpha):
    pc, sc, pr, sr = _four(gen)
    beta_w = 0.7
    out = ocrm_log_weights(pc, sc, pr, sr, alpha, beta_w)
    assert_close(out, ref_log_weights(pc, sc, pr, sr, alpha, beta_w))
    assert_far(out, ref_log_weights(pc, sc, pr, sr, alpha, 1.0))  # β_w ignored
    assert_far(out, [beta_w * ref_log_ratio(a, b, alpha) for a, b in zip(pc.tolist(), sc.tolist())])  # chosen only
    assert_far(out, ref_log_weights(pc, sc, sr, pr, alpha, beta_w))  # rejected ratio inverted


def test_ocrm_log_weights_long_sequences(gen, assert_close):
    pc, sc, pr, sr = _four(gen, offset=-2000.0)
    out = ocrm_log_weights(pc, sc, pr, sr, 0.1, 0.01)
    assert torch.isfinite(out).all()
    assert_close(out, ref_log_weights(pc, sc, pr, sr, 0.1, 0.01), rtol=1e-9, atol=1e-10)


def test_beta_zero_gives_unit_weights_and_plain_bt(gen):
    pc, sc, pr, sr = _four(gen)
    pc[0] = -math.inf  # even an infinite log-ratio must not give 0 · inf = nan
    log_w = ocrm_log_weights(pc, sc, pr, sr, 0.0, 0.0)
    weights = normalize_weights(log_w, "none")
    assert torch.equal(weights, torch.ones(N, dtype=torch.float64))
    chosen = torch.randn(N, generator=gen, dtype=torch.float64)
    rejected = torch.randn(N, generator=gen, dtype=torch.float64)
    assert torch.equal(bradley_terry_loss(chosen, rejected, weights), bradley_terry_loss(chosen, rejected))
    torch.testing.assert_close(normalize_weights(log_w, "dataset"), weights, rtol=1e-14, atol=0)


def test_weighted_bt_with_ocrm_weights_matches_loop(gen, assert_close):
    pc, sc, pr, sr = _four(gen)
    chosen = torch.randn(N, generator=gen, dtype=torch.float64)
    rejected = torch.randn(N, generator=gen, dtype=torch.float64)
    weights = normalize_weights(ocrm_log_weights(pc, sc, pr, sr, 0.1, 0.5), "dataset")
    lw = ref_log_weights(pc, sc, pr, sr, 0.1, 0.5)
    raw = [math.exp(v) for v in lw]
    mean = math.fsum(raw) / N
    terms = [w / mean * math.log1p(math.exp(-(c - r))) for w, c, r in zip(raw, chosen.tolist(), rejected.tolist())]
    assert_close(bradley_terry_loss(chosen, rejected, weights), math.fsum(terms) / N)


def ref_normalize(log_w, mode):
    w = [math.exp(v) for v in log_w.tolist()]
    total = math.fsum(w)
    return {"none": w, "batch": [x / total for x in w], "dataset": [x / (total / len(w)) for x in w]}[mode]


@pytest.mark.parametrize("mode", WEIGHT_NORMALIZATIONS)
def test_normalize_weights_matches_loop(gen, assert_close, mode):
    log_w = 1.5 * torch.randn(N, generator=gen, dtype=torch.float64)
    assert_close(normalize_weights(log_w, mode), ref_normalize(log_w, mode))


def test_normalize_weights_sums_and_mutations(gen, assert_close, assert_far):
    log_w = 1.5 * torch.randn(N, generator=gen, dtype=torch.float64)
    batch, dataset, none = (normalize_weights(log_w, m) for m in ("batch", "dataset", "none"))
    assert_close(batch.sum(), 1.0)
    assert_close(dataset.mean(), 1.0)
    assert_far(dataset, batch)  # Σ vs mean normaliser
    assert_far(batch, none)
    assert_far(batch, torch.softmax(-log_w, 0))  # sign of the log-weights flipped


@pytest.mark.parametrize("shift", [-2000.0, 800.0])
def test_normalize_weights_stable_for_extreme_log_weights(gen, assert_close, shift):
    """exp overflows (800) or underflows (-2000) for every entry; normalised weights do not care."""
    log_w = 1.5 * torch.randn(N, generator=gen, dtype=torch.float64)
    for mode in ("batch", "dataset"):
        out = normalize_weights(log_w + shift, mode)
        assert torch.isfinite(out).all()
        assert_close(out, ref_normalize(log_w, mode), rtol=1e-9, atol=1e-12)


def ref_ess(w):
    w = w.tolist()
    return math.fsum(w) ** 2 / math.fsum(x * x for x in w)


def test_ess_matches_loop_and_log_form(gen, assert_close, assert_far):
    log_w = 1.5 * torch.randn(N, generator=gen, dtype=torch.float64)
    w = log_w.exp()
    ess = effective_sample_size(w)
    assert ess.dim() == 0
    assert_close(ess, ref_ess(w))
    assert_close(ess_from_log_weights(log_w), ref_ess(w))
    assert 1.0 <= ess.item() <= N
    assert_far(ess, math.fsum(x * x for x in w.tolist()) / math.fsum(w.tolist()) ** 2)  # inverted
    assert_far(ess, math.fsum(w.tolist()) / math.fsum(x * x for x in w.tolist()))  # sum not squared
    # Scale invariance: the normalisation mode does not change the ESS.
    assert_close(effective_sample_size(normalize_weights(log_w, "batch")), ref_ess(w))
    assert_close(effective_sample_size(1e300 * w), ref_ess(w))


def test_ess_closed_forms(assert_close):
    assert_close(effective_sample_size(torch.full((7,), 0.3, dtype=torch.float64)), 7.0)
    one_hot = torch.zeros(7, dtype=torch.float64)
    one_hot[3] = 2.5
    assert_close(effective_sample_size(one_hot), 1.0)
    assert_close(ess_from_log_weights(torch.zeros(7, dtype=torch.float64)), 7.0)
    log_one_hot = torch.full((7,), -math.inf, dtype=torch.float64)
    log_one_hot[3] = 0.4
    assert_close(ess_from_log_weights(log_one_hot), 1.0)
    # Two equal weights, the rest negligible.
    assert_close(effective_sample_size(torch.tensor([1.0, 1.0, 0.0, 0.0], dtype=torch.float64)), 2.0)


@pytest.mark.parametrize("shift", [-2000.0, 2000.0])
def test_ess_from_log_weights_stable(gen, assert_close, shift):
    log_w = 1.5 * torch.randn(N, generator=gen, dtype=torch.float64)
    out = ess_from_log_weights(log_w + shift)
    assert torch.isfinite(out)
    assert_close(out, ref_ess(log_w.exp()), rtol=1e-9)


def test_validation(gen):
    policy, sft = _logps(gen)
    for alpha in (-0.1, 1.0, 1.5, math.nan):
        with pytest.raises(ValueError, match="alpha"):
            relative_log_density_ratio(policy, sft, alpha)
    with pytest.raises(ValueError, match="same shape"):
        relative_log_density_ratio(policy, sft[:-1], 0.1)
    with pytest.raises(ValueError, match=r"\(N,\)"):
        relative_log_density_ratio(policy.reshape(1, -1), sft.reshape(1, -1), 0.1)
    with pytest.raises(ValueError, match="same shape"):
        ocrm_log_weights(policy, sft, policy[:-1], sft[:-1], 0.1, 0.01)
    with pytest.raises(ValueError, match="beta_w"):
        ocrm_log_weights(policy, sft, policy, sft, 0.1, math.inf)
    with pytest.raises(ValueError, match=r"valid choices: \['none', 'batch', 'dataset'\]"):
        normalize_weights(policy, "softmax")
    with pytest.raises(ValueError, match="non-empty"):
        normalize_weights(policy[:0], "batch")
    with pytest.raises(ValueError, match=r"\(N,\)"):
        effective_sample_size(policy.reshape(1, -1))
    with pytest.raises(ValueError, match="non-empty"):
        ess_from_log_weights(policy[:0])
