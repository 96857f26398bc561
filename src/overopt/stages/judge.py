"""The `judge` testbed's proxy: a small learned judge of right and wrong answers.

1. sample one T=1 answer per training prompt from the SFT policy and label it with the gold reward
   (right = 1, wrong = 0);
2. train a sequence classifier (SFT backbone + fresh linear head, as the lab's RMs) with binary
   cross-entropy on those labels; its logit, the log-odds of "right", is the proxy reward.

This mirrors LLM-as-judge RLVR (Ackermann et al., arXiv 2602.18037 §5), where the judge is a model
that has seen answers like the policy's but cannot verify every one of them.
"""

from __future__ import annotations

import torch
from datasets import Dataset
from transformers import PreTrainedModel

from overopt.checkpoint import Checkpointer
from overopt.models.reward import RewardHead, reward_forward
from overopt.progress import StageProgress
from overopt.sampling import pad_left, rollout_from_tokens, sample_completions
from overopt.stages.supervised import fit_minibatches
from overopt.testbeds.base import Testbed

ANSWER_COLUMNS = ("prompt_ids", "completion_ids", "label")


def sample_and_label_answers(
    policy: PreTrainedModel, testbed: Testbed, prompts: list[list[int]], *, batch_size: int, progress: StageProgress
) -> tuple[Dataset, dict[str, float]]:
    """One T=1 sample per prompt with its gold label (1 = right)."""
    tok = testbed.tokenizer
    rows: dict[str, list] = {k: [] for k in ANSWER_COLUMNS}
    progress.start(len(prompts))
    for start in range(0, len(prompts), batch_size):
        batch = prompts[start : start + batch_size]
        prompt_ids, prompt_mask = pad_left(batch, tok.pad_token_id)
        rollout = sample_completions(
            policy, prompt_ids, prompt_mask, testbed.max_completion_tokens, 1.0, tok.eos_token_id, tok.pad_token_id
        )
        gold = testbed.gold_reward(rollout.prompt_ids, rollout.completion_ids, rollout.completion_mask)
        for i, prompt in enumerate(batch):
            rows["prompt_ids"].append(prompt)
            rows["completion_ids"].append(rollout.completion_ids[i][rollout.completion_mask[i].bool()].tolist())
            rows["label"].append(float(gold[i] > 0.5))
        progress.advance(len(batch))
    data = Dataset.from_dict(rows)
    positive = sum(rows["label"]) / max(1, len(data))
    if positive in (0.0, 1.0):
        raise ValueError(
            f"every sampled answer was {'right' if positive else 'wrong'}: a judge needs both kinds "
            "(more judge.n_prompts, or a better-trained SFT policy: sft.epochs)"
        )
    return data, {"n_answers": len(data), "right_fraction": positive}


def judge_logits(model: PreTrainedModel, batch: dict, pad_id: int) -> torch.Tensor:
    r = rollout_from_tokens(batch["prompt_ids"], batch["completion_ids"], pad_id)
    return reward_forward(model, r.input_ids, r.attention_mask).rewards


@torch.no_grad()
def judge_accuracy(model: PreTrainedModel, data: Dataset, pad_id: int, batch_size: int) -> float:
    """Share of answers the judge classifies as the gold does (logit > 0 means right)."""
    model.eval()
    hits = 0.0
    for start in range(0, len(data), batch_size):
        batch = data[start : start + batch_size]
        predicted = judge_logits(model, batch, pad_id).cpu() > 0
        hits += (predicted == torch.tensor(batch["label"]).bool()).sum().item()
    return hits / max(1, len(data))


def train_judge(
    model: PreTrainedModel,
    train: Dataset,
    heldout: Dataset,
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    pad_id: int,
    seed: int,
    progress: StageProgress,
    checkpoints: Checkpointer | None = None,
) -> dict[str, float]:
    """Binary cross-entropy on (answer, right/wrong); returns the loss and train/held-out accuracy."""

    def batch_loss(head: torch.nn.Module, rows: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        batch = train[rows]
        r = rollout_from_tokens(batch["prompt_ids"], batch["completion_ids"], pad_id)
        logits = head(r.input_ids, r.attention_mask)
        labels = torch.tensor(batch["label"], dtype=logits.dtype, device=logits.device)
        bce = torch.nn.functional.binary_cross_entropy_with_logits(logits, labels, reduction="sum")
        return bce, torch.tensor(float(len(rows)), device=logits.device)

    loss = fit_minibatches(
        model, len(train), batch_loss, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed, progress=progress,
        checkpoints=checkpoints, module=RewardHead(model),
    )  # fmt: skip
    return {
        "train_loss": loss,
        "train_accuracy": judge_accuracy(model, train, pad_id, 4 * batch_size),
        "heldout_accuracy": judge_accuracy(model, heldout, pad_id, 4 * batch_size),
        "n_train_answers": len(train),
        "n_heldout_answers": len(heldout),
    }
