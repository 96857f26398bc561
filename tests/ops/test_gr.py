"""Tests for overopt.ops.gr: on a quadratic loss the finite difference is exact,
so the combined gradient must equal ∇[L + (γ/2)‖∇L‖²] in closed form."""

from __future__ import annotations

import math

import pytest
import torch

from overopt.ops import GR_EXCLUDE_PATTERNS, clip_by_global_norm, combine_gr_gradients, is_gr_excluded

D = 6
EPS, GAMMA = 1e-3, 1e-2  # the paper's RLHF defaults


def _quadratic(gen):
    """L(θ) = ½ θᵀAθ - bᵀθ with A symmetric positive definite."""
    a = torch.randn(D, D, generator=gen, dtype=torch.float64)
    A = a @ a.T / D + 0.5 * torch.eye(D, dtype=torch.float64)
    b = torch.randn(D, generator=gen, dtype=torch.float64)
    theta = torch.randn(D, generator=gen, dtype=torch.float64)
    return A, b, theta


def _grad(A, b, theta):
    """∇L by autograd (independent of the closed form A θ - b)."""
    x = theta.clone().requires_grad_(True)
    (0.5 * x @ A @ x - b @ x).backward()
    return x.grad


def _gr_objective_grad(A, b, theta, gamma):
    """∇[L + (γ/2)‖∇L‖²] by double backprop."""
    x = theta.clone().requires_grad_(True)
    loss = 0.5 * x @ A @ x - b @ x
    (g,) = torch.autograd.grad(loss, x, create_graph=True)
    (total,) = torch.autograd.grad(loss + 0.5 * gamma * g.pow(2).sum(), x)
    return total


@pytest.mark.parametrize("gamma, eps", [(GAMMA, EPS), (1e-3, 1e-3), (0.3, 0.05), (0.0, 1e-3)])
def test_combination_equals_gr_gradient_on_quadratic(gen, assert_close, gamma, eps):
    A, b, theta = _quadratic(gen)
    g1 = _grad(A, b, theta)
    assert_close(g1, A @ theta - b)
    g2 = _grad(A, b, theta + eps * g1)
    assert_close(g2, g1 + eps * A @ g1)  # forward difference is exact for a quadratic
    out = combine_gr_gradients(g1, g2, gamma, eps)
    assert_close(out, g1 + gamma * A @ g1)
    assert_close(out, _gr_objective_grad(A, b, theta, gamma))


def test_combination_mutations(gen, assert_far):
    A, b, theta = _quadratic(gen)
    g1 = _grad(A, b, theta)
    g2 = _grad(A, b, theta + EPS * g1)
    out = combine_gr_gradients(g1, g2, GAMMA, EPS)
    assert_far(out, g1 + EPS * A @ g1)  # γ and ε confused (SAM step)
    assert_far(out, g1 + (GAMMA / EPS) * A @ g1)  # ratio applied to Hg without the ε in the difference
    assert_far(out, (1 + GAMMA / EPS) * g1 - (GAMMA / EPS) * g2)  # difference with the wrong sign
    assert_far(out, g1 + 0.5 * GAMMA * A @ g1)  # ½ of the γ/2 kept


def test_sam_and_off_are_exact(gen):
    A, b, theta = _quadratic(gen)
    g1 = _grad(A, b, theta)
    g2 = _grad(A, b, theta + EPS * g1)
    assert torch.equal(combine_gr_gradients(g1, g2, EPS, EPS), g2)  # γ = ε: unnormalised SAM
    assert torch.equal(combine_gr_gradients(g1, g2, 0.0, EPS), g1)  # γ = 0: GR off


def test_sam_and_off_exact_for_any_magnitudes():
    """The (1 - γ/ε) g1 + (γ/ε) g2 form stays exact where g1 + (γ/ε)(g2 - g1) would round."""
    g1 = torch.tensor([1e20, -3.0, 1e-30], dtype=torch.float64)
    g2 = torch.tensor([1.0, 7e17, 2.0], dtype=torch.float64)
    assert not torch.equal(g1 + (g2 - g1), g2)  # the other algebraic form loses g2
    assert torch.equal(combine_gr_gradients(g1, g2, 1e-3, 1e-3), g2)
    assert torch.equal(combine_gr_gradients(g1, g2, 0.0, 1e-3), g1)


def test_combination_any_shape_and_dtype():
    g1 = torch.randn(3, 4, 5)
    g2 = torch.randn(3, 4, 5)
    out = combine_gr_gradients(g1, g2, 0.02, 0.01)
    assert out.shape == (3, 4, 5) and out.dtype == torch.float32
    torch.testing.assert_close(out, -g1 + 2 * g2)
    assert torch.equal(combine_gr_gradients(g1[0, 0, 0], g2[0, 0, 0], 0.0, 0.5), g1[0, 0, 0])


def _grads(gen, scale):
    shapes = [(3, 4), (5,), (2, 2, 2)]
    return [scale * torch.randn(s, generator=gen, dtype=torch.float64) for s in shapes]


def _global_norm(grads):
    return math.sqrt(math.fsum(x * x for g in grads if g is not None for x in g.reshape(-1).tolist()))


def test_clip_leaves_small_gradients_untouched(gen):
    grads = _grads(gen, 0.1)
    norm = _global_norm(grads)
    clipped, reported = clip_by_global_norm(grads, 10.0)
    assert math.isclose(reported, norm, rel_tol=1e-12)
    for before, after in zip(grads, clipped):
        assert torch.equal(before, after) and after is not before  # copies


def test_clip_scales_large_gradients_to_the_bound(gen, assert_close, assert_far):
    grads = _grads(gen, 10.0)
    originals = [g.clone() for g in grads]
    norm = _global_norm(grads)
    assert norm > 10.0
    clipped, reported = clip_by_global_norm(grads, 10.0)
    assert math.isclose(reported, norm, rel_tol=1e-12)
    # Exact to rounding (torch's clip_grad_norm_ divides by norm + 1e-6, off by ~1e-8 relative here).
    assert math.isclose(_global_norm(clipped), 10.0, rel_tol=1e-12)
    for before, after in zip(originals, clipped):
        assert_close(after, before * (10.0 / norm))
    for before, after in zip(originals, grads):
        assert torch.equal(before, after)  # inputs not modified
    # Per-tensor clipping (each to norm 10) is a different, wrong rule.
    assert_far(clipped[0], originals[0] * min(1.0, 10.0 / originals[0].norm().item()))


@pytest.mark.parametrize("factor", [1.01, 1.5, 1.99])
def test_clip_just_above_the_bound(gen, factor):
    grads = _grads(gen, 1.0)
    grads = [g * (factor * 3.0 / _global_norm(grads)) for g in grads]  # global norm = factor · 3
    clipped, norm = clip_by_global_norm(grads, 3.0)
    assert math.isclose(norm, factor * 3.0, rel_tol=1e-12)
    assert math.isclose(_global_norm(clipped), 3.0, rel_tol=1e-12)
    # A bound just above the norm leaves them alone.
    unchanged, _ = clip_by_global_norm(grads, factor * 3.0 * (1 + 1e-9))
    assert all(torch.equal(a, b) for a, b in zip(grads, unchanged))


def test_clip_edge_cases(gen):
    grads = _grads(gen, 10.0)
    clipped, norm = clip_by_global_norm([None, *grads, None], 1.0)
    assert clipped[0] is None and clipped[-1] is None
    assert math.isclose(_global_norm(clipped), 1.0, rel_tol=1e-12)
    assert clip_by_global_norm([], 1.0) == ([], 0.0)
    zeros, norm = clip_by_global_norm([torch.zeros(3)], 1.0)
    assert norm == 0.0 and torch.equal(zeros[0], torch.zeros(3))
    # float32 gradients keep their dtype; the norm is accumulated in float64.
    g32 = [g.float() for g in grads]
    clipped32, norm32 = clip_by_global_norm(g32, 1.0)
    assert all(g.dtype == torch.float32 for g in clipped32)
    assert math.isclose(norm32, _global_norm(g32), rel_tol=1e-12)
    # Non-finite: returned unscaled so the caller can skip the step.
    bad = [grads[0].clone(), grads[1].clone()]
    bad[1][0] = math.inf
    out, norm = clip_by_global_norm(bad, 1.0)
    assert norm == math.inf and torch.equal(out[0], bad[0])
    with pytest.raises(ValueError, match="max_norm"):
        clip_by_global_norm(grads, 0.0)


@pytest.mark.parametrize(
    "name, excluded",
    [
        ("model.embed_tokens.weight", True),
        ("gpt_neox.embed_in.weight", True),
        ("embed_out.weight", True),
        ("lm_head.weight", True),
        ("score.weight", True),
        ("classifier.dense.bias", True),
        ("encoder.layer.0.attention.output.dense.weight", True),
        ("model.layers.0.self_attn.q_proj.weight", False),
        ("model.layers.3.mlp.down_proj.weight", False),
        ("model.norm.weight", False),
        ("transformer.h.0.ln_1.weight", False),
    ],
)
def test_exclusion_patterns(name, excluded):
    assert is_gr_excluded(name) is excluded


def test_exclusion_custom_patterns():
    assert GR_EXCLUDE_PATTERNS == ("embed", "lm_head", "output", "classifier", "score")
    assert not is_gr_excluded("lm_head.weight", patterns=("embed",))
    assert is_gr_excluded("layers.0.q_proj", patterns=("q_proj",))
    assert not is_gr_excluded("anything", patterns=())


def test_validation():
    g = torch.zeros(3)
    for eps in (0.0, -1e-3, math.inf, math.nan):
        with pytest.raises(ValueError, match="eps"):
            combine_gr_gradients(g, g, 0.01, eps)
    with pytest.raises(ValueError, match="gamma"):
        combine_gr_gradients(g, g, math.nan, 1e-3)
    with pytest.raises(ValueError, match="same shape"):
        combine_gr_gradients(g, torch.zeros(4), 0.01, 1e-3)
