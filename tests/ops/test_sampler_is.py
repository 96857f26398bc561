"""Tests for overopt.ops.sampler_is against a Python-loop reference in float64, and its identities."""

from __future__ import annotations

import math

import pytest
import torch

from overopt.ops import SAMPLER_IS_MODES, sampler_importance_weights

B, T = 6, 5


def _batch(gen, right_padded_mask, spread=0.8):
    trainer = -2 * torch.rand(B, T, generator=gen, dtype=torch.float64)
    sampler = trainer + spread * torch.randn(B, T, generator=gen, dtype=torch.float64)
    return trainer, sampler, right_padded_mask(B, T, gen)


def ref_weights(trainer, sampler, mask, mode, low, high):
    """The weights token by token, with Python floats (TRL's GRPOTrainer's definition, written out)."""
    low = -math.inf if low is None else low
    high = math.inf if high is None else high
    out = []
    for tr, sa, m in zip(trainer.tolist(), sampler.tolist(), mask.tolist(), strict=True):
        diffs = [(a - b) if v and not math.isnan(b) else 0.0 for a, b, v in zip(tr, sa, m, strict=True)]
        seq = math.exp(math.fsum(diffs))
        row = []
        for d, v in zip(diffs, m, strict=True):
            r = seq if mode.startswith("sequence") else math.exp(d)
            if mode.endswith("truncate"):
                w = min(max(r, low), high)
            else:
                w = r if low <= r <= high else 0.0
            row.append(w if v else 0.0)
        out.append(row)
    return out


@pytest.mark.parametrize("mode", SAMPLER_IS_MODES)
@pytest.mark.parametrize("bounds", [(None, 3.0), (0.5, 2.0), (None, None)])
def test_weights_match_the_loop(gen, right_padded_mask, assert_close, mode, bounds):
    trainer, sampler, mask = _batch(gen, right_padded_mask)
    out = sampler_importance_weights(trainer, sampler, mask, mode, *bounds)
    expected = ref_weights(trainer, sampler, mask, mode, *bounds)
    assert_close(out.weights, expected)
    n = mask.sum().item()
    diffs = [abs(a - b) for ra, rb, rm in zip(trainer.tolist(), sampler.tolist(), mask.tolist(), strict=True)
             for a, b, v in zip(ra, rb, rm, strict=True) if v]  # fmt: skip
    assert_close(out.logp_diff_mean, math.fsum(diffs) / n)
    assert_close(out.logp_diff_max, max(diffs))
    assert_close(out.weight_mean, math.fsum(w for row in expected for w in row) / n)
    if bounds != (None, None) and mode.endswith("mask"):
        assert 0 < out.masked_frac < 1  # the data exercise both sides of the mask
    if mode.endswith("truncate") or bounds == (None, None):
        assert out.masked_frac == 0


def test_a_sampler_equal_to_the_trainer_gives_weight_one_and_nan_counts_as_equal(gen, right_padded_mask):
    trainer, _, mask = _batch(gen, right_padded_mask)
    for mode in SAMPLER_IS_MODES:
        out = sampler_importance_weights(trainer, trainer.clone(), mask, mode)
        assert torch.equal(out.weights, mask) and out.logp_diff_max == 0 and out.masked_frac == 0
    sampler = trainer.clone()
    sampler[0, 1] = float("nan")  # an engine that could not score a token
    out = sampler_importance_weights(trainer, sampler, mask, "token_mask")
    assert torch.equal(out.weights, mask) and torch.isfinite(out.weight_mean)


def test_sequence_mask_drops_a_whole_sequence_and_padding_never_counts(gen, right_padded_mask):
    trainer, _, mask = _batch(gen, right_padded_mask)
    sampler = trainer.clone()
    sampler[2] -= 0.5 * mask[2]  # sequence 2: π_old/μ = exp(0.5 · its length) > 3 from length 3
    sampler[0, -1] -= 100.0  # row 0 is full length: one token far off
    garbage = trainer.clone().masked_fill(mask == 0, 1e6)  # padding's values must not enter
    out = sampler_importance_weights(garbage, sampler, mask, "sequence_mask", None, 3.0)
    length = int(mask[2].sum())
    assert (out.weights[2] == 0).all() == (math.exp(0.5 * length) > 3.0)
    assert (out.weights[0] == 0).all()  # the far-off token drops its whole sequence
    assert torch.equal(out.weights[3:], mask[3:])
    token = sampler_importance_weights(garbage, sampler, mask, "token_mask", None, 3.0)
    assert token.weights[0, -1] == 0 and torch.equal(token.weights[0, :-1], mask[0, :-1])


def test_bad_arguments_fail_with_one_line_errors(gen, right_padded_mask):
    trainer, sampler, mask = _batch(gen, right_padded_mask)
    with pytest.raises(ValueError, match="valid choices"):
        sampler_importance_weights(trainer, sampler, mask, "sequence")
    with pytest.raises(ValueError, match="clip_min <= clip_max"):
        sampler_importance_weights(trainer, sampler, mask, "token_truncate", 2.0, 1.0)
    with pytest.raises(ValueError):
        sampler_importance_weights(trainer, sampler[:, :-1], mask)
