"""Tests for overopt.ops.masked against Python-loop references."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from overopt.ops import masked_mean, masked_sum, masked_var, masked_whiten

SHAPE = (5, 7)


def _data(gen, random_mask):
    # Non-zero offset and non-unit scale so that mean/var mistakes show up.
    values = 3.0 + 2.5 * torch.randn(SHAPE, generator=gen, dtype=torch.float64)
    return values, random_mask(SHAPE, gen)


def ref_sum(values, mask, dim):
    """Masked sum by explicit loops over a 2-D tensor."""
    v, m = values.tolist(), mask.tolist()
    rows, cols = len(v), len(v[0])
    if dim is None:
        return math.fsum(v[i][j] for i in range(rows) for j in range(cols) if m[i][j])
    if dim in (0, -2):
        return [math.fsum(v[i][j] for i in range(rows) if m[i][j]) for j in range(cols)]
    return [math.fsum(v[i][j] for j in range(cols) if m[i][j]) for i in range(rows)]


def ref_count(mask, dim):
    m = mask.tolist()
    if dim is None:
        return sum(sum(row) for row in m)
    if dim in (0, -2):
        return [sum(row[j] for row in m) for j in range(len(m[0]))]
    return [sum(row) for row in m]


def ref_mean_var(values, mask, ddof):
    xs = [x for x, k in zip(values.view(-1).tolist(), mask.view(-1).tolist()) if k]
    mean = math.fsum(xs) / len(xs)
    var = math.fsum((x - mean) ** 2 for x in xs) / (len(xs) - ddof)
    return mean, var


@pytest.mark.parametrize("dim", [None, 0, 1, -1])
def test_masked_sum_matches_loop(gen, random_mask, with_garbage, assert_close, dim):
    values, mask = _data(gen, random_mask)
    expected = ref_sum(values, mask, dim)
    assert_close(masked_sum(values, mask, dim), expected)
    # nan/inf in the padding must not leak into the result.
    assert_close(masked_sum(with_garbage(values, mask), mask, dim), expected)


@pytest.mark.parametrize("dim", [None, 0, 1, -1])
def test_masked_mean_matches_loop(gen, random_mask, with_garbage, assert_close, dim):
    values, mask = _data(gen, random_mask)
    mask[:, 0] = 1.0  # every column and row non-empty so the mean is defined
    mask[0, :] = 1.0
    sums, counts = ref_sum(values, mask, dim), ref_count(mask, dim)
    expected = sums / counts if dim is None else [s / c for s, c in zip(sums, counts)]
    assert_close(masked_mean(values, mask, dim), expected)
    assert_close(masked_mean(with_garbage(values, mask), mask, dim), expected)


def test_masked_sum_and_mean_mutations(gen, random_mask, assert_far):
    values, mask = _data(gen, random_mask)
    # Forgetting the mask, or dividing by all elements instead of valid ones.
    assert_far(masked_sum(values, mask), values.sum())
    assert_far(masked_mean(values, mask), ref_sum(values, mask, None) / values.numel())
    assert_far(masked_mean(values, mask, 1), torch.tensor(ref_sum(values, mask, 1)) / SHAPE[1])


def test_bool_mask_equals_float_mask(gen, random_mask):
    values, mask = _data(gen, random_mask)
    for fn in (masked_sum, masked_mean):
        for dim in (None, 0, 1):
            assert torch.equal(fn(values, mask, dim), fn(values, mask.bool(), dim))
    assert torch.equal(masked_var(values, mask), masked_var(values, mask.bool()))
    assert torch.equal(masked_whiten(values, mask), masked_whiten(values, mask.bool()))


def test_tuple_dim_on_3d(gen, assert_close):
    values = torch.randn(2, 3, 4, generator=gen, dtype=torch.float64)
    mask = (torch.rand(2, 3, 4, generator=gen) < 0.5).to(torch.float64)
    expected = [
        math.fsum(values[i, j, k].item() for j, k in itertools.product(range(3), range(4)) if mask[i, j, k])
        for i in range(2)
    ]
    assert_close(masked_sum(values, mask, dim=(1, 2)), expected)


def test_masked_mean_of_empty_slice_is_nan():
    values = torch.ones(2, 3, dtype=torch.float64)
    mask = torch.tensor([[1.0, 0.0, 1.0], [0.0, 0.0, 0.0]], dtype=torch.float64)
    out = masked_mean(values, mask, dim=1)
    assert out[0].item() == 1.0 and torch.isnan(out[1])
    assert torch.isnan(masked_mean(values, torch.zeros_like(mask)))


@pytest.mark.parametrize("unbiased", [True, False])
def test_masked_var_matches_loop(gen, random_mask, with_garbage, assert_close, unbiased):
    values, mask = _data(gen, random_mask)
    _, expected = ref_mean_var(values, mask, ddof=1 if unbiased else 0)
    assert_close(masked_var(values, mask, unbiased=unbiased), expected)
    assert_close(masked_var(with_garbage(values, mask), mask, unbiased=unbiased), expected)


def test_masked_var_mutations(gen, random_mask, assert_far):
    values, mask = _data(gen, random_mask)
    _, var_ddof0 = ref_mean_var(values, mask, ddof=0)
    # Wrong ddof, and statistics over all elements (mask ignored).
    assert_far(masked_var(values, mask, unbiased=True), var_ddof0)
    assert_far(masked_var(values, mask, unbiased=True), values.var())


def test_masked_var_large_offset_is_stable(gen, random_mask, assert_close):
    values, mask = _data(gen, random_mask)
    # A naive E[x^2] - E[x]^2 would lose every digit at this offset.
    _, expected = ref_mean_var(values, mask, ddof=1)
    assert_close(masked_var(values + 1e8, mask), expected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("shift_mean", [True, False])
def test_masked_whiten_matches_loop(gen, random_mask, with_garbage, assert_close, shift_mean):
    values, mask = _data(gen, random_mask)
    eps = 1e-8
    mean, var = ref_mean_var(values, mask, ddof=1)
    expected = [
        [
            ((x - mean) / math.sqrt(var + eps) + (0.0 if shift_mean else mean)) if k else 0.0
            for x, k in zip(row_v, row_m)
        ]
        for row_v, row_m in zip(values.tolist(), mask.tolist())
    ]
    assert_close(masked_whiten(values, mask, shift_mean=shift_mean, eps=eps), expected)
    assert_close(masked_whiten(with_garbage(values, mask), mask, shift_mean=shift_mean, eps=eps), expected)


def test_masked_whiten_properties(gen, random_mask, assert_close):
    values, mask = _data(gen, random_mask)
    w = masked_whiten(values, mask, eps=0.0)
    assert_close(masked_mean(w, mask), 0.0, atol=1e-12)
    assert_close(masked_var(w, mask, unbiased=True), 1.0)
    assert bool((w[mask == 0] == 0).all())
    w_keep = masked_whiten(values, mask, shift_mean=False, eps=0.0)
    assert_close(masked_mean(w_keep, mask), masked_mean(values, mask))


def test_masked_whiten_mutations(gen, random_mask, assert_far):
    values, mask = _data(gen, random_mask)
    mean, var = ref_mean_var(values, mask, ddof=1)
    _, var0 = ref_mean_var(values, mask, ddof=0)
    w = masked_whiten(values, mask)
    valid = mask.bool()
    # Biased variance, unmasked statistics, forgotten centring.
    assert_far(w[valid], ((values - mean) / math.sqrt(var0))[valid])
    assert_far(w[valid], ((values - values.mean()) / values.std())[valid])
    assert_far(w[valid], (values / math.sqrt(var))[valid])


@pytest.mark.parametrize("fn", [masked_sum, masked_mean, masked_var, masked_whiten])
def test_shape_mismatch_raises(fn):
    with pytest.raises(ValueError, match="same shape"):
        fn(torch.zeros(2, 3), torch.ones(3, 2))
