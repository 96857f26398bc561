"""The minibatch loop shared by the supervised stages (SFT, reward models)."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from transformers import PreTrainedModel, get_cosine_schedule_with_warmup

from overopt.progress import StageProgress


def fit_minibatches(
    model: PreTrainedModel,
    n_items: int,
    batch_loss: Callable[[list[int]], torch.Tensor],
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    seed: int,
    progress: StageProgress,
    max_grad_norm: float = 1.0,
) -> float:
    """AdamW (cosine decay, 5% warm-up) over `epochs` shuffled passes of `n_items` items.

    `batch_loss(indices)` returns the scalar loss of the items at `indices`. Returns the last loss.
    """
    total = epochs * math.ceil(n_items / batch_size)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    scheduler = get_cosine_schedule_with_warmup(optimizer, max(1, total // 20), total)
    generator = torch.Generator().manual_seed(seed)
    model.train()
    progress.start(total)
    loss_value = float("nan")
    for _ in range(epochs):
        order = torch.randperm(n_items, generator=generator).tolist()
        for start in range(0, n_items, batch_size):
            loss = batch_loss(order[start : start + batch_size])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
            optimizer.step()
            scheduler.step()
            loss_value = loss.item()
            progress.advance(loss=loss_value)
    model.eval()
    return loss_value
