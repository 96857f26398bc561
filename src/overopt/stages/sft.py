"""Stage 1: supervised fine-tuning of the policy on the testbed's demonstrations (docs/index.md, "The pipeline")."""

from __future__ import annotations

import torch
from transformers import PreTrainedModel

from overopt.checkpoint import Checkpointer
from overopt.models.policy import completion_logits
from overopt.progress import StageProgress
from overopt.sampling import rollout_from_tokens
from overopt.stages.supervised import fit_minibatches
from overopt.testbeds.base import SFTExample


def _batch_nll(model: torch.nn.Module, batch: list[SFTExample], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Next-token NLL summed over completion tokens only (the prompt is conditioning, not target), and
    the number of those tokens."""
    r = rollout_from_tokens([ex.prompt_ids for ex in batch], [ex.completion_ids for ex in batch], pad_id)
    logits = completion_logits(model, r.input_ids, r.attention_mask, r.prompt_len)
    targets = r.completion_ids.to(logits.device)
    nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2).float(), targets, reduction="none")
    mask = r.completion_mask.to(nll.device)
    return (nll * mask).sum(), mask.sum()


def train_sft(
    model: PreTrainedModel,
    corpus: list[SFTExample],
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    eval_fraction: float,
    pad_id: int,
    seed: int,
    progress: StageProgress,
    checkpoints: Checkpointer | None = None,
) -> dict[str, float]:
    """Train `model` in place; returns train/eval NLL per completion token."""
    # 1. Split off held-out demonstrations.
    n_eval = max(1, int(len(corpus) * eval_fraction))
    eval_set, train_set = corpus[:n_eval], corpus[n_eval:]
    # 2. Minibatch AdamW over shuffled demonstrations.
    train_loss = fit_minibatches(
        model,
        len(train_set),
        lambda module, rows: _batch_nll(module, [train_set[i] for i in rows], pad_id),
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        seed=seed,
        progress=progress,
        checkpoints=checkpoints,
    )
    # 3. Held-out NLL per completion token.
    with torch.no_grad():
        sums = [_batch_nll(model, eval_set[i : i + batch_size], pad_id) for i in range(0, n_eval, batch_size)]
        eval_loss = (sum(total for total, _ in sums) / sum(count for _, count in sums)).item()
    return {"train_nll": train_loss, "eval_nll": eval_loss, "n_train": len(train_set), "n_eval": n_eval}
