"""Tests for overopt.ops.logprobs against Python-loop references."""

from __future__ import annotations

import math

import pytest
import torch

from overopt.ops import entropy_from_logits, selective_log_softmax, sequence_logprobs

B, T, V = 3, 4, 11


def _logits(gen, scale=3.0):
    return scale * torch.randn(B, T, V, generator=gen, dtype=torch.float64)


def _tokens(gen):
    return torch.randint(0, V, (B, T), generator=gen)


def ref_logsumexp(row):
    top = max(row)
    return top + math.log(math.fsum(math.exp(z - top) for z in row))


def ref_token_logprobs(logits, tokens):
    return [
        [row[y] - ref_logsumexp(row) for row, y in zip(seq, toks)]
        for seq, toks in zip(logits.tolist(), tokens.tolist())
    ]


def ref_entropy(logits):
    out = []
    for seq in logits.tolist():
        out_seq = []
        for row in seq:
            lse = ref_logsumexp(row)
            out_seq.append(-math.fsum(math.exp(z - lse) * (z - lse) for z in row if z > -math.inf))
        out.append(out_seq)
    return out


def test_selective_log_softmax_matches_loop(gen, assert_close):
    logits, tokens = _logits(gen), _tokens(gen)
    out = selective_log_softmax(logits, tokens)
    assert out.dtype == torch.float64
    assert_close(out, ref_token_logprobs(logits, tokens))


def test_selective_log_softmax_mutations(gen, assert_far):
    logits, tokens = _logits(gen), _tokens(gen)
    out = selective_log_softmax(logits, tokens)
    gathered = logits.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
    # No normalisation; normalising over the time axis instead of the vocabulary.
    assert_far(out, gathered)
    assert_far(out, torch.log_softmax(logits, dim=1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1))


def test_selective_log_softmax_huge_logits_stay_finite(gen, assert_close):
    logits, tokens = _logits(gen), _tokens(gen)
    shifted = selective_log_softmax(logits + 1e4, tokens)
    assert torch.isfinite(shifted).all()
    # Shift invariance: the 1e4 offset costs ~1e-12 absolute precision in float64.
    assert_close(shifted, ref_token_logprobs(logits, tokens), rtol=1e-9, atol=1e-9)


def test_selective_log_softmax_gradient_is_onehot_minus_softmax(gen, assert_close):
    logits, tokens = _logits(gen), _tokens(gen)
    logits.requires_grad_(True)
    selective_log_softmax(logits, tokens).sum().backward()
    expected = torch.nn.functional.one_hot(tokens, V).double() - torch.softmax(logits.detach(), -1)
    assert_close(logits.grad, expected)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_logits_computed_in_float32(gen, assert_close, dtype):
    logits, tokens = _logits(gen).to(dtype), _tokens(gen)
    # Reference from the *rounded* logits, so only the computation error remains.
    exact = logits.double()
    out = selective_log_softmax(logits, tokens)
    assert out.dtype == torch.float32
    assert_close(out, ref_token_logprobs(exact, tokens), rtol=1e-5, atol=1e-5)
    ent = entropy_from_logits(logits)
    assert ent.dtype == torch.float32
    assert_close(ent, ref_entropy(exact), rtol=1e-5, atol=1e-5)


def test_float32_keeps_dtype(gen):
    logits, tokens = _logits(gen).float(), _tokens(gen)
    assert selective_log_softmax(logits, tokens).dtype == torch.float32
    assert entropy_from_logits(logits).dtype == torch.float32


def test_selective_log_softmax_validation(gen):
    logits, tokens = _logits(gen), _tokens(gen)
    with pytest.raises(ValueError, match=r"\(B, T, V\)"):
        selective_log_softmax(logits[0], tokens)
    with pytest.raises(ValueError, match="logits.shape"):
        selective_log_softmax(logits, tokens[:, :-1])
    with pytest.raises(ValueError, match="integer"):
        selective_log_softmax(logits, tokens.double())


def test_entropy_matches_loop(gen, assert_close):
    logits = _logits(gen)
    assert_close(entropy_from_logits(logits), ref_entropy(logits))


def test_entropy_mutations(gen, assert_far):
    logits = _logits(gen)
    out = entropy_from_logits(logits)
    p = torch.softmax(logits, -1)
    # Dropping the logsumexp term; entropy in bits instead of nats.
    assert_far(out, -(p * logits).sum(-1))
    assert_far(out, out / math.log(2))


def test_entropy_closed_forms(assert_close):
    uniform = torch.zeros(1, 2, V, dtype=torch.float64)
    assert_close(entropy_from_logits(uniform), [[math.log(V)] * 2])
    # Banned tokens (-inf logits) contribute nothing - and give no nan gradient.
    z = torch.tensor([[[0.0, -math.inf, 0.0, -math.inf]]], dtype=torch.float64, requires_grad=True)
    h = entropy_from_logits(z)
    assert_close(h, [[math.log(2)]])
    h.sum().backward()
    assert torch.isfinite(z.grad).all()
    # A point mass has zero entropy.
    point = torch.tensor([[[5.0, -math.inf, -math.inf]]], dtype=torch.float64)
    assert_close(entropy_from_logits(point), [[0.0]])


def test_entropy_gradient_closed_form(gen, assert_close):
    # dH/dz_v = -p_v (log p_v + H)
    logits = _logits(gen).requires_grad_(True)
    h = entropy_from_logits(logits)
    h.sum().backward()
    logp = torch.log_softmax(logits.detach(), -1)
    expected = -logp.exp() * (logp + h.detach().unsqueeze(-1))
    assert_close(logits.grad, expected)


def test_sequence_logprobs_matches_loop(gen, right_padded_mask, with_garbage, assert_close):
    token_lp = -torch.rand(B, T, generator=gen, dtype=torch.float64) * 4
    mask = right_padded_mask(B, T, gen)
    expected = [math.fsum(x for x, k in zip(row, row_m) if k) for row, row_m in zip(token_lp.tolist(), mask.tolist())]
    assert_close(sequence_logprobs(token_lp, mask), expected)
    assert_close(sequence_logprobs(with_garbage(token_lp, mask), mask), expected)


def test_sequence_logprobs_mutation_and_validation(gen, right_padded_mask, assert_far):
    token_lp = -torch.rand(B, T, generator=gen, dtype=torch.float64) * 4
    mask = right_padded_mask(B, T, gen)
    assert_far(sequence_logprobs(token_lp, mask), token_lp.sum(-1))  # mask ignored
    with pytest.raises(ValueError, match="same shape"):
        sequence_logprobs(token_lp, mask[:, :-1])
    with pytest.raises(ValueError, match=r"\(B, T\)"):
        sequence_logprobs(token_lp[0], mask[0])


def test_entropy_does_not_cancel_in_float32():
    # Logits [100, 90]: H = log(1 + e^-10) + 10 e^-10 / (1 + e^-10) ≈ 5.0e-4. logsumexp(z) − Σ p z
    # subtracts two numbers near 100 in float32 and misses by ~0.7 %; −Σ p log p does not.
    z64 = torch.tensor([[[100.0, 90.0]]], dtype=torch.float64)
    expected = ref_entropy(z64)[0][0]
    got = entropy_from_logits(z64.float()).item()
    assert abs(got - expected) / expected < 1e-4
    z32 = z64.float()
    old = (torch.logsumexp(z32, -1) - (torch.softmax(z32, -1) * z32).sum(-1)).item()
    assert abs(old - expected) / expected > 1e-3  # the old formula would fail this test
