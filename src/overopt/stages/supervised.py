"""The minibatch loop shared by the supervised stages (SFT, reward models)."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from transformers import PreTrainedModel, get_cosine_schedule_with_warmup

from overopt import distributed
from overopt.checkpoint import Checkpointer, load_optimizer_state, optimizer_state, rng_state, set_rng_state
from overopt.errors import NumericalFault
from overopt.progress import StageProgress


def fit_minibatches(
    model: PreTrainedModel,
    n_items: int,
    batch_loss: Callable[[torch.nn.Module, list[int]], tuple[torch.Tensor, torch.Tensor]],
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    seed: int,
    progress: StageProgress,
    max_grad_norm: float = 1.0,
    checkpoints: Checkpointer | None = None,
    module: torch.nn.Module | None = None,
    on_step: Callable[[int], None] | None = None,
    caller_state: Callable[[], dict] | None = None,
) -> float:
    """AdamW (cosine decay, 5% warm-up) over `epochs` shuffled passes of `n_items` items.

    `batch_loss(module, indices)` runs `module` (default `model`; e.g. a reward head around it) on the
    items at `indices` and returns (summed loss, what it is a mean over: items, tokens or weights).
    The minibatch loss is Σ summed loss / Σ count over the whole minibatch, which several processes
    (overopt.distributed) split between them. Returns the last minibatch's loss.
    With `checkpoints`, the loop resumes from the newest checkpoint and writes one when it is due.
    A non-finite loss or gradient stops the loop before the optimiser applies it (NumericalFault).
    `on_step(done)` runs after each update (a direct-alignment run evaluates there); `caller_state()` is kept
    in each checkpoint as state["caller"] (what the caller needs to resume: its logs' lengths, running sums).
    """
    batches_per_epoch = math.ceil(n_items / batch_size)
    total = epochs * batches_per_epoch
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    scheduler = get_cosine_schedule_with_warmup(optimizer, max(1, total // 20), total)
    generator = torch.Generator().manual_seed(seed)
    model.train()
    trained = distributed.prepare(module if module is not None else model)
    progress.start(total)
    done, loss_value, order = 0, float("nan"), None
    resume = checkpoints.load() if checkpoints is not None else None
    if resume is not None:
        state = resume.state
        resume.load_model("model", model)
        load_optimizer_state(optimizer, state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        generator.set_state(state["generator"])
        set_rng_state(state["rng"])
        done, loss_value, order = resume.step, state["loss"], state["order"].tolist()
        progress.advance(done)
    while done < total:
        if done % batches_per_epoch == 0:  # a new epoch: a new shuffle
            order = torch.randperm(n_items, generator=generator).tolist()
        start = (done % batches_per_epoch) * batch_size
        rows = order[start : start + batch_size]
        mine = rows[distributed.share(len(rows))]
        # A process with no share of a short last minibatch still runs a forward (of weight 0), as DDP needs.
        loss_sum, count = batch_loss(trained, mine or rows[:1])
        if not mine:
            loss_sum, count = 0 * loss_sum, 0 * count
        denominator = distributed.all_sum(count.detach())
        optimizer.zero_grad(set_to_none=True)
        (loss_sum / denominator * distributed.world()).backward()  # the processes' gradients are averaged
        loss = distributed.all_sum(loss_sum.detach()) / denominator
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
        if not (torch.isfinite(loss) and torch.isfinite(grad_norm)):
            source = "loss" if not torch.isfinite(loss) else f"gradients ({_first_nonfinite_grad(model)})"
            raise NumericalFault(
                f"{progress.description} step {done + 1}: non-finite {source}; the update was not applied"
            )
        optimizer.step()
        scheduler.step()
        done += 1
        loss_value = loss.item()
        progress.advance(loss=loss_value)
        if on_step is not None:
            on_step(done)
        if checkpoints is not None and checkpoints.due() and done < total:
            checkpoints.save(done, {
                "optimizer": optimizer_state(optimizer), "scheduler": scheduler.state_dict(),
                "generator": generator.get_state(), "rng": rng_state(), "loss": loss_value,
                "order": torch.tensor(order), "caller": caller_state() if caller_state is not None else {},
            }, {"model": model})  # fmt: skip
    model.eval()
    return loss_value


def _first_nonfinite_grad(model: torch.nn.Module) -> str:
    return next(
        (name for name, p in model.named_parameters() if p.grad is not None and not torch.isfinite(p.grad).all()),
        "none found",
    )
