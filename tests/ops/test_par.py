"""Tests for overopt.ops.par against a Python loop."""

from __future__ import annotations

import math

import pytest
import torch

from overopt.ops import par_reward

B, M = 7, 4


def _inputs(gen, m=M):
    rewards = 2 * torch.randn(B, generator=gen, dtype=torch.float64)
    refs = 2 * torch.randn(B, m, generator=gen, dtype=torch.float64)
    return rewards, refs


def ref_par(rewards, refs, k):
    sig = lambda z: 1.0 / (1.0 + math.exp(-z))
    return [math.fsum(sig(k * (r - q)) for q in row) / len(row) for r, row in zip(rewards.tolist(), refs.tolist())]


@pytest.mark.parametrize("k", [1.0, 0.3, 2.5])
def test_par_matches_loop(gen, assert_close, k):
    rewards, refs = _inputs(gen)
    assert_close(par_reward(rewards, refs, k), ref_par(rewards, refs, k))


def test_par_mutations(gen, assert_far):
    rewards, refs = _inputs(gen)
    out = par_reward(rewards, refs, 2.5)
    assert_far(out, ref_par(rewards, refs, 1.0))  # k ignored
    assert_far(out, [1 - v for v in ref_par(rewards, refs, 2.5)])  # difference reversed
    assert_far(out, torch.sigmoid(2.5 * (rewards - refs.mean(dim=1))))  # σ of the mean, not mean of σ


def test_single_reference_is_sigmoid_of_margin(gen):
    rewards, refs = _inputs(gen, m=1)
    assert torch.equal(par_reward(rewards, refs, 1.7), torch.sigmoid(1.7 * (rewards - refs[:, 0])))
    assert torch.equal(par_reward(rewards, refs), torch.sigmoid(rewards - refs[:, 0]))  # default k = 1


def test_bounded_and_monotone(gen):
    rewards, refs = _inputs(gen)
    out = par_reward(rewards, refs)
    assert ((out > 0) & (out < 1)).all()
    higher = par_reward(rewards + 0.1, refs)
    assert (higher > out).all()
    assert torch.equal(par_reward(refs[:, 0], refs[:, :1]), torch.full((B,), 0.5, dtype=torch.float64))


def test_validation(gen):
    rewards, refs = _inputs(gen)
    with pytest.raises(ValueError, match=r"\(B,\)"):
        par_reward(rewards.unsqueeze(1), refs)
    with pytest.raises(ValueError, match=r"\(B, M\)"):
        par_reward(rewards, refs[:, 0])
    with pytest.raises(ValueError, match="to match rewards"):
        par_reward(rewards, refs[:-1])
    with pytest.raises(ValueError, match="to match rewards"):
        par_reward(rewards, refs[:, :0])
    with pytest.raises(ValueError, match="k must be finite"):
        par_reward(rewards, refs, math.inf)
