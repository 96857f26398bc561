"""Attention masks with no fully masked row: left padding that trains in bfloat16 on CUDA.

A left-padded prompt's pad positions are queries that attend to no key (causal: nothing before them is real),
and transformers hands `scaled_dot_product_attention` such rows as they are. On an H200 (torch 2.11, CUDA 13,
transformers 5.17; benchmarks/RESULTS.md, "GPU check") that broke bfloat16 training: under autocast the backward
through a left-padded prompt whose keys and values feed the completion (the prefix cache of
`models.policy.completion_logits(share_prefix=True)`) gave NaN gradients at the first update, and TRL's
GRPOTrainer, after such an update, NaN probabilities in sampling. float32, eager attention and SDPA's math kernel
did not; neither does this module's mask, where each such row attends to every key instead (what transformers'
`AttentionMaskConverter._unmask_unattended` once did for the memory-efficient kernel). A pad position's output
becomes a finite average that nothing reads: every real query masks every pad key, and every loss masks every
pad position. Real positions' outputs are unchanged (tests/test_attention.py).
"""

from __future__ import annotations

import contextlib

import torch
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask


def unmask_unattended(mask: torch.Tensor) -> torch.Tensor:
    """A boolean (B, H, Q, K) mask (True: attend) whose rows that attend to nothing attend to everything."""
    return mask | ~mask.any(-1, keepdim=True)


def pad_safe_sdpa_mask(*args, **kwargs):
    """transformers' `sdpa_mask` with `unmask_unattended` applied (None, a skipped mask, stays None)."""
    mask = sdpa_mask(*args, **kwargs)
    if isinstance(mask, torch.Tensor) and mask.dtype == torch.bool:
        return unmask_unattended(mask)
    return mask


def use_pad_safe_sdpa(on: bool = True) -> None:
    """Make every transformers model of this process build its sdpa masks with `pad_safe_sdpa_mask` (or, with
    on=False, transformers' own again)."""
    AttentionMaskInterface.register("sdpa", pad_safe_sdpa_mask if on else sdpa_mask)


@contextlib.contextmanager
def pad_safe_sdpa(on: bool = True):
    """`use_pad_safe_sdpa(on)` for the duration of a block, then the previous mask function again."""
    before = AttentionMaskInterface._global_mapping["sdpa"]
    use_pad_safe_sdpa(on)
    try:
        yield
    finally:
        AttentionMaskInterface.register("sdpa", before)
