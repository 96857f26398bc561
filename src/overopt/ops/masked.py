"""Reductions over the valid (mask == 1) elements of a tensor.

Masks are 0/1 (any numeric dtype) or bool and have exactly the shape of the
values. Padded positions are excluded with ``torch.where`` rather than by
multiplying by the mask: padding often holds garbage (``inf`` or ``nan`` from a
model run on pad tokens), and ``nan * 0`` is ``nan``.
"""

from __future__ import annotations

import torch

__all__ = ["masked_sum", "masked_mean", "masked_var", "masked_whiten"]

Dim = int | tuple[int, ...] | None


def _check_same_shape(name_a: str, a: torch.Tensor, name_b: str, b: torch.Tensor) -> None:
    """Raise ValueError unless ``a`` and ``b`` have identical shapes."""
    if a.shape != b.shape:
        raise ValueError(
            f"{name_a} and {name_b} must have the same shape, got {name_a}{tuple(a.shape)} and {name_b}{tuple(b.shape)}"
        )


def _check_ndim(name: str, x: torch.Tensor, ndim: int, layout: str) -> None:
    """Raise ValueError unless ``x`` has ``ndim`` dimensions (``layout`` names them)."""
    if x.dim() != ndim:
        raise ValueError(f"{name} must have shape {layout}, got {tuple(x.shape)}")


def _check_groups(name: str, x: torch.Tensor, ndim: int, layout: str) -> None:
    """Raise ValueError unless ``x`` is laid out as groups (dim 1) of K >= 2 completions per prompt."""
    _check_ndim(name, x, ndim, layout)
    if x.shape[1] < 2:
        raise ValueError(
            f"group-relative advantages need K >= 2 completions per prompt, got {name} of shape {tuple(x.shape)}"
        )


def _zero_padding(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``values`` with every position where ``mask`` is 0 replaced by exactly 0."""
    return torch.where(mask.bool(), values, torch.zeros((), dtype=values.dtype, device=values.device))


def _count(values: torch.Tensor, mask: torch.Tensor, dim: Dim) -> torch.Tensor:
    """Number of valid elements (in ``values.dtype``) along ``dim`` (all if None)."""
    m = mask.bool()
    n = m.sum() if dim is None else m.sum(dim=dim)
    return n.to(values.dtype)


def masked_sum(values: torch.Tensor, mask: torch.Tensor, dim: Dim = None) -> torch.Tensor:
    """Sum of the valid elements of ``values``.

    Formula: ``S = Σ_i m_i x_i`` over ``dim`` (all elements when ``dim`` is None).

    Shapes: ``values`` any shape ``S``; ``mask`` shape ``S`` (0/1 or bool).
    Returns a scalar when ``dim`` is None, else ``values`` reduced over ``dim``.
    Garbage (``nan``/``inf``) at padded positions does not leak into the result.
    """
    _check_same_shape("values", values, "mask", mask)
    x = _zero_padding(values, mask)
    return x.sum() if dim is None else x.sum(dim=dim)


def masked_mean(values: torch.Tensor, mask: torch.Tensor, dim: Dim = None) -> torch.Tensor:
    """Mean of the valid elements of ``values``.

    Formula: ``μ = (Σ_i m_i x_i) / (Σ_i m_i)`` over ``dim`` (all when None).

    Shapes: ``values`` any shape ``S``; ``mask`` shape ``S`` (0/1 or bool).
    Returns a scalar when ``dim`` is None, else ``values`` reduced over ``dim``.
    A slice with no valid elements gives ``nan`` (the mean is undefined there;
    callers that need a finite value must handle empty slices themselves).
    """
    _check_same_shape("values", values, "mask", mask)
    return masked_sum(values, mask, dim) / _count(values, mask, dim)


def masked_var(values: torch.Tensor, mask: torch.Tensor, unbiased: bool = True) -> torch.Tensor:
    """Variance of all valid elements of ``values`` (a single scalar).

    Formula: with ``n = Σ m_i`` and ``μ = masked_mean(x, m)``,
    ``var = Σ_i m_i (x_i - μ)^2 / (n - 1)`` when ``unbiased`` (Bessel
    correction, ddof = 1), else ``/ n`` (ddof = 0).

    Shapes: ``values`` any shape ``S``; ``mask`` shape ``S``. Returns a scalar.
    ``nan`` when there are too few valid elements (n = 0, or n = 1 with
    ``unbiased``).
    """
    _check_same_shape("values", values, "mask", mask)
    mean = masked_mean(values, mask)
    # Centre first, then square: the two-pass form avoids the cancellation of
    # E[x^2] - E[x]^2 when the mean is large relative to the spread.
    sq_dev = masked_sum((values - mean) ** 2, mask)
    n = _count(values, mask, None)
    return sq_dev / (n - 1 if unbiased else n)


def masked_whiten(values: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True, eps: float = 1e-8) -> torch.Tensor:
    """Standardise ``values`` with statistics of its valid elements.

    Formula: ``w_i = (x_i - μ) / sqrt(var + eps)`` with ``μ``, ``var`` the
    masked mean and the *unbiased* (ddof = 1) masked variance over all valid
    elements. With ``shift_mean=False`` the mean is added back,
    ``w_i = (x_i - μ) / sqrt(var + eps) + μ``, i.e. only the scale changes
    (used to keep the sign of e.g. advantages / rewards meaningful).

    Shapes: ``values`` any shape ``S``; ``mask`` shape ``S``. Returns shape ``S``.
    Positions with mask 0 are set to exactly 0, so that padding garbage never
    reaches a downstream loss.
    """
    _check_same_shape("values", values, "mask", mask)
    mean = masked_mean(values, mask)
    var = masked_var(values, mask, unbiased=True)
    whitened = (values - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        whitened = whitened + mean
    return _zero_padding(whitened, mask)
