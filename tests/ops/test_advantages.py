"""Tests for overopt.ops.advantages against Python-loop references and identities."""

from __future__ import annotations

import math

import pytest
import torch

from overopt.ops import GAE, gae, grpo_advantages, rloo_advantages

P, K = 5, 6
B, T = 5, 8


def _rewards(gen):
    return 1.5 + torch.randn(P, K, generator=gen, dtype=torch.float64)


def ref_rloo(rewards):
    out = []
    for row in rewards.tolist():
        k = len(row)
        out.append([r - math.fsum(row[j] for j in range(k) if j != i) / (k - 1) for i, r in enumerate(row)])
    return out


def ref_grpo(rewards, scale_by_std, eps, ddof=1):
    out = []
    for row in rewards.tolist():
        mean = math.fsum(row) / len(row)
        std = math.sqrt(math.fsum((r - mean) ** 2 for r in row) / (len(row) - ddof))
        out.append([(r - mean) / (std + eps) if scale_by_std else r - mean for r in row])
    return out


def test_rloo_matches_loop(gen, assert_close):
    rewards = _rewards(gen)
    adv = rloo_advantages(rewards)
    assert_close(adv, ref_rloo(rewards))
    # Closed form: A = K/(K-1) (r - mean), and each group sums to 0.
    assert_close(adv, K / (K - 1) * (rewards - rewards.mean(1, keepdim=True)))
    assert_close(adv.sum(1), torch.zeros(P, dtype=torch.float64), atol=1e-12)


def test_rloo_mutations(gen, assert_far):
    rewards = _rewards(gen)
    adv = rloo_advantages(rewards)
    loo_sum = rewards.sum(1, keepdim=True) - rewards
    assert_far(adv, rewards - loo_sum / K)  # divisor K instead of K - 1
    assert_far(adv, rewards - rewards.mean(1, keepdim=True))  # baseline includes r_i
    assert_far(adv, loo_sum / (K - 1) - rewards)  # sign flip


def test_rloo_k2_closed_form(assert_close):
    rewards = torch.tensor([[1.0, 3.0], [2.0, -1.0]], dtype=torch.float64)
    assert_close(rloo_advantages(rewards), [[-2.0, 2.0], [3.0, -3.0]])


@pytest.mark.parametrize("fn", [rloo_advantages, grpo_advantages])
def test_group_validation(fn):
    with pytest.raises(ValueError, match="K >= 2"):
        fn(torch.zeros(3, 1, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"\(P, K\)"):
        fn(torch.zeros(6, dtype=torch.float64))


@pytest.mark.parametrize("scale_by_std", [True, False])
def test_grpo_matches_loop(gen, assert_close, scale_by_std):
    rewards = _rewards(gen)
    eps = 1e-4
    assert_close(grpo_advantages(rewards, scale_by_std, eps), ref_grpo(rewards, scale_by_std, eps))


def test_grpo_mutations(gen, assert_far):
    rewards = _rewards(gen)
    adv = grpo_advantages(rewards)
    assert_far(adv, ref_grpo(rewards, True, 1e-4, ddof=0))  # population std
    assert_far(adv, ref_grpo(rewards, False, 1e-4))  # std not applied
    assert_far(grpo_advantages(rewards, scale_by_std=False), ref_rloo(rewards))  # RLOO != Dr.GRPO
    # Dr.GRPO is exactly r - mean.
    assert torch.equal(grpo_advantages(rewards, scale_by_std=False), rewards - rewards.mean(1, keepdim=True))


def test_grpo_constant_group_is_zero():
    rewards = torch.tensor([[1.0, 1.0, 1.0], [0.0, 1.0, 0.0]], dtype=torch.float64)
    adv = grpo_advantages(rewards)
    assert torch.equal(adv[0], torch.zeros(3, dtype=torch.float64))
    assert bool((adv[1] != 0).all())


# --------------------------------------------------------------------------- GAE


def ref_gae(rewards, values, mask, gamma, lam):
    """A_t = Σ_{k=t}^{L} (γλ)^{k-t} δ_k with δ_k = r_k + γ V_{k+1} - V_k, V_{L+1} = 0.

    Written as the explicit double sum (not the recursion used by the op).
    """
    adv_out, ret_out = [], []
    for r, v, m in zip(rewards.tolist(), values.tolist(), mask.tolist()):
        valid = [t for t, k in enumerate(m) if k]
        adv_row, ret_row = [0.0] * len(m), [0.0] * len(m)
        if valid:
            first, last = valid[0], valid[-1]

            def delta(k, r=r, v=v, last=last):
                next_v = v[k + 1] if k < last else 0.0
                return r[k] + gamma * next_v - v[k]

            for t in range(first, last + 1):
                adv_row[t] = math.fsum((gamma * lam) ** (k - t) * delta(k) for k in range(t, last + 1))
                ret_row[t] = adv_row[t] + v[t]
        adv_out.append(adv_row)
        ret_out.append(ret_row)
    return adv_out, ret_out


def _episode(gen, right_padded_mask, min_len=1):
    rewards = torch.randn(B, T, generator=gen, dtype=torch.float64)
    values = 0.5 + torch.randn(B, T, generator=gen, dtype=torch.float64)
    mask = right_padded_mask(B, T, gen, min_len=min_len)
    return rewards, values, mask


@pytest.mark.parametrize(("gamma", "lam"), [(0.99, 0.95), (0.9, 0.5), (1.0, 1.0), (0.7, 0.0)])
def test_gae_matches_loop(gen, right_padded_mask, with_garbage, assert_close, gamma, lam):
    rewards, values, mask = _episode(gen, right_padded_mask, min_len=0)
    mask[2] = 0.0  # an all-padding row
    expected_adv, expected_ret = ref_gae(rewards, values, mask, gamma, lam)
    out = gae(with_garbage(rewards, mask), with_garbage(values, mask), mask, gamma, lam)
    assert isinstance(out, GAE)
    assert_close(out.advantages, expected_adv)
    assert_close(out.returns, expected_ret)


def test_gae_identity_lambda1_gamma1(gen, right_padded_mask, assert_close):
    rewards, values, mask = _episode(gen, right_padded_mask)
    out = gae(rewards, values, mask, gamma=1.0, lam=1.0)
    # Monte-Carlo: A_t = Σ_{k>=t} r_k - V_t over the valid tokens.
    future = torch.flip(torch.cumsum(torch.flip(rewards * mask, [1]), 1), [1])
    assert_close(out.advantages, (future - values) * mask)
    assert_close(out.returns, future * mask)


def test_gae_identity_lambda0_is_td_error(gen, right_padded_mask, assert_close):
    rewards, values, mask = _episode(gen, right_padded_mask)
    gamma = 0.9
    out = gae(rewards, values, mask, gamma=gamma, lam=0.0)
    next_values = torch.cat([values[:, 1:] * mask[:, 1:], torch.zeros(B, 1, dtype=torch.float64)], 1)
    assert_close(out.advantages, (rewards + gamma * next_values - values) * mask)


def test_gae_mutations(gen, right_padded_mask, assert_far):
    rewards, values, mask = _episode(gen, right_padded_mask)
    gamma, lam = 0.95, 0.9
    adv = gae(rewards, values, mask, gamma, lam).advantages
    # Bootstrapping from the value after the last valid token (no episode end).
    full = torch.ones_like(mask)
    assert_far(adv * mask, gae(rewards, values, full, gamma, lam).advantages * mask)
    # Decay γ instead of γλ.
    adv_gamma_only = torch.tensor(ref_gae(rewards, values, mask, gamma, 1.0)[0])
    assert_far(adv, adv_gamma_only)
    # Sign of the baseline flipped.
    assert_far(adv, torch.tensor(ref_gae(rewards, -values, mask, gamma, lam)[0]))


def test_gae_left_padding_matches_loop(gen, assert_close):
    rewards = torch.randn(3, 6, generator=gen, dtype=torch.float64)
    values = torch.randn(3, 6, generator=gen, dtype=torch.float64)
    mask = torch.tensor([[0, 0, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1], [0, 1, 1, 1, 0, 0]], dtype=torch.float64)
    out = gae(rewards, values, mask, 0.9, 0.8)
    expected_adv, expected_ret = ref_gae(rewards, values, mask, 0.9, 0.8)
    assert_close(out.advantages, expected_adv)
    assert_close(out.returns, expected_ret)


def test_gae_validation_and_detach(gen, right_padded_mask):
    rewards, values, mask = _episode(gen, right_padded_mask)
    holey = mask.clone()
    holey[0, 1] = 0.0  # row 0 is full length, so this opens a gap
    with pytest.raises(ValueError, match="contiguous"):
        gae(rewards, values, holey, 0.9, 0.9)
    with pytest.raises(ValueError, match="same shape"):
        gae(rewards, values[:, :-1], mask, 0.9, 0.9)
    with pytest.raises(ValueError, match=r"\(B, T\)"):
        gae(rewards[0], values[0], mask[0], 0.9, 0.9)
    out = gae(rewards.requires_grad_(True), values.requires_grad_(True), mask.bool(), 0.9, 0.9)
    assert not out.advantages.requires_grad and not out.returns.requires_grad
