"""Tests for overopt.ops.policy_loss against Python-loop references, closed-form
on-policy gradients, hand-picked clipping cases and gradcheck."""

from __future__ import annotations

import math

import pytest
import torch

from overopt.ops import AGGREGATIONS, PolicyLoss, clipped_surrogate, clipped_value_loss

B, T = 5, 7
EPS = 0.2
NORM = 10.0


def _batch(gen, right_padded_mask, spread=0.4, per_token_adv=False, min_len=1):
    old = -2 * torch.rand(B, T, generator=gen, dtype=torch.float64)
    # spread ~0.4 puts a good share of ratios outside [0.8, 1.2] on both sides.
    logprobs = old + spread * torch.randn(B, T, generator=gen, dtype=torch.float64)
    shape = (B, T) if per_token_adv else (B,)
    adv = torch.randn(shape, generator=gen, dtype=torch.float64)
    mask = right_padded_mask(B, T, gen, min_len=min_len)
    weights = 0.2 + torch.rand(B, generator=gen, dtype=torch.float64)
    return logprobs, old, adv, mask, weights


def ref_surrogate(logprobs, old, adv, mask, eps, aggregation, norm_const=None, weights=None, sign=1.0):
    """Literal -min(ρA, clip(ρ)A) per token, aggregated with explicit loops."""
    lp, olp, m = logprobs.tolist(), old.tolist(), mask.tolist()
    a = adv.tolist()
    w = [1.0] * len(lp) if weights is None else weights.tolist()
    rows, n_clip, kl_terms = [], 0, []
    for b in range(len(lp)):
        terms = []
        for t in range(len(lp[b])):
            if not m[b][t]:
                continue
            a_bt = a[b][t] if isinstance(a[b], list) else a[b]
            rho = math.exp(lp[b][t] - olp[b][t])
            unclipped = rho * a_bt
            clipped = min(max(rho, 1 - eps), 1 + eps) * a_bt
            terms.append(-sign * min(unclipped, clipped) * (w[b][t] if isinstance(w[b], list) else w[b]))
            n_clip += clipped < unclipped
            l = lp[b][t] - olp[b][t]
            kl_terms.append(math.exp(-l) - 1 + l)
        rows.append(terms)
    n_tokens = sum(len(r) for r in rows)
    if aggregation == "seq_mean":
        loss = math.fsum(math.fsum(r) / len(r) if r else 0.0 for r in rows) / len(rows)
    elif aggregation == "token_mean":
        loss = math.fsum(x for r in rows for x in r) / n_tokens
    else:
        loss = math.fsum(x for r in rows for x in r) / (len(rows) * norm_const)
    return loss, n_clip / n_tokens, math.fsum(kl_terms) / n_tokens


@pytest.mark.parametrize("aggregation", AGGREGATIONS)
@pytest.mark.parametrize("per_token_adv", [False, True])
@pytest.mark.parametrize("use_weights", [None, "sequence", "token"])
def test_clipped_surrogate_matches_loop(
    gen, right_padded_mask, with_garbage, assert_close, aggregation, per_token_adv, use_weights
):
    logprobs, old, adv, mask, weights = _batch(gen, right_padded_mask, per_token_adv=per_token_adv)
    if use_weights == "token":  # per-token weights (the sampler's importance weights): a different one per token
        weights = weights.unsqueeze(1) * (0.5 + torch.rand(B, T, generator=gen, dtype=torch.float64))
    weights = weights if use_weights else None
    expected = ref_surrogate(logprobs, old, adv, mask, EPS, aggregation, NORM, weights)
    out = clipped_surrogate(logprobs, old, adv, mask, EPS, aggregation, NORM, weights)
    assert isinstance(out, PolicyLoss)
    assert_close(out.loss, expected[0])
    assert_close(out.clip_frac, expected[1])
    assert_close(out.approx_kl, expected[2])
    assert 0 < out.clip_frac < 1  # the data exercise both branches
    # Garbage in the padding changes nothing.
    adv_g = with_garbage(adv, mask) if per_token_adv else adv
    lp_g = with_garbage(logprobs, mask).requires_grad_(True)
    out_g = clipped_surrogate(lp_g, with_garbage(old, mask), adv_g, mask, EPS, aggregation, NORM, weights)
    assert_close(out_g.loss, expected[0])
    assert_close(out_g.clip_frac, expected[1])
    assert_close(out_g.approx_kl, expected[2])
    # ... nor the gradient: no 0 * nan leaks into the padded positions.
    out_g.loss.backward()
    assert torch.isfinite(lp_g.grad).all() and bool((lp_g.grad[mask == 0] == 0).all())


def test_clipped_surrogate_mutations(gen, right_padded_mask, assert_far):
    logprobs, old, adv, mask, weights = _batch(gen, right_padded_mask)
    out = clipped_surrogate(logprobs, old, adv, mask, EPS, "seq_mean", weights=weights)
    ref = lambda **kw: ref_surrogate(
        **{
            **dict(logprobs=logprobs, old=old, adv=adv, mask=mask, eps=EPS, aggregation="seq_mean", weights=weights),
            **kw,
        }
    )
    assert_far(out.loss, ref(aggregation="token_mean")[0])  # wrong aggregation
    assert_far(out.loss, ref(aggregation="token_sum_norm", norm_const=T)[0])
    assert_far(out.loss, ref(sign=-1.0)[0])  # sign flip
    assert_far(out.loss, ref(mask=torch.ones_like(mask))[0])  # mask ignored
    assert_far(out.loss, ref(eps=100.0)[0])  # no clipping
    assert_far(out.loss, ref(weights=None)[0])  # weights ignored
    # Weighted loss normalised by Σw instead of B.
    assert_far(out.loss, ref()[0] * B / weights.sum().item())
    # approx_kl as k1 instead of k3; clip_frac ignoring the advantage sign.
    l = (logprobs - old)[mask.bool()]
    assert_far(out.approx_kl, l.mean())
    assert_far(out.clip_frac, ((l.exp() - 1).abs() > EPS).double().mean())


def test_token_sum_norm_vs_token_mean(gen, right_padded_mask, assert_close):
    logprobs, old, adv, mask, _ = _batch(gen, right_padded_mask)
    n = mask.sum().item()
    a = clipped_surrogate(logprobs, old, adv, mask, aggregation="token_mean").loss
    s = clipped_surrogate(logprobs, old, adv, mask, aggregation="token_sum_norm", norm_const=NORM).loss
    assert_close(s, a * n / (B * NORM))


@pytest.mark.parametrize("aggregation", AGGREGATIONS)
@pytest.mark.parametrize("per_token_adv", [False, True])
def test_on_policy_gradient_closed_form(gen, right_padded_mask, assert_close, aggregation, per_token_adv):
    _, old, adv, mask, weights = _batch(gen, right_padded_mask, per_token_adv=per_token_adv)
    logprobs = old.clone().requires_grad_(True)
    out = clipped_surrogate(logprobs, old, adv, mask, EPS, aggregation, NORM, weights)
    out.loss.backward()
    # ρ = 1: ∂ℓ_{b,t}/∂logprob_{b,t} = -A_{b,t} w_b, times the aggregation weight c_{b,t}.
    lengths = mask.sum(1, keepdim=True)
    c = {
        "seq_mean": mask / (B * lengths),
        "token_mean": mask / mask.sum(),
        "token_sum_norm": mask / (B * NORM),
    }[aggregation]
    a = adv if per_token_adv else adv.unsqueeze(1)
    expected = -a * weights.unsqueeze(1) * c
    assert_close(logprobs.grad, expected)
    assert out.clip_frac.item() == 0.0 and out.approx_kl.item() == 0.0


def test_weights_ones_equal_no_weights_and_zero_removes_gradient(gen, right_padded_mask, assert_close):
    logprobs, old, adv, mask, _ = _batch(gen, right_padded_mask)
    for aggregation in AGGREGATIONS:
        lp1 = logprobs.clone().requires_grad_(True)
        lp2 = logprobs.clone().requires_grad_(True)
        lp3 = logprobs.clone().requires_grad_(True)
        plain = clipped_surrogate(lp1, old, adv, mask, EPS, aggregation, NORM)
        ones = clipped_surrogate(lp2, old, adv, mask, EPS, aggregation, NORM, torch.ones(B, dtype=torch.float64))
        assert torch.equal(plain.loss, ones.loss)
        plain.loss.backward()
        ones.loss.backward()
        assert torch.equal(lp1.grad, lp2.grad)
        w = torch.ones(B, dtype=torch.float64)
        w[1] = 0.0
        clipped_surrogate(lp3, old, adv, mask, EPS, aggregation, NORM, w).loss.backward()
        assert bool((lp3.grad[1] == 0).all())
        assert (lp1.grad[1] != 0).any()  # the row did carry gradient before
        keep = torch.arange(B) != 1
        assert_close(lp3.grad[keep], lp1.grad[keep])


def test_weights_are_detached(gen, right_padded_mask):
    logprobs, old, adv, mask, weights = _batch(gen, right_padded_mask)
    weights.requires_grad_(True)
    adv.requires_grad_(True)
    old.requires_grad_(True)
    loss = clipped_surrogate(logprobs.requires_grad_(True), old, adv, mask, weights=weights).loss
    loss.backward()
    assert weights.grad is None and adv.grad is None and old.grad is None
    assert logprobs.grad is not None


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_clipping_branches_hand_chosen(assert_close, sign):
    rho = torch.tensor([[0.5, 0.9, 1.0, 1.1, 1.5]], dtype=torch.float64)
    old = torch.zeros_like(rho)
    logprobs = rho.log().requires_grad_(True)
    mask = torch.ones_like(rho)
    adv = torch.tensor([sign], dtype=torch.float64)
    out = clipped_surrogate(logprobs, old, adv, mask, clip_eps=0.2, aggregation="token_mean")
    if sign > 0:
        # A > 0: -min(ρ, clip ρ); only ρ = 1.5 is clipped (to 1.2), ρ = 0.5 is not.
        terms = [-0.5, -0.9, -1.0, -1.1, -1.2]
        grad = [-0.5, -0.9, -1.0, -1.1, 0.0]  # -A ρ where unclipped, 0 where clipped
    else:
        # A < 0: max(ρ, clip ρ); only ρ = 0.5 is clipped (to 0.8), ρ = 1.5 is not.
        terms = [0.8, 0.9, 1.0, 1.1, 1.5]
        grad = [0.0, 0.9, 1.0, 1.1, 1.5]
    assert_close(out.loss, sum(terms) / 5)
    assert_close(out.clip_frac, 0.2)
    out.loss.backward()
    assert_close(logprobs.grad, [[g / 5 for g in grad]])


def test_zero_advantage_never_clips():
    rho = torch.tensor([[0.1, 1.0, 5.0]], dtype=torch.float64)
    out = clipped_surrogate(rho.log(), torch.zeros_like(rho), torch.zeros(1, dtype=torch.float64), torch.ones_like(rho))
    assert out.loss.item() == 0.0 and out.clip_frac.item() == 0.0


@pytest.mark.parametrize("aggregation", AGGREGATIONS)
def test_gradcheck_off_clip_boundary(gen, right_padded_mask, aggregation):
    logprobs, old, adv, mask, weights = _batch(gen, right_padded_mask, per_token_adv=True)
    rho = (logprobs - old).exp()
    # gradcheck's finite differences must not straddle a kink of the clip.
    assert ((rho - (1 + EPS)).abs().min() > 1e-4) and ((rho - (1 - EPS)).abs().min() > 1e-4)
    assert ((rho - 1).abs() > EPS).any()  # some tokens are in the clipped region
    fn = lambda lp: clipped_surrogate(lp, old, adv, mask, EPS, aggregation, NORM, weights).loss
    assert torch.autograd.gradcheck(fn, (logprobs.clone().requires_grad_(True),))


def test_empty_rows_and_empty_batch(gen, right_padded_mask, assert_close):
    logprobs, old, adv, mask, _ = _batch(gen, right_padded_mask)
    mask[3] = 0.0
    for aggregation in AGGREGATIONS:
        expected = ref_surrogate(logprobs, old, adv, mask, EPS, aggregation, NORM)
        assert_close(clipped_surrogate(logprobs, old, adv, mask, EPS, aggregation, NORM).loss, expected[0])
        lp = logprobs.clone().requires_grad_(True)
        out = clipped_surrogate(lp, old, adv, torch.zeros_like(mask), EPS, aggregation, NORM)
        out.loss.backward()
        assert out.loss.item() == 0.0 and out.clip_frac.item() == 0.0 and out.approx_kl.item() == 0.0
        assert bool((lp.grad == 0).all())


def test_clipped_surrogate_validation(gen, right_padded_mask):
    logprobs, old, adv, mask, weights = _batch(gen, right_padded_mask)
    with pytest.raises(ValueError, match=r"seq_mean.*token_mean.*token_sum_norm"):
        clipped_surrogate(logprobs, old, adv, mask, aggregation="sum")
    with pytest.raises(ValueError, match="norm_const"):
        clipped_surrogate(logprobs, old, adv, mask, aggregation="token_sum_norm")
    with pytest.raises(ValueError, match="advantages"):
        clipped_surrogate(logprobs, old, adv[:-1], mask)
    with pytest.raises(ValueError, match="weights"):
        clipped_surrogate(logprobs, old, adv, mask, weights=weights.unsqueeze(1))
    with pytest.raises(ValueError, match="same shape"):
        clipped_surrogate(logprobs, old[:, :-1], adv, mask)
    with pytest.raises(ValueError, match="same shape"):
        clipped_surrogate(logprobs, old, adv, mask[:, :-1])
    with pytest.raises(ValueError, match="clip_eps"):
        clipped_surrogate(logprobs, old, adv, mask, clip_eps=0.0)


# ------------------------------------------------------------------ value loss


def ref_value_loss(values, old_values, returns, mask, eps, reduce=max, half=0.5):
    terms = []
    for v, o, r, m in zip(*(x.view(-1).tolist() for x in (values, old_values, returns, mask))):
        if m:
            v_clip = o + min(max(v - o, -eps), eps)
            terms.append(reduce((v - r) ** 2, (v_clip - r) ** 2))
    return half * math.fsum(terms) / len(terms)


def _values(gen, right_padded_mask):
    old = torch.randn(B, T, generator=gen, dtype=torch.float64)
    values = old + 0.5 * torch.randn(B, T, generator=gen, dtype=torch.float64)
    returns = old + torch.randn(B, T, generator=gen, dtype=torch.float64)
    return values, old, returns, right_padded_mask(B, T, gen)


def test_clipped_value_loss_matches_loop(gen, right_padded_mask, with_garbage, assert_close):
    values, old, returns, mask = _values(gen, right_padded_mask)
    expected = ref_value_loss(values, old, returns, mask, 0.2)
    assert_close(clipped_value_loss(values, old, returns, mask, 0.2), expected)
    garbage = [with_garbage(x, mask) for x in (values, old, returns)]
    v = garbage[0].requires_grad_(True)
    loss = clipped_value_loss(v, garbage[1], garbage[2], mask, 0.2)
    assert_close(loss, expected)
    loss.backward()
    assert torch.isfinite(v.grad).all() and bool((v.grad[mask == 0] == 0).all())


def test_clipped_value_loss_mutations(gen, right_padded_mask, assert_far):
    values, old, returns, mask = _values(gen, right_padded_mask)
    out = clipped_value_loss(values, old, returns, mask, 0.2)
    assert_far(out, ref_value_loss(values, old, returns, mask, 0.2, reduce=min))  # min, not max
    assert_far(out, ref_value_loss(values, old, returns, mask, 0.2, half=1.0))  # missing 1/2
    assert_far(out, ref_value_loss(values, old, returns, mask, 1e9))  # no clipping
    assert_far(out, ref_value_loss(values, old, returns, torch.ones_like(mask), 0.2))  # mask ignored


def test_clipped_value_loss_gradcheck_and_detach(gen, right_padded_mask):
    values, old, returns, mask = _values(gen, right_padded_mask)
    d = values - old
    assert (((d.abs() - 0.2).abs()) > 1e-4).all() and (values != returns).all()
    old.requires_grad_(True)
    returns.requires_grad_(True)
    fn = lambda v: clipped_value_loss(v, old, returns, mask, 0.2)
    assert torch.autograd.gradcheck(fn, (values.clone().requires_grad_(True),))
    fn(values.clone().requires_grad_(True)).backward()
    assert old.grad is None and returns.grad is None


def test_clipped_value_loss_validation(gen, right_padded_mask):
    values, old, returns, mask = _values(gen, right_padded_mask)
    with pytest.raises(ValueError, match="same shape"):
        clipped_value_loss(values, old, returns[:, :-1], mask, 0.2)
    with pytest.raises(ValueError, match="clip_eps"):
        clipped_value_loss(values, old, returns, mask, -0.1)
    assert clipped_value_loss(values, old, returns, torch.zeros_like(mask), 0.2).item() == 0.0
