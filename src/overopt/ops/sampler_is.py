"""Importance weights for the mismatch between the sampler and the trainer (vLLM, or any sampler whose
log-probs differ from the trainer's recomputed ones).

When rollouts come from another engine (vLLM, a 16-bit sampler), the tokens are drawn from μ, the sampler's
distribution, while the surrogate's "old" log-probs are the trainer's π_old recomputed on those tokens. The
policy gradient is then off-policy by the ratio π_old/μ, and ignoring it destabilises RL (truncated importance
sampling, TIS: Yao et al. 2025, "Your Efficient RL Framework Secretly Brings You Off-Policy RL Training";
masked importance sampling, MIS: Liu et al. 2025, "When Speed Kills Stability: Demystifying RL Collapse from
the Training-Inference Mismatch"). The modes and defaults are those of TRL's GRPOTrainer
(`vllm_importance_sampling_mode`, default "sequence_mask", C_max 3):

* ``token_truncate``:    w_t = clip(r_t, C_min, C_max), r_t = exp(log π_old(y_t) − log μ(y_t));
* ``token_mask``:        w_t = r_t where C_min ≤ r_t ≤ C_max, else 0;
* ``sequence_truncate``: w_t = clip(R, C_min, C_max) for every token, R = exp(Σ_t (log π_old − log μ));
* ``sequence_mask``:     w_t = R where C_min ≤ R ≤ C_max, else 0 (the whole sequence drops out).

A bound that is None is no bound. A token whose sampler log-prob is NaN (an engine could not score it) counts as
a difference of 0. The weights multiply the per-token surrogate (ops.clipped_surrogate's ``weights``).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from overopt.ops.masked import _check_same_shape, masked_sum

__all__ = ["SAMPLER_IS_MODES", "SamplerWeights", "sampler_importance_weights"]

SAMPLER_IS_MODES: tuple[str, ...] = ("token_truncate", "token_mask", "sequence_truncate", "sequence_mask")


class SamplerWeights(NamedTuple):
    """Output of :func:`sampler_importance_weights`: ``weights`` (B, T), 0 on padding; diagnostics (scalars)
    over the valid tokens: mean and max of |log π_old − log μ|, the mean weight, and the share of tokens whose
    weight the mask set to 0."""

    weights: torch.Tensor
    logp_diff_mean: torch.Tensor
    logp_diff_max: torch.Tensor
    weight_mean: torch.Tensor
    masked_frac: torch.Tensor


def sampler_importance_weights(
    trainer_logprobs: torch.Tensor,
    sampler_logprobs: torch.Tensor,
    mask: torch.Tensor,
    mode: str = "sequence_mask",
    clip_min: float | None = None,
    clip_max: float | None = 3.0,
) -> SamplerWeights:
    """Per-token importance weights π_old/μ of the sampled tokens, truncated or masked (module docstring).

    Shapes: ``trainer_logprobs`` (log π_old), ``sampler_logprobs`` (log μ) and ``mask`` (B, T). Detached."""
    _check_same_shape("trainer_logprobs", trainer_logprobs, "sampler_logprobs", sampler_logprobs)
    _check_same_shape("trainer_logprobs", trainer_logprobs, "mask", mask)
    if mode not in SAMPLER_IS_MODES:
        raise ValueError(f"unknown sampler importance-sampling mode {mode!r}; valid choices: {list(SAMPLER_IS_MODES)}")
    if clip_min is not None and clip_max is not None and not clip_min <= clip_max:
        raise ValueError(f"sampler importance sampling needs clip_min <= clip_max, got {clip_min} > {clip_max}")
    with torch.no_grad():
        valid = mask.bool()
        diff = torch.nan_to_num(trainer_logprobs.detach() - sampler_logprobs.detach(), nan=0.0)
        diff = torch.where(valid, diff, torch.zeros_like(diff))
        if mode.startswith("sequence"):
            ratio = torch.exp(diff.sum(1, keepdim=True)).expand_as(diff)
        else:
            ratio = torch.exp(diff)
        low = -math.inf if clip_min is None else clip_min
        high = math.inf if clip_max is None else clip_max
        if mode.endswith("truncate"):
            weights = ratio.clamp(min=low, max=high)
            dropped = torch.zeros_like(valid)
        else:
            dropped = (ratio < low) | (ratio > high)
            weights = ratio.masked_fill(dropped, 0.0)
        weights = torch.where(valid, weights, torch.zeros_like(weights))
        n = valid.sum().clamp_min(1)
        absolute = diff.abs()
        return SamplerWeights(
            weights=weights,
            logp_diff_mean=masked_sum(absolute, mask) / n,
            logp_diff_max=absolute.max() if absolute.numel() else absolute.new_zeros(()),
            weight_mean=masked_sum(weights, mask) / n,
            masked_frac=(dropped & valid).sum() / n,
        )
