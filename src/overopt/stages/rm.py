"""Stage 4: proxy reward model trained with the Bradley-Terry loss on gold-labelled pairs (§0.4)."""

from __future__ import annotations

import torch
from datasets import Dataset
from transformers import PreTrainedModel

from overopt.checkpoint import Checkpointer
from overopt.models.reward import RewardHead
from overopt.ops import bradley_terry_loss, normalize_weights, pairwise_accuracy
from overopt.progress import StageProgress
from overopt.sampling import rollout_from_tokens
from overopt.stages.supervised import fit_minibatches


def pair_rewards(
    head: torch.nn.Module, batch: dict, pad_id: int, share_prefix: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rewards of the chosen and rejected completions of a batch of pairs, one forward pass of a RewardHead
    (`share_prefix`: each pair's prompt runs once for both, models.reward.reward_forward)."""
    n = len(batch["prompt_ids"])
    r = rollout_from_tokens(batch["prompt_ids"] * 2, batch["chosen_ids"] + batch["rejected_ids"], pad_id)
    return head(r.input_ids, r.attention_mask, r.prompt_len if share_prefix else None).split([n, n])


@torch.no_grad()
def pair_margins(
    model: PreTrainedModel, pairs: Dataset, pad_id: int, batch_size: int, share_prefix: bool = False
) -> torch.Tensor:
    """(N,) r(x, y_c) − r(x, y_r) of every pair, float64 on the CPU."""
    model.eval()
    margins = []
    for start in range(0, len(pairs), batch_size):
        chosen, rejected = pair_rewards(RewardHead(model), pairs[start : start + batch_size], pad_id, share_prefix)
        margins.append((chosen - rejected).double().cpu())
    return torch.cat(margins)


def gold_order_accuracy(
    model: PreTrainedModel, pairs: Dataset, pad_id: int, batch_size: int, share_prefix: bool = False
) -> float:
    """Share of pairs where the RM orders the completions as the gold reward does (ties count 1/2)."""
    return margin_gold_accuracy(pair_margins(model, pairs, pad_id, batch_size, share_prefix), pairs)


def margin_gold_accuracy(margins: torch.Tensor, pairs: Dataset) -> float:
    """Share of pairs whose margins (N,) (chosen minus rejected, float64) order them as gold does (ties 1/2)."""
    gold = torch.tensor(pairs["gold_chosen"], dtype=torch.float64) - torch.tensor(pairs["gold_rejected"])
    sign = torch.sign(gold)  # orient every pair so that the gold-preferred completion comes first
    return pairwise_accuracy(margins * sign, torch.zeros_like(margins)).item()


def train_reward_model(
    model: PreTrainedModel,
    train_pairs: Dataset,
    heldout_pairs: Dataset,
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    pad_id: int,
    seed: int,
    progress: StageProgress,
    log_weights: torch.Tensor | None = None,
    normalization: str = "none",
    checkpoints: Checkpointer | None = None,
    share_prefix: bool = False,
    train_accuracy: bool = True,
) -> dict[str, float]:
    """Bradley-Terry training, (1/B) Σ w_i·(−log σ(r(x, y_c) − r(x, y_r))); returns loss and gold-order accuracies
    (the training pairs' one only with `train_accuracy`: a pass over all of them, which OCRM's refits never read).

    `log_weights` (N,) are per-pair log importance weights (OCRM, arXiv 2507.15507); None = plain BT.
    normalization: "none" uses exp(l) as is; "dataset" divides by the dataset mean; "batch" makes
    each minibatch's weights sum to B, so the loss is the weighted mean of that batch.
    `share_prefix`: a pair's prompt runs once for both of its completions (models.reward.reward_forward).
    """
    if log_weights is not None and normalization == "dataset":
        log_weights, normalization = normalize_weights(log_weights, "dataset").log(), "none"

    def batch_loss(head: torch.nn.Module, rows: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        chosen, rejected = pair_rewards(head, train_pairs[rows], pad_id, share_prefix)
        n = torch.tensor(float(len(rows)), device=chosen.device)
        if log_weights is None:
            return bradley_terry_loss(chosen, rejected) * n, n
        if normalization == "batch":  # Σ w ℓ / Σ w over the minibatch, its shares summed across processes
            weights = (log_weights[rows] - log_weights.max()).exp().to(chosen)
            return bradley_terry_loss(chosen, rejected, weights) * n, weights.sum()
        weights = normalize_weights(log_weights[rows], normalization).to(chosen)
        return bradley_terry_loss(chosen, rejected, weights) * n, n

    loss_value = fit_minibatches(
        model,
        len(train_pairs),
        batch_loss,
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        seed=seed,
        progress=progress,
        checkpoints=checkpoints,
        module=RewardHead(model),
    )
    metrics = {"train_loss": loss_value}
    if train_accuracy:
        metrics["train_accuracy"] = gold_order_accuracy(model, train_pairs, pad_id, 4 * batch_size, share_prefix)
    return {
        **metrics,
        "heldout_accuracy": gold_order_accuracy(model, heldout_pairs, pad_id, 4 * batch_size, share_prefix),
        "n_train_pairs": len(train_pairs),
        "n_heldout_pairs": len(heldout_pairs),
    }
