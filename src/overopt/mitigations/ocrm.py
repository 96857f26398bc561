"""OCRM — off-policy corrected reward modeling (Ackermann, Ishida, Sugiyama, arXiv 2507.15507), the RM side.

Between RL phases, the SAME gold-labelled pairs (no new labels, no new samples) are re-weighted by
how likely the current policy π_k makes them relative to the SFT policy that sampled them, and a
reward model is retrained from scratch (SFT backbone, fresh head) with the weighted BT loss:

    log ρ_α(y|x) = log π_k(y|x) − logsumexp(log α + log π_k(y|x), log(1−α) + log π_SFT(y|x))
    w_pair = exp(β_w · [log ρ_α(y_c|x) + log ρ_α(y_r|x)])

Sequence log-likelihoods at temperature 1, summed up to and including the first EOS (optionally
over the first k tokens only), all in log space.
"""

from __future__ import annotations

import torch
from datasets import Dataset
from transformers import PreTrainedModel

from overopt.models.policy import completion_logprobs
from overopt.ops import ocrm_log_weights, sequence_logprobs
from overopt.sampling import rollout_from_tokens


@torch.no_grad()
def completion_loglik(
    policy: PreTrainedModel,
    prompts: list[list[int]],
    completions: list[list[int]],
    pad_id: int,
    batch_size: int = 256,
    truncate_tokens: int | None = None,
) -> torch.Tensor:
    """log π(y|x) at temperature 1 for stored pairs: (N,) float64."""
    out = []
    for start in range(0, len(prompts), batch_size):
        r = rollout_from_tokens(prompts[start : start + batch_size], completions[start : start + batch_size], pad_id)
        logprobs, _ = completion_logprobs(policy, r.input_ids, r.attention_mask, r.prompt_len)
        cmask = r.completion_mask
        if truncate_tokens is not None:
            cmask = cmask * (torch.arange(cmask.shape[1]) < truncate_tokens)
        out.append(sequence_logprobs(logprobs.double().cpu(), cmask))
    return torch.cat(out)


def pair_logliks(
    model: PreTrainedModel, pairs: Dataset, pad_id: int, truncate_tokens: int | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """log π(y_c|x) and log π(y_r|x) of the stored pairs (N,) each, float64 (completion_loglik)."""
    return tuple(
        completion_loglik(model, pairs["prompt_ids"], pairs[f"{side}_ids"], pad_id, truncate_tokens=truncate_tokens)
        for side in ("chosen", "rejected")
    )


def ocrm_pair_log_ratios(
    policy: PreTrainedModel,
    sft_policy: PreTrainedModel,
    pairs: Dataset,
    *,
    alpha: float,
    pad_id: int,
    truncate_tokens: int | None,
    sft_logliks: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> torch.Tensor:
    """(N,) S = log ρ_α(y_c|x) + log ρ_α(y_r|x) of the stored pairs under π_k vs π_SFT; log w = β_w·S.
    `sft_logliks`: π_SFT's `pair_logliks` of the same pairs, when the caller keeps them (they never change)."""
    chosen, rejected = pair_logliks(policy, pairs, pad_id, truncate_tokens)
    sft_chosen, sft_rejected = sft_logliks or pair_logliks(sft_policy, pairs, pad_id, truncate_tokens)
    return ocrm_log_weights(chosen, sft_chosen, rejected, sft_rejected, alpha=alpha, beta_w=1.0)
