"""The `process` testbed's proxy: a process reward model (PRM) that scores every step of a solution.

1. sample one T=1 answer per training prompt from the SFT policy and label each of its steps with gold
   (testbed.steps: is the step right in its chain; the final step: is the answer right);
2. train a sequence classifier (SFT backbone + fresh linear head, saved and loaded like the lab's RMs)
   whose head is read at every step end, with binary cross-entropy over the labelled steps; its
   probability of "right", σ(wᵀh_t + b), gives the step reward (mitigations.rewards.ProcessRewardModel).

As in PRM training on math (Lightman et al., arXiv 2305.20050; PURE, arXiv 2504.15275), the PRM sees
solutions like the policy's, labelled step by step, and reads each step from the solution's prefix.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from datasets import Dataset
from transformers import PreTrainedModel

from overopt.checkpoint import Checkpointer
from overopt.models.policy import position_ids_from_mask
from overopt.models.reward import score_head
from overopt.progress import StageProgress
from overopt.sampling import pad_left, pad_right, rollout_from_tokens, sample_completions
from overopt.stages.supervised import fit_minibatches

STEP_COLUMNS = ("prompt_ids", "completion_ids", "step_positions", "step_labels")


class StepOutput(NamedTuple):
    logits: torch.Tensor  # (B, S) the head's logit at each step end
    mask: torch.Tensor  # (B, S) 1 where a step is
    hidden: torch.Tensor  # (B, S, H) the head's input there


def prm_step_logits(
    model: PreTrainedModel,
    prompts: list[list[int]],
    completions: list[list[int]],
    positions: list[list[int]],
    pad_id: int,
) -> StepOutput:
    """The PRM's logit at each step end (positions index the completions); rows padded to the most steps."""
    r = rollout_from_tokens(prompts, completions, pad_id)
    device = model.device
    mask = r.attention_mask.to(device)
    ids, positions_ids = r.input_ids.to(device), position_ids_from_mask(mask)
    hidden = model.base_model(
        input_ids=ids, attention_mask=mask, position_ids=positions_ids, use_cache=False
    ).last_hidden_state  # (B, L, H)
    steps = [list(p) for p in positions]
    index, step_mask = pad_right([p if p else [0] for p in steps], 0)
    step_mask = step_mask * torch.tensor([[bool(p)] for p in steps], dtype=step_mask.dtype)
    index = (index + r.prompt_len).to(device)
    gathered = hidden.gather(1, index.unsqueeze(-1).expand(-1, -1, hidden.shape[-1]))  # (B, S, H)
    return StepOutput(score_head(model)(gathered).squeeze(-1), step_mask.to(device), gathered)


def step_labels(rows: list[list[float]]) -> torch.Tensor:
    """(B, S) gold step labels, padded to the most steps (as prm_step_logits pads its mask)."""
    return pad_right([row if row else [0.0] for row in rows], 0)[0]


class StepHead(torch.nn.Module):
    """`prm_step_logits` as a module's forward, so that distributed training averages its gradients."""

    def __init__(self, model: PreTrainedModel, pad_id: int):
        super().__init__()
        self.model, self.pad_id = model, pad_id

    def forward(self, prompts, completions, positions) -> StepOutput:
        return prm_step_logits(self.model, prompts, completions, positions, self.pad_id)


def sample_and_label_steps(
    policy: PreTrainedModel, testbed, prompts: list[list[int]], *, batch_size: int, progress: StageProgress
) -> tuple[Dataset, dict[str, float]]:
    """One T=1 sample per prompt, with its steps' positions and gold labels."""
    tok = testbed.tokenizer
    rows: dict[str, list] = {k: [] for k in STEP_COLUMNS}
    progress.start(len(prompts))
    for start in range(0, len(prompts), batch_size):
        batch = prompts[start : start + batch_size]
        prompt_ids, prompt_mask = pad_left(batch, tok.pad_token_id)
        rollout = sample_completions(
            policy, prompt_ids, prompt_mask, testbed.max_completion_tokens, 1.0, tok.eos_token_id, tok.pad_token_id
        )
        for i, prompt in enumerate(batch):
            completion = rollout.completion_ids[i][rollout.completion_mask[i].bool()].tolist()
            steps = testbed.steps(prompt, completion)
            rows["prompt_ids"].append(prompt)
            rows["completion_ids"].append(completion)
            rows["step_positions"].append(steps.positions)
            rows["step_labels"].append(steps.labels)
        progress.advance(len(batch))
    return _step_data(rows, "(more prm.n_prompts, or a better-trained SFT policy: sft.epochs)")


def given_steps(examples: list[tuple[list[int], list[int], list[int], list[float]]]) -> tuple[Dataset, dict]:
    """Step-labelled solutions the testbed brings (Testbed.stepwise_examples: a user's stepwise data) as the
    PRM's training data, in the columns of sample_and_label_steps."""
    rows = {k: [list(e[i]) for e in examples] for i, k in enumerate(STEP_COLUMNS)}
    return _step_data(rows, "(the stepwise dataset needs right and wrong steps)")


def _step_data(rows: dict[str, list], fix: str) -> tuple[Dataset, dict[str, float]]:
    labels = [label for row in rows["step_labels"] for label in row]
    right = sum(labels) / max(1, len(labels))
    if right in (0.0, 1.0):
        raise ValueError(f"every step was {'right' if right else 'wrong'}: a PRM needs both kinds {fix}")
    data = Dataset.from_dict(rows)
    return data, {"n_answers": len(data), "n_steps": len(labels), "right_fraction": right}


@torch.no_grad()
def step_accuracy(model: PreTrainedModel, data: Dataset, pad_id: int, batch_size: int) -> float:
    """Share of steps the PRM classifies as gold does (logit > 0 means right)."""
    model.eval()
    hits = total = 0.0
    for start in range(0, len(data), batch_size):
        b = data[start : start + batch_size]
        out = prm_step_logits(model, b["prompt_ids"], b["completion_ids"], b["step_positions"], pad_id)
        labels = step_labels(b["step_labels"])
        valid = out.mask.bool().cpu()
        hits += ((out.logits.cpu() > 0) == labels.bool())[valid].sum().item()
        total += valid.sum().item()
    return hits / max(1.0, total)


def train_prm(
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
    """Binary cross-entropy over every labelled step; returns the loss and train/held-out step accuracy."""

    def batch_loss(head: torch.nn.Module, rows: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        b = train[rows]
        out = head(b["prompt_ids"], b["completion_ids"], b["step_positions"])
        labels = step_labels(b["step_labels"]).to(out.logits)
        bce = torch.nn.functional.binary_cross_entropy_with_logits(out.logits, labels, reduction="none")
        return (bce * out.mask).sum(), out.mask.sum().to(bce.dtype)

    loss = fit_minibatches(
        model, len(train), batch_loss, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed, progress=progress,
        checkpoints=checkpoints, module=StepHead(model, pad_id),
    )  # fmt: skip
    return {
        "train_loss": loss,
        "train_step_accuracy": step_accuracy(model, train, pad_id, 4 * batch_size),
        "heldout_step_accuracy": step_accuracy(model, heldout, pad_id, 4 * batch_size),
        "n_train_answers": len(train),
        "n_heldout_answers": len(heldout),
    }
