"""Shared fixtures for the ``overopt.ops`` tests.

References are computed independently in float64 (usually Python-float loops),
compared with tight tolerances; "mutation" checks assert that a plausible wrong
formula lands far outside those tolerances, so the reference test would catch it.
"""

from __future__ import annotations

import pytest
import torch

RTOL = 1e-10
ATOL = 1e-12
# A wrong formula must miss the op by at least this much (>> ATOL, RTOL * O(1)).
MUTATION_GAP = 1e-3


@pytest.fixture
def gen() -> torch.Generator:
    """A freshly seeded generator per test, so tests are order-independent."""
    return torch.Generator().manual_seed(20240611)


@pytest.fixture
def assert_close():
    """Assert a tensor matches an independent float64 reference tightly."""

    def check(actual, expected, rtol: float = RTOL, atol: float = ATOL) -> None:
        expected = torch.as_tensor(expected, dtype=torch.float64)
        # Python floats must not pass through the float32 default dtype.
        actual = actual if torch.is_tensor(actual) else torch.as_tensor(actual, dtype=torch.float64)
        assert actual.shape == expected.shape, (actual.shape, expected.shape)
        torch.testing.assert_close(actual.to(torch.float64), expected, rtol=rtol, atol=atol)

    return check


@pytest.fixture
def assert_far():
    """Assert a mutated (wrong) reference differs from the op by far more than the tolerance."""

    def check(actual, wrong, gap: float = MUTATION_GAP) -> None:
        actual = torch.as_tensor(actual, dtype=torch.float64)
        wrong = torch.as_tensor(wrong, dtype=torch.float64).expand_as(actual)
        diff = (actual - wrong).abs().nan_to_num(nan=float("inf")).max().item()
        assert diff > gap, f"mutation not detected: max |op - wrong| = {diff:.3g} <= {gap}"

    return check


@pytest.fixture
def right_padded_mask():
    """Make a (B, T) float64 right-padded 0/1 mask with random lengths.

    Row 0 is full length and row 1 is padded (so both cases always occur);
    ``min_len`` bounds the shortest row (0 allows an all-padding row).
    """

    def make(batch: int, length: int, gen: torch.Generator, min_len: int = 1) -> torch.Tensor:
        lengths = torch.randint(min_len, length + 1, (batch,), generator=gen)
        lengths[0] = length
        if batch > 1:
            lengths[1] = max(min_len, length // 2)
        positions = torch.arange(length).unsqueeze(0)
        return (positions < lengths.unsqueeze(1)).to(torch.float64)

    return make


@pytest.fixture
def random_mask():
    """Make an arbitrary (not contiguous) float64 0/1 mask with at least one 1 and one 0."""

    def make(shape: tuple[int, ...], gen: torch.Generator, p: float = 0.6) -> torch.Tensor:
        mask = (torch.rand(shape, generator=gen, dtype=torch.float64) < p).to(torch.float64)
        flat = mask.view(-1)
        flat[0] = 1.0
        flat[-1] = 0.0
        return mask

    return make


@pytest.fixture
def with_garbage():
    """Fill the padded (mask == 0) positions of a tensor with nan / inf garbage."""

    def fill(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        junk = torch.full_like(values, float("nan"))
        junk.view(-1)[::2] = float("inf")
        return torch.where(mask.bool(), values, junk)

    return fill
