"""Tests for overopt.ops.ensemble against per-completion Python loops."""

from __future__ import annotations

import math

import pytest
import torch

from overopt.ops import ENSEMBLE_MODES, aggregate_ensemble, ensemble_std

KM, B = 5, 8


def _rewards(gen, k=KM):
    return torch.randn(k, B, generator=gen, dtype=torch.float64) * 1.5 + 0.4


def _columns(rewards):
    return [list(col) for col in zip(*rewards.tolist())]


def ref_var(xs, ddof):
    mean = math.fsum(xs) / len(xs)
    return math.fsum((x - mean) ** 2 for x in xs) / (len(xs) - ddof)


def ref_aggregate(rewards, mode, lam=0.1, ddof=0):
    out = []
    for xs in _columns(rewards):
        mean = math.fsum(xs) / len(xs)
        out.append({"mean": mean, "wco": min(xs), "uwo": mean - lam * ref_var(xs, ddof)}[mode])
    return out


@pytest.mark.parametrize("mode", ENSEMBLE_MODES)
@pytest.mark.parametrize("ddof", [0, 1])
def test_aggregate_matches_loop(gen, assert_close, mode, ddof):
    rewards = _rewards(gen)
    assert_close(aggregate_ensemble(rewards, mode, uwo_lambda=0.5, ddof=ddof), ref_aggregate(rewards, mode, 0.5, ddof))


def test_aggregate_default_and_mutations(gen, assert_close, assert_far):
    rewards = _rewards(gen)
    uwo = aggregate_ensemble(rewards, "uwo")
    assert_close(uwo, ref_aggregate(rewards, "uwo", 0.1, 0))  # defaults: λ = 0.1, population variance
    assert_far(uwo, ref_aggregate(rewards, "uwo", 0.1, 1))  # sample variance
    mean = ref_aggregate(rewards, "mean")
    assert_far(uwo, [m - 0.1 * math.sqrt(ref_var(xs, 0)) for m, xs in zip(mean, _columns(rewards))])  # std, not var
    assert_far(uwo, [m + 0.1 * ref_var(xs, 0) for m, xs in zip(mean, _columns(rewards))])  # sign of the penalty
    assert_far(aggregate_ensemble(rewards, "wco"), [max(xs) for xs in _columns(rewards)])  # max instead of min
    assert_far(aggregate_ensemble(rewards, "mean"), rewards.mean(dim=1).mean())  # averaged over completions


@pytest.mark.parametrize("ddof", [0, 1])
def test_std_matches_loop(gen, assert_close, ddof):
    rewards = _rewards(gen)
    std = ensemble_std(rewards, ddof)
    assert_close(std, [math.sqrt(ref_var(xs, ddof)) for xs in _columns(rewards)])
    assert_close(std**2 * 0.3, aggregate_ensemble(rewards, "mean") - aggregate_ensemble(rewards, "uwo", 0.3, ddof))


@pytest.mark.parametrize("mode", ENSEMBLE_MODES)
def test_single_member_is_the_model_itself(gen, mode):
    rewards = _rewards(gen, k=1)
    assert torch.equal(aggregate_ensemble(rewards, mode, uwo_lambda=0.5), rewards[0])
    assert torch.equal(ensemble_std(rewards), torch.zeros(B, dtype=torch.float64))


def test_single_member_with_sample_variance_raises(gen):
    rewards = _rewards(gen, k=1)
    with pytest.raises(ValueError, match="k > ddof"):
        aggregate_ensemble(rewards, "uwo", ddof=1)
    with pytest.raises(ValueError, match="k > ddof"):
        ensemble_std(rewards, ddof=1)
    # ddof only matters for the variance.
    assert torch.equal(aggregate_ensemble(rewards, "mean", ddof=1), rewards[0])


def test_identities(gen, assert_close):
    rewards = _rewards(gen)
    mean = aggregate_ensemble(rewards, "mean")
    assert_close(aggregate_ensemble(rewards, "uwo", uwo_lambda=0.0), mean)
    assert (aggregate_ensemble(rewards, "wco") <= mean).all()
    assert (aggregate_ensemble(rewards, "uwo", uwo_lambda=0.5) <= mean).all()
    # Identical members: no disagreement, every mode gives the shared reward.
    same = rewards[:1].expand(KM, B)
    for mode in ENSEMBLE_MODES:
        assert_close(aggregate_ensemble(same, mode, uwo_lambda=2.0), rewards[0])


def test_validation(gen):
    rewards = _rewards(gen)
    with pytest.raises(ValueError, match=r"valid choices: \['mean', 'wco', 'uwo'\]"):
        aggregate_ensemble(rewards, "median")
    with pytest.raises(ValueError, match=r"\(k, B\)"):
        aggregate_ensemble(rewards[0], "mean")
    with pytest.raises(ValueError, match="at least one"):
        aggregate_ensemble(rewards[:0], "mean")
    with pytest.raises(ValueError, match="ddof"):
        aggregate_ensemble(rewards, "uwo", ddof=-1)
    with pytest.raises(ValueError, match="uwo_lambda"):
        aggregate_ensemble(rewards, "uwo", uwo_lambda=math.nan)
