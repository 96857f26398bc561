"""overopt.ops.aggregation (Recursive Reward Aggregation, arXiv 2507.08537) against naive float64 loops over
each row's valid steps written from the definitions (not the recursion), and the identities."""

from __future__ import annotations

import math

import pytest
import torch

from overopt.ops import REWARD_AGGREGATIONS, aggregate, gae, returns_to_go, softmin_weighted, token_returns

B, S = 9, 6


def _naive(values: list[float], name: str, gamma: float, empty: float) -> float:
    """The value of a list of step rewards, from the closed forms."""
    if not values:
        return empty
    if name == "sum":
        return sum(gamma**k * r for k, r in enumerate(values))
    if name == "max":
        return max(gamma**k * r if k else r for k, r in enumerate(values))
    if name == "min":
        return min(gamma**k * r if k else r for k, r in enumerate(values))
    mean = sum(values) / len(values)
    if name == "mean":
        return mean
    # RRA's sharpe_ratio: population variance (sum2/n − mean²), clipped below at 1e-8.
    variance = sum(r * r for r in values) / len(values) - mean**2
    return mean / math.sqrt(max(variance, 1e-8))


def _data(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    rewards = torch.randn(B, S, generator=g, dtype=torch.float64)
    mask = (torch.rand(B, S, generator=g) < 0.7).long()
    mask[0] = 0  # no valid step
    mask[1] = 1  # every step
    mask[2] = torch.tensor([1, 0, 0, 0, 0, 0])  # one step
    return rewards, mask


@pytest.mark.parametrize("name", REWARD_AGGREGATIONS)
@pytest.mark.parametrize("gamma", [1.0, 0.9, 0.0])
def test_returns_to_go_match_the_closed_forms_at_every_step(name, gamma):
    if gamma != 1.0 and name in ("mean", "sharpe"):
        pytest.skip("no discount for mean and Sharpe")
    rewards, mask = _data()
    got = returns_to_go(rewards, mask, name, gamma, empty=-7.0)
    assert got.dtype == torch.float64 and got.shape == (B, S)
    for b in range(B):
        for t in range(S):
            suffix = [rewards[b, k].item() for k in range(t, S) if mask[b, k]]
            assert got[b, t].item() == pytest.approx(_naive(suffix, name, gamma, -7.0), rel=1e-12, abs=1e-12)
    torch.testing.assert_close(aggregate(rewards, mask, name, gamma, empty=-7.0), got[:, 0], rtol=0, atol=0)


def test_identities():
    rewards, mask = _data(1)
    ones = torch.ones_like(mask)
    # γ = 1 sum is the plain masked sum.
    torch.testing.assert_close(aggregate(rewards, mask, "sum"), (rewards * mask).sum(1), rtol=1e-14, atol=1e-14)
    # min / max / mean / sum of one step is that step.
    single = torch.zeros_like(mask)
    single[:, 3] = 1
    for name in ("sum", "max", "min", "mean"):
        torch.testing.assert_close(aggregate(rewards, single, name), rewards[:, 3], rtol=0, atol=0)
    # mean of a constant is the constant; its Sharpe ratio (variance 0, clipped at 1e-8) is c × 10⁴, and so is
    # that of a single step.
    constant = torch.full((B, S), 0.37, dtype=torch.float64)
    torch.testing.assert_close(aggregate(constant, ones, "mean"), constant[:, 0], rtol=1e-15, atol=1e-15)
    torch.testing.assert_close(aggregate(constant, ones, "sharpe"), torch.full((B,), 3700.0, dtype=torch.float64))
    torch.testing.assert_close(aggregate(rewards, single, "sharpe"), rewards[:, 3] * 1e4, rtol=1e-12, atol=0)
    # min ≤ mean ≤ max; γ = 0 leaves the first step of a sum, and compares it with 0 for max and min.
    lo, mid, hi = (aggregate(rewards, ones, n) for n in ("min", "mean", "max"))
    assert bool((lo <= mid).all() and (mid <= hi).all())
    first = rewards[:, 0]
    torch.testing.assert_close(aggregate(rewards, ones, "sum", gamma=0.0), first, rtol=0, atol=0)
    torch.testing.assert_close(aggregate(rewards, ones, "max", gamma=0.0), first.clamp_min(0), rtol=0, atol=0)
    torch.testing.assert_close(aggregate(rewards, ones, "min", gamma=0.0), first.clamp_max(0), rtol=0, atol=0)
    # Padding anywhere is skipped: the same steps packed to the left give the same value.
    packed = torch.zeros_like(rewards)
    packed_mask = torch.zeros_like(mask)
    for b in range(B):
        kept = rewards[b][mask[b].bool()]
        packed[b, : len(kept)] = kept
        packed_mask[b, : len(kept)] = 1
    for name in REWARD_AGGREGATIONS:
        torch.testing.assert_close(aggregate(rewards, mask, name), aggregate(packed, packed_mask, name), rtol=1e-14,
                                   atol=1e-14)  # fmt: skip


def test_sharpe_of_one_two_three_is_mean_over_population_std():
    # RRA's Sharpe ratio: mean 2 over sqrt((1 + 4 + 9)/3 − 4) = sqrt(2/3), i.e. sqrt(6) = 2.449…; the
    # softplus form this lab had before (mean/sqrt(softplus(var) + 1e-8)) gives 1.935 and fails here.
    rewards = torch.tensor([[1.0, 2.0, 3.0]], dtype=torch.float64)
    got = aggregate(rewards, torch.ones_like(rewards), "sharpe")
    assert got.item() == pytest.approx(math.sqrt(6.0), rel=1e-14)
    assert abs(got.item() - 2.0 / math.sqrt(math.log1p(math.exp(2.0 / 3.0)) + 1e-8)) > 0.5


def test_gradients_flow_to_the_rewards():
    rewards, mask = _data(2)
    rewards.requires_grad_(True)
    aggregate(rewards, mask, "sharpe").sum().backward()
    assert torch.isfinite(rewards.grad).all() and (rewards.grad[~mask.bool()] == 0).all()


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda r, m: aggregate(r, m, "median"), "unknown aggregation 'median'"),
        (lambda r, m: aggregate(r, m, "mean", gamma=0.9), "takes no discount"),
        (lambda r, m: aggregate(r, m, "sum", gamma=1.5), "gamma must be in"),
        (lambda r, m: aggregate(r[0], m[0], "sum"), r"shape \(B, S\)"),
        (lambda r, m: aggregate(r, m[:, :2], "sum"), "same shape|shape"),
    ],
)
def test_bad_input_is_one_clear_error(call, message):
    rewards, mask = _data()
    with pytest.raises(ValueError, match=message):
        call(rewards, mask)


# -- PPO's per-token λ-returns in aggregation-state space (token_returns) -------------------------------------

T = 7


def _token_data(seed: int = 0):
    """Steps ending at tokens (two at one token in row 1), values of every state size, right-padded rows whose
    last valid token holds a step (as the `process` testbed's final step does)."""
    g = torch.Generator().manual_seed(seed)
    lengths = [7, 5, 6, 3]
    tokens = torch.tensor([[1, 3, 6, 6], [0, 2, 4, 4], [1, 2, 3, 5], [2, 2, 0, 0]])
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1], [0, 1, 1, 1], [1, 1, 0, 0]])
    rewards = torch.rand(4, 4, generator=g, dtype=torch.float64) * 2 - 1
    token_mask = torch.tensor([[1] * n + [0] * (T - n) for n in lengths])
    values = {k: torch.randn(4, T, k, generator=g, dtype=torch.float64) for k in (1, 2, 3)}
    for v in values.values():
        v[..., -1] = v[..., -1].abs() + 1  # a count (mean's and Sharpe's n) is positive
    return rewards, mask, tokens, token_mask, values


def _fold(name: str, rewards: list[float], state: tuple, gamma: float) -> tuple:
    """Fold rewards (last first) into a state, from the definitions in plain floats."""
    for r in reversed(rewards):
        if name == "sum":
            state = (r + gamma * state[0],)
        elif name in ("max", "min"):
            tau = state[0] if math.isinf(state[0]) else gamma * state[0]
            state = ((max if name == "max" else min)(r, tau),)
        elif name == "mean":
            state = (state[0] + r, state[1] + 1)
        else:
            mean, m2, n = state
            n += 1
            new_mean = mean + (r - mean) / n
            state = (new_mean, m2 + (r - mean) * (r - new_mean), n)
    return state


def _post(name: str, state: tuple) -> float:
    if name in ("sum", "max", "min"):
        return state[0]
    n = max(state[-1], 1)
    if name == "mean":
        return state[0] / n
    return state[0] / math.sqrt(max(state[1] / n, 1e-8))


_INIT = {"sum": (0.0,), "max": (-math.inf,), "min": (math.inf,), "mean": (0.0, 0.0), "sharpe": (0.0, 0.0, 0.0)}
_K = {"sum": 1, "max": 1, "min": 1, "mean": 2, "sharpe": 3}


def _naive_token_returns(rewards, mask, tokens, token_mask, values, name, gamma, lam):
    """G_t by the recursion written per row in plain floats: X_t mixes V_{t+1} and G_{t+1} when a step lies ahead."""
    out = torch.zeros(rewards.shape[0], T, dtype=torch.float64)
    for b in range(rewards.shape[0]):
        n = int(token_mask[b].sum())
        steps = [(int(tokens[b, j]), rewards[b, j].item()) for j in range(rewards.shape[1]) if mask[b, j]]
        following = _INIT[name]
        for t in range(n - 1, -1, -1):
            if any(tok > t for tok, _ in steps):
                v = tuple(values[b, t + 1].tolist())
                state = tuple((1 - lam) * a + lam * c for a, c in zip(v, following)) if 0 < lam < 1 else (
                    v if lam == 0 else following)  # fmt: skip
            else:
                state = _INIT[name]
            state = _fold(name, [r for tok, r in steps if tok == t], state, gamma)
            if any(tok >= t for tok, _ in steps):
                out[b, t] = _post(name, state)
            following = state
    return out


@pytest.mark.parametrize("name", REWARD_AGGREGATIONS)
@pytest.mark.parametrize("lam", [0.0, 0.6, 1.0])
def test_token_returns_match_the_recursion_in_plain_floats(name, lam):
    rewards, mask, tokens, token_mask, values = _token_data()
    gammas = (1.0, 0.8) if name in ("sum", "max", "min") else (1.0,)
    for gamma in gammas:
        v = values[_K[name]]
        got = token_returns(rewards, mask, tokens, v, token_mask, name, gamma, lam)
        want = _naive_token_returns(rewards, mask, tokens, token_mask, v, name, gamma, lam)
        torch.testing.assert_close(got.returns, want, rtol=1e-12, atol=1e-12)
        assert got.targets.shape == (4, T, _K[name])
        posts = torch.tensor(
            [[_post(name, tuple(v[b, t].tolist())) for t in range(T)] for b in range(4)], dtype=torch.float64
        )
        torch.testing.assert_close(got.advantages, (want - posts) * got.mask, rtol=1e-12, atol=1e-12)
        # row 3 has steps at token 2 only: nothing ahead of token 2 from there, no reward at its padding
        assert got.mask[3].tolist() == [1, 1, 1, 0, 0, 0, 0]


@pytest.mark.parametrize("name", REWARD_AGGREGATIONS)
def test_token_returns_at_lambda_one_are_the_returns_to_go_of_the_future_steps(name):
    rewards, mask, tokens, token_mask, values = _token_data(1)
    got = token_returns(rewards, mask, tokens, values[_K[name]], token_mask, name, lam=1.0)
    for b in range(4):
        for t in range(int(token_mask[b].sum())):
            future = mask[b] * (tokens[b] >= t)
            if future.any():
                want = returns_to_go(rewards[b : b + 1], future[None], name)[0, 0]
                assert got.returns[b, t].item() == pytest.approx(want.item(), rel=1e-12, abs=1e-12)


@pytest.mark.parametrize("lam", [0.0, 0.5, 0.95, 1.0])
def test_token_returns_of_the_sum_are_gae(lam):
    rewards, mask, tokens, token_mask, values = _token_data(2)
    v = values[1]
    token_rewards = torch.zeros(4, T, dtype=torch.float64).index_put_(
        (torch.arange(4)[:, None].expand(-1, 4)[mask.bool()], tokens[mask.bool()]), rewards[mask.bool()],
        accumulate=True,
    )  # fmt: skip
    want = gae(token_rewards, v[..., 0] * token_mask, token_mask, 1.0, lam)
    got = token_returns(rewards, mask, tokens, v, token_mask, "sum", 1.0, lam)
    torch.testing.assert_close(got.returns, want.returns, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(got.advantages, want.advantages, rtol=1e-12, atol=1e-12)


def test_token_returns_bad_input_is_one_clear_error():
    rewards, mask, tokens, token_mask, values = _token_data()
    with pytest.raises(ValueError, match=r"values must be \(B, T, k\)"):
        token_returns(rewards, mask, tokens, values[1], token_mask, "mean")
    with pytest.raises(ValueError, match="valid token"):
        token_returns(rewards, mask, tokens + 2, values[1], token_mask, "sum")
    with pytest.raises(ValueError, match="lam must be in"):
        token_returns(rewards, mask, tokens, values[1], token_mask, "sum", lam=1.5)


# -- PURE's min-form (softmin_weighted) ------------------------------------------------------------------------


def test_softmin_weighted_matches_its_definition_and_limits():
    rewards, mask = _data(3)
    got = softmin_weighted(rewards, mask, 0.1)
    for b in range(B):
        valid = [k for k in range(S) if mask[b, k]]
        z = sum(math.exp(-rewards[b, k].item() / 0.1) for k in valid)
        for k in range(S):
            want = math.exp(-rewards[b, k].item() / 0.1) / z * rewards[b, k].item() if k in valid else 0.0
            assert got[b, k].item() == pytest.approx(want, rel=1e-12, abs=1e-15)
    assert (got[0] == 0).all()  # a row without steps
    # T → 0: the sum is the minimum; T → ∞: the mean (PURE's --disable_weighted_reward); one step: that step.
    has = mask.any(1)
    torch.testing.assert_close(softmin_weighted(rewards, mask, 1e-4).sum(1)[has], aggregate(rewards, mask, "min")[has])
    torch.testing.assert_close(softmin_weighted(rewards, mask, 1e9).sum(1)[has], aggregate(rewards, mask, "mean")[has])
    with pytest.raises(ValueError, match="temperature must be positive"):
        softmin_weighted(rewards, mask, 0.0)
