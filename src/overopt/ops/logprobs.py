"""Token log-probabilities and entropies from language-model logits.

Vocabularies are large (V ~ 1e5), so these ops avoid materialising a second
``(B, T, V)`` tensor of log-probabilities where a ``(B, T)`` result suffices.
"""

from __future__ import annotations

import torch

from overopt.ops.masked import _check_ndim, _check_same_shape, masked_sum

__all__ = ["selective_log_softmax", "entropy_from_logits", "sequence_logprobs"]

# 16-bit floats have too few mantissa bits for an accurate logsumexp over a
# large vocabulary (bf16 has 8), so these are upcast to float32 - one batch row
# at a time, which bounds the extra memory at (T, V) float32 instead of (B, T, V).
_LOW_PRECISION = (torch.float16, torch.bfloat16)


def _check_logits(logits: torch.Tensor) -> None:
    _check_ndim("logits", logits, 3, "(B, T, V)")
    if not logits.is_floating_point():
        raise ValueError(f"logits must be a floating-point tensor, got dtype {logits.dtype}")


def selective_log_softmax(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """Log-probability of the given token at every position.

    Formula: ``log p(y_t) = z_{t, y_t} - logsumexp_v z_{t, v}``.

    Shapes: ``logits`` (B, T, V) floating; ``tokens`` (B, T) integer in
    ``[0, V)``. Returns (B, T).

    Computed as gather-minus-logsumexp, so no ``(B, T, V)`` log-softmax tensor
    is built. For float16/bfloat16 logits the computation runs in float32 row by
    row and the result is float32 (log-prob differences feed ``exp`` in
    importance ratios, where 16-bit rounding is too coarse); otherwise the result
    has the logits' dtype.
    """
    _check_logits(logits)
    _check_ndim("tokens", tokens, 2, "(B, T)")
    if tokens.shape != logits.shape[:2]:
        raise ValueError(
            f"tokens must have shape logits.shape[:2] = {tuple(logits.shape[:2])}, got {tuple(tokens.shape)}"
        )
    if tokens.is_floating_point() or tokens.dtype == torch.bool:
        raise ValueError(f"tokens must be an integer tensor, got dtype {tokens.dtype}")
    index = tokens.long().unsqueeze(-1)
    if logits.dtype in _LOW_PRECISION:
        rows = []
        for row_logits, row_index in zip(logits, index):
            row = row_logits.float()
            rows.append(row.gather(-1, row_index).squeeze(-1) - torch.logsumexp(row, dim=-1))
        return torch.stack(rows)
    return logits.gather(-1, index).squeeze(-1) - torch.logsumexp(logits, dim=-1)


def _entropy(z: torch.Tensor) -> torch.Tensor:
    log_p = torch.log_softmax(z, dim=-1)
    p = log_p.exp()
    # Tokens with z = -inf (banned by a logits processor) have p = 0 and add
    # nothing, but 0 * -inf is nan - in the forward pass and in the gradient -
    # so their log-probability is replaced by 0 before the product.
    log_p_finite = torch.where(p > 0, log_p, torch.zeros((), dtype=z.dtype, device=z.device))
    return -(p * log_p_finite).sum(dim=-1)


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Entropy of the categorical distribution ``softmax(z)`` at every position.

    Formula: ``H = -Σ_v p_v log p_v`` with ``log p = log_softmax(z)``. (The
    algebraically equal ``logsumexp(z) - Σ_v p_v z_v`` subtracts two numbers of
    the logits' size and cancels in float32: logits [100, 90] give an entropy
    0.7 % off.)

    Shapes: ``logits`` (B, T, V) floating. Returns (B, T).
    16-bit logits are processed in float32 row by row and give a float32
    result (see :func:`selective_log_softmax`).
    """
    _check_logits(logits)
    if logits.dtype in _LOW_PRECISION:
        return torch.stack([_entropy(row.float()) for row in logits])
    return _entropy(logits)


def sequence_logprobs(token_logprobs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Log-probability of each whole sequence: the masked sum over tokens.

    Formula: ``log p(y) = Σ_t m_t log p(y_t | y_<t)``.

    Shapes: ``token_logprobs`` (B, T); ``mask`` (B, T) 0/1 or bool. Returns (B,).
    """
    _check_ndim("token_logprobs", token_logprobs, 2, "(B, T)")
    _check_same_shape("token_logprobs", token_logprobs, "mask", mask)
    return masked_sum(token_logprobs, mask, dim=-1)
