"""Stages 2-3: sample pairs from the SFT policy and label them with the gold reward (docs/index.md, "The pipeline")."""

from __future__ import annotations

import torch
from datasets import Dataset
from transformers import PreTrainedModel

from overopt.progress import StageProgress
from overopt.sampling import pad_left, pad_right, sample_completions
from overopt.testbeds.base import Testbed

PAIR_COLUMNS = ("prompt_ids", "chosen_ids", "rejected_ids", "gold_chosen", "gold_rejected")


def label_pairs(
    gold_a: torch.Tensor,
    gold_b: torch.Tensor,
    *,
    labeling: str,
    bt_temperature: float,
    label_noise: float,
    generator: torch.Generator,
) -> torch.Tensor:
    """(N,) gold rewards of two completions -> (N,) bool, True where `a` is the chosen one.

    argmax: a wins iff r*(a) > r*(b) (deterministic, as in OCRM's code).
    bradley_terry: a wins with probability σ((r*(a) - r*(b)) / T) (Gao et al., arXiv 2210.10760).
    Then each label flips with probability `label_noise`.
    """
    if labeling == "argmax":
        a_wins = gold_a > gold_b
    elif labeling == "bradley_terry":
        p = torch.sigmoid((gold_a - gold_b).double() / bt_temperature)
        a_wins = torch.rand(p.shape, generator=generator, dtype=torch.float64) < p
    else:
        raise ValueError(f"pairs.labeling must be 'argmax' or 'bradley_terry', got {labeling!r}")
    flip = torch.rand(a_wins.shape, generator=generator) < label_noise
    return a_wins ^ flip


def sample_and_label_pairs(
    policy: PreTrainedModel,
    testbed: Testbed,
    prompts: list[list[int]],
    *,
    labeling: str,
    bt_temperature: float,
    label_noise: float,
    drop_ties: bool,
    seed: int,
    batch_size: int,
    progress: StageProgress,
) -> tuple[Dataset, dict[str, float]]:
    """Two T=1 samples per prompt, gold-labelled. Returns the pairs and a few statistics."""
    tok = testbed.tokenizer
    generator = torch.Generator().manual_seed(seed)
    rows: dict[str, list] = {k: [] for k in PAIR_COLUMNS}
    n_ties = 0
    progress.start(len(prompts))
    for start in range(0, len(prompts), batch_size):
        batch = prompts[start : start + batch_size]
        # 1. Two completions per prompt (rows 2i and 2i+1) from the SFT policy at T = 1.
        prompt_ids, prompt_mask = pad_left([p for p in batch for _ in range(2)], tok.pad_token_id)
        rollout = sample_completions(
            policy, prompt_ids, prompt_mask, testbed.max_completion_tokens, 1.0, tok.eos_token_id, tok.pad_token_id
        )
        gold = testbed.gold_reward(rollout.prompt_ids, rollout.completion_ids, rollout.completion_mask)
        gold_a, gold_b = gold[0::2], gold[1::2]
        # 2. Gold labels.
        a_wins = label_pairs(
            gold_a,
            gold_b,
            labeling=labeling,
            bt_temperature=bt_temperature,
            label_noise=label_noise,
            generator=generator,
        )
        for i, prompt in enumerate(batch):
            if gold_a[i] == gold_b[i]:
                n_ties += 1
                if drop_ties:
                    continue
            a, b = 2 * i, 2 * i + 1
            ids = [rollout.completion_ids[r][rollout.completion_mask[r].bool()].tolist() for r in (a, b)]
            c, r = (0, 1) if a_wins[i] else (1, 0)
            rows["prompt_ids"].append(prompt)
            rows["chosen_ids"].append(ids[c])
            rows["rejected_ids"].append(ids[r])
            rows["gold_chosen"].append(float((gold_a, gold_b)[c][i]))
            rows["gold_rejected"].append(float((gold_a, gold_b)[r][i]))
        progress.advance(len(batch))
    pairs = Dataset.from_dict(rows)
    if len(pairs) == 0:
        raise ValueError("every sampled pair was a gold tie: no preference data (try pairs.drop_ties=false)")
    return pairs, _pair_stats(rows, n_ties)


def _pair_stats(rows: dict[str, list], n_ties: int) -> dict[str, float]:
    margin = torch.tensor(rows["gold_chosen"]) - torch.tensor(rows["gold_rejected"])
    return {
        "n_pairs": len(rows["prompt_ids"]),
        "n_ties": n_ties,
        "gold_margin_mean": margin.mean().item(),
        "label_agrees_with_gold": (margin > 0).double().mean().item(),
    }


def gold_score_given_pairs(
    testbed: Testbed,
    pairs: list[tuple[list[int], list[int], list[int]]],
    *,
    batch_size: int,
    progress: StageProgress,
) -> tuple[Dataset, dict[str, float]]:
    """Pairs the testbed brings (Testbed.preference_pairs: a user's preference data), their labels as given and
    both completions gold-scored, so the lab's RM accuracy against gold, OCRM's weights and every figure read
    them as they read the lab's own pairs. `label_agrees_with_gold`: the share of pairs whose chosen completion
    the gold reward also prefers (ties count as disagreeing)."""
    pad = testbed.tokenizer.pad_token_id
    rows: dict[str, list] = {k: [] for k in PAIR_COLUMNS}
    progress.start(len(pairs))
    for start in range(0, len(pairs), batch_size):
        batch = pairs[start : start + batch_size]
        prompt_ids, _ = pad_left([p for p, _, _ in batch for _ in range(2)], pad)
        completion_ids, completion_mask = pad_right([c for _, *both in batch for c in both], pad)
        gold = testbed.gold_reward(prompt_ids, completion_ids, completion_mask)
        for i, (prompt, chosen, rejected) in enumerate(batch):
            rows["prompt_ids"].append(prompt)
            rows["chosen_ids"].append(chosen)
            rows["rejected_ids"].append(rejected)
            rows["gold_chosen"].append(float(gold[2 * i]))
            rows["gold_rejected"].append(float(gold[2 * i + 1]))
        progress.advance(len(batch))
    n_ties = sum(c == r for c, r in zip(rows["gold_chosen"], rows["gold_rejected"], strict=True))
    return Dataset.from_dict(rows), _pair_stats(rows, n_ties)
