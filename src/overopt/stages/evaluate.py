"""Stage 5: held-out evaluation of proxy reward, gold reward and KL to the SFT policy (§0.5)."""

from __future__ import annotations

from typing import NamedTuple

import torch
from transformers import PreTrainedModel

from overopt.mitigations.protocols import RewardSource
from overopt.models.policy import completion_logprobs
from overopt.ops import masked_mean, masked_sum
from overopt.sampling import Rollout, sample_completions
from overopt.testbeds.base import Testbed


class EvalSamples(NamedTuple):
    """Every scored held-out sample of one evaluation, for the mechanism figures (overopt.mechanisms).

    With `pairs`, rows N..2N−1 are a second sample for the same N prompts, drawn after the first
    (so the first N, which the metrics describe, are the same samples as without pairs)."""

    rollouts: list[Rollout]  # in row order
    proxy: torch.Tensor  # (2N,) or (N,) reward-source scores
    gold: torch.Tensor  # (2N,) or (N,)
    members: torch.Tensor | None  # (k, 2N) per-member scores of an ensemble
    hidden: torch.Tensor | None = None  # (2N, H) the proxy's linear-head input (an RM source)
    head_weight: torch.Tensor | None = None  # (H,) its head's weights


@torch.no_grad()
def evaluate_policy(
    policy: PreTrainedModel,
    sft_policy: PreTrainedModel,
    reward_source: RewardSource,
    testbed: Testbed,
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    *,
    temperature: float,
    seed: int,
    batch_size: int,
    n_logged_samples: int,
    pairs: bool = False,
    heldout: RewardSource | None = None,
    compute_once: bool = False,
) -> tuple[dict[str, float], list[dict], EvalSamples]:
    """One sample per held-out prompt; returns the contract's metrics, a few decoded samples and every
    scored sample (with `pairs`, plus a second sample per prompt: mechanism figures compare the two).

    kl_sft = mean over prompts of Σ_t (log π_θ(y_t|·) − log π_SFT(y_t|·)) with y ~ π_θ: an unbiased
    estimate of the per-sequence KL(π_θ ‖ π_SFT) when temperature = 1.
    `heldout` (a validation RM the policy is not optimised against) adds heldout_rm_reward, its mean score
    of the same samples. `compute_once`: the policy's log-probs and entropy are the sampler's own (no second
    pass over the samples; equal to float rounding), and the reward source shares prompts as it was built to.
    Sampling uses its own seeded RNG stream (common random numbers across evaluations, and the
    training RNG is left untouched so evaluation never changes the training trajectory).
    """
    tok = testbed.tokenizer
    parts: dict[str, list[torch.Tensor]] = {}
    rollouts: list[Rollout] = []
    members: list[torch.Tensor] = []
    hidden: list[torch.Tensor] = []
    head_weight = None

    def keep(scored) -> None:  # what the mechanism and alarm figures read besides the rewards
        nonlocal head_weight
        if scored.members is not None:
            members.append(scored.members.double().cpu())
        if scored.hidden is not None and scored.head_weight is not None:
            hidden.append(scored.hidden.double().cpu())
            head_weight = scored.head_weight.double().cpu()

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for start in range(0, prompt_ids.shape[0], batch_size):
            rollout = sample_completions(
                policy,
                prompt_ids[start : start + batch_size],
                prompt_mask[start : start + batch_size],
                testbed.max_completion_tokens,
                temperature,
                tok.eos_token_id,
                tok.pad_token_id,
                with_logprobs=compute_once,
            )
            if compute_once:
                rollout, (logprobs, entropy) = rollout
            ids, mask, plen = rollout.input_ids, rollout.attention_mask, rollout.prompt_len
            if not compute_once:
                logprobs, entropy = completion_logprobs(policy, ids, mask, plen, temperature, with_entropy=True)
            sft_logprobs, _ = completion_logprobs(sft_policy, ids, mask, plen, temperature)
            cmask = rollout.completion_mask
            gold_terms = testbed.gold_components(rollout.prompt_ids, rollout.completion_ids, cmask)
            scored = reward_source(rollout)
            keep(scored)
            values = {
                "proxy_reward": scored.rewards,
                "gold_reward": testbed.gold_from_components(gold_terms),
                "kl_sft": masked_sum(logprobs - sft_logprobs, cmask, dim=1),
                "entropy": masked_mean(entropy, cmask, dim=1),
                "mean_length": cmask.sum(1).double(),
                "eos_rate": (rollout.completion_ids == tok.eos_token_id).any(1).double(),
            }
            if heldout is not None:
                values["heldout_rm_reward"] = heldout(rollout).rewards
            for name, term in gold_terms.items():
                values[f"gold/{name}"] = term
            for name, value in values.items():
                parts.setdefault(name, []).append(value.double().cpu())
            rollouts.append(rollout)
        proxy, gold = list(parts["proxy_reward"]), list(parts["gold_reward"])
        for start in range(0, prompt_ids.shape[0] if pairs else 0, batch_size):
            rollout = sample_completions(
                policy, prompt_ids[start : start + batch_size], prompt_mask[start : start + batch_size],
                testbed.max_completion_tokens, temperature, tok.eos_token_id, tok.pad_token_id,
            )  # fmt: skip
            scored = reward_source(rollout)
            keep(scored)
            proxy.append(scored.rewards.double().cpu())
            gold_terms = testbed.gold_components(rollout.prompt_ids, rollout.completion_ids, rollout.completion_mask)
            gold.append(testbed.gold_from_components(gold_terms).double().cpu())
            rollouts.append(rollout)
    all_members = torch.cat(members, 1) if members else None
    all_hidden = torch.cat(hidden) if len(hidden) == len(rollouts) else None  # every batch had a head
    scored_samples = EvalSamples(rollouts, torch.cat(proxy), torch.cat(gold), all_members, all_hidden, head_weight)
    metrics = {name: torch.cat(chunks).mean().item() for name, chunks in parts.items()}
    first = rollouts[0]
    samples = [
        {
            "prompt": tok.decode(first.prompt_ids[i][first.prompt_mask[i].bool()]),
            "completion": tok.decode(first.completion_ids[i][first.completion_mask[i].bool()]),
            "gold_reward": parts["gold_reward"][0][i].item(),
            "proxy_reward": parts["proxy_reward"][0][i].item(),
        }
        for i in range(min(n_logged_samples, first.prompt_ids.shape[0]))
    ]
    return metrics, samples, scored_samples
