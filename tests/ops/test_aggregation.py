"""overopt.ops.aggregation (Recursive Reward Aggregation, arXiv 2507.08537) against naive float64 loops over
each row's valid steps written from the definitions (not the recursion), and the identities."""

from __future__ import annotations

import math

import pytest
import torch

from overopt.ops import REWARD_AGGREGATIONS, aggregate, returns_to_go

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
    variance = sum((r - mean) ** 2 for r in values) / len(values)
    return mean / math.sqrt(math.log1p(math.exp(variance)) + 1e-8)


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
    # mean of a constant is the constant; its Sharpe ratio is c / sqrt(log 2 + 1e-8).
    constant = torch.full((B, S), 0.37, dtype=torch.float64)
    torch.testing.assert_close(aggregate(constant, ones, "mean"), constant[:, 0], rtol=1e-15, atol=1e-15)
    want = 0.37 / math.sqrt(math.log(2) + 1e-8)
    torch.testing.assert_close(aggregate(constant, ones, "sharpe"), torch.full((B,), want, dtype=torch.float64))
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
